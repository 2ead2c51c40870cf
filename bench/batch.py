"""The batch case: rows/s moderating a corpus in one process and with 2 workers (`loraguard-cli classify --input
--workers 2` and Ray Data with 2 actors), and what that per-core rate means for a bigger node or a cluster.

    .venv/bin/python -m bench.batch [--rows 2000] [--out bench/results]

Rows are the tests' corpus (tests/moderation_corpus.py: short real prompts, every fourth with a response) scored
by the default guard. Writes OUT/<date>-<host>-batch.{json,md}. Run it on a quiet machine: the report records
the load average before and after, and rates on a shared machine say little.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
NODE_CORES = 64
CLUSTER_NODES = 10
# Assumed share of the per-core rate each core keeps when every core of a big node runs a worker: memory
# bandwidth and clock are shared, a 2-core VM does not show how much. A guess, stated as one.
BIG_NODE_EFFICIENCY = 0.8


def _rows(n: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO / "tests"))
    from moderation_corpus import moderation_corpus

    return moderation_corpus(n)


class Timing(NamedTuple):
    """Wall seconds, and CPU seconds of the processes doing the work (None where they cannot be counted)."""

    wall: float
    cpu: float | None


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(run: Callable[[], object], count_cpu: bool = True) -> Timing:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    run()
    return Timing(time.perf_counter() - wall, _cpu_seconds() - cpu if count_cpu else None)


def one_process(rows: list[dict[str, Any]], n_threads: int, batch_size: int = 64) -> Timing:
    """Time to score the rows with one loaded Guard (load excluded), batch_size rows per decode."""
    from loraguard_cpp import Guard

    with Guard(n_threads=n_threads) as guard:
        texts, responses = [r["text"] for r in rows], [r["response"] for r in rows]

        def score() -> None:
            for i in range(0, len(rows), batch_size):
                guard.classify_batch(texts[i:i + batch_size], responses[i:i + batch_size])

        return _timed(score)


def cli_workers(parquet: Path, workers: int, out_dir: Path) -> Timing:
    """Time for `loraguard-cli classify --input --workers`, process start to output written (loads included)."""
    out = out_dir / f"scored-{workers}.parquet"
    command = [sys.executable, "-m", "loraguard_cpp.cli", "classify", "--input", str(parquet), "--output", str(out),
               "--workers", str(workers), "--threads", "1", "--shard-size", "128", "--response-column", "response"]
    timing = _timed(lambda: subprocess.run(command, check=False, capture_output=True))
    if not out.is_file():
        raise RuntimeError(f"{' '.join(command)} wrote nothing")
    return timing


def ray_actors(parquet: Path, n_rows: int, actors: int) -> Timing | None:
    """Time for Ray Data with `actors` one-thread actors (cluster start excluded, actor start included; the
    actors' CPU time is not counted: they are not this process's children)."""
    try:
        import ray
    except ImportError:
        return None
    from loraguard_cpp.integrations.ray import moderate

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        blocks = ray.data.read_parquet(str(parquet)).repartition(max(actors, n_rows // 128))
        dataset = moderate(blocks, response_column="response", concurrency=actors, n_threads=1, num_cpus=0.5,
                           batch_size=128)
        return _timed(lambda: ray.get(dataset.to_arrow_refs()), count_cpu=False)
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(args.rows)
    load_before = os.getloadavg()
    timings: dict[str, Timing | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "corpus.parquet"
        pq.write_table(pa.Table.from_pylist(rows), parquet)
        timings["one process, 1 thread"] = one_process(rows, 1)
        timings["one process, 2 threads"] = one_process(rows, 2)
        timings["loraguard-cli --workers 1 (1 thread)"] = cli_workers(parquet, 1, Path(tmp))
        timings["loraguard-cli --workers 2 (1 thread each)"] = cli_workers(parquet, 2, Path(tmp))
        timings["Ray Data, 2 actors (1 thread each)"] = ray_actors(parquet, args.rows, 2)
    load_after = os.getloadavg()

    rates = {name: None if t is None else args.rows / t.wall for name, t in timings.items()}
    per_cpu_second = {name: None if t is None or not t.cpu else args.rows / t.cpu for name, t in timings.items()}
    # The per-core rate: rows per CPU-second of one one-thread process, which other processes on a shared
    # machine slow down far less than they slow its wall-clock rate.
    per_core = per_cpu_second["one process, 1 thread"] or 0.0
    paper = {
        f"one {NODE_CORES}-core node, {NODE_CORES} one-thread workers": per_core * NODE_CORES * BIG_NODE_EFFICIENCY,
        f"{CLUSTER_NODES} such nodes (Ray or Spark)": per_core * NODE_CORES * BIG_NODE_EFFICIENCY * CLUSTER_NODES,
    }
    report = {
        "date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "rows": args.rows, "load_average_before": load_before,
        "load_average_after": load_after,
        "timings": {name: None if t is None else t._asdict() for name, t in timings.items()},
        "rows_per_s": rates, "rows_per_cpu_s": per_cpu_second,
        "on_paper_rows_per_s": paper, "assumptions": {"node_cores": NODE_CORES, "cluster_nodes": CLUSTER_NODES,
                                                       "big_node_efficiency": BIG_NODE_EFFICIENCY},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{report['date']}-{platform.node()}-batch"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Batch moderation, {args.rows} rows, {os.cpu_count()} CPUs ({report['date']})", "",
             f"Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}", "",
             "| how | wall s | rows/s | CPU s | rows per CPU-second |", "| --- | --- | --- | --- | --- |"]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines += [f"| {name} | {cell(t and t.wall)} | {cell(rates[name])} | {cell(t and t.cpu)} | "
              f"{cell(per_cpu_second[name])} |" for name, t in timings.items()]
    lines += ["", f"On paper, from the per-core rate ({per_core:.1f} rows per CPU-second, one thread) times "
              f"{BIG_NODE_EFFICIENCY} per core on a full node:", ""]
    lines += [f"- {name}: {rate:,.0f} rows/s" for name, rate in paper.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
