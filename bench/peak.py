"""Matrix-multiply peak of this machine, measured in the same run as the guard so GFLOP/s can be compared.

Run as `python -m bench.peak N_THREADS` in a fresh process: BLAS thread pools are sized when the library is
loaded, so the thread count is fixed through the environment before numpy and torch are imported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

SIZE = 2048
MIN_SECONDS = 0.5


def _best_gflops(matmul: Callable[[], object], flops: float) -> float:
    matmul()  # warm-up: first calls pay for thread start-up and packing buffers
    best = float("inf")
    spent = 0.0
    while spent < MIN_SECONDS:
        start = time.perf_counter()
        matmul()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
    return flops / best / 1e9


def measure(n_threads: int) -> dict[str, float]:
    import numpy as np
    import torch

    torch.set_num_threads(n_threads)
    flops = 2.0 * SIZE**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    b = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ha, hb = ta.bfloat16(), tb.bfloat16()
    return {
        "numpy_f32": _best_gflops(lambda: a @ b, flops),
        "torch_f32": _best_gflops(lambda: ta @ tb, flops),
        "torch_bf16": _best_gflops(lambda: ha @ hb, flops),
    }


if __name__ == "__main__":
    threads = int(sys.argv[1])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    print(json.dumps(measure(threads)))
