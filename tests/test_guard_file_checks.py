"""Malformed guard and model files that llama.cpp accepts and then asserts or crashes on, or that would score
nonsense: each must be refused at load with a clear FileFormatError. Each case runs in a child process (the
fuzzer's worker), so a crash fails its test instead of killing the run."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType

from fuzz_guard import GuardWorker, run_once
from gguf_edit import edit_gguf

F32 = GGUFValueType.FLOAT32
ARRAY = GGUFValueType.ARRAY
LORA_A = "blk.0.attn_q.weight.lora_a"
LORA_B = "blk.0.attn_q.weight.lora_b"


@pytest.fixture(scope="module")
def worker(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardWorker]:
    with GuardWorker(stories_gguf, tmp_path_factory.mktemp("worker")) as w:
        yield w


def _data(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[str, np.ndarray], np.ndarray]:
    return lambda tensor, data: change(data) if tensor == name else data


def _poison(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def poison(data: np.ndarray) -> np.ndarray:
        out = data.copy()
        out.flat[3] = value
        return out

    return poison


def _patch(find: bytes, replace: bytes) -> Callable[[Path, Path], Path]:
    def patch(src: Path, dst: Path) -> Path:
        raw = src.read_bytes()
        assert find in raw
        dst.write_bytes(raw.replace(find, replace, 1))
        return dst

    return patch


def _edit(**kwargs: object) -> Callable[[Path, Path], Path]:
    return lambda src, dst: edit_gguf(src, dst, **kwargs)  # type: ignore[arg-type]


def _keys(*edits: tuple[str, object, GGUFValueType]) -> Callable[[Path, Path], Path]:
    return _edit(keys=list(edits))


REFUSED: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    # llama.cpp checks ne[0] and ne[1] only; its matmul then asserts (SIGABRT) on the first classify
    "3-D lora_a": (_edit(tensor_data=_data(LORA_A, lambda d: np.stack([d, d]))), "has 3 dimensions"),
    "3-D lora_b": (_edit(tensor_data=_data(LORA_B, lambda d: np.stack([d, d]))), "has 3 dimensions"),
    # no matmul kernel for I32: SIGSEGV on the first classify
    "I32 lora_a": (_edit(tensor_types={LORA_A: GGMLQuantizationType.I32}), "has type i32"),
    "F64 lora_b": (_edit(tensor_types={LORA_B: GGMLQuantizationType.F64}), "has type f64"),
    "NaN in lora_a": (_edit(tensor_data=_data(LORA_A, _poison(np.nan))), "NaN or infinite values"),
    "inf in lora_b": (_edit(tensor_data=_data(LORA_B, _poison(np.inf))), "NaN or infinite values"),
    "NaN alpha": (_keys(("adapter.lora.alpha", float("nan"), F32)), "alpha is NaN or infinite"),
    "prompt template without {prompt}": (_keys(("loraguard.template.prompt", "user: hello", GGUFValueType.STRING)),
                                         r"template\.prompt lacks \{prompt\}"),
    "pair template without {prompt}": (_keys(("loraguard.template.pair", "agent: {response}", GGUFValueType.STRING)),
                                       r"template\.pair lacks \{prompt\}"),
    "pair template without {response}": (_keys(("loraguard.template.pair", "user: {prompt}", GGUFValueType.STRING)),
                                         r"template\.pair lacks \{response\}"),
    "NaN threshold": (_keys(("loraguard.thresholds", [0.5, float("nan")], ARRAY)), r"probabilities in \[0, 1\]"),
    "infinite threshold": (_keys(("loraguard.thresholds", [float("-inf"), 0.5], ARRAY)), r"in \[0, 1\]"),
    "threshold above 1": (_keys(("loraguard.thresholds", [0.5, 1.5], ARRAY)), r"in \[0, 1\]"),
    "duplicate labels": (_keys(("loraguard.labels", ["unsafe", "unsafe"], ARRAY)), "label 'unsafe' appears twice"),
    "empty label": (_keys(("loraguard.labels", ["unsafe", ""], ARRAY)), "label 1 is empty"),
    # pybind11 would raise UnicodeDecodeError reading the labels (or the error message naming the tensor)
    "label not UTF-8": (_patch(b"violence", b"viol\xffnce"), "is not UTF-8"),
    "tensor name not UTF-8": (_patch(LORA_A.encode(), LORA_A.encode().replace(b"q", b"\xe2")), "is not UTF-8"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_malformed_guard_is_refused(case: str, worker: GuardWorker, stories_guard: Path, tmp_path: Path) -> None:
    make, message = REFUSED[case]
    outcome = worker.run(make(stories_guard, tmp_path / "bad.gguf"))
    assert outcome["kind"] == "error", outcome
    assert outcome["detail"].startswith("FileFormatError: "), outcome
    assert re.search(message, outcome["detail"]), outcome


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.F16, GGMLQuantizationType.BF16, GGMLQuantizationType.Q8_0])
def test_lora_types_stock_llama_cpp_writes_are_accepted(
    qtype: GGMLQuantizationType, worker: GuardWorker, stories_guard: Path, tmp_path: Path
) -> None:
    """convert_lora_to_gguf.py writes F32, F16, BF16 or Q8_0; the type check must not refuse those."""
    retyped = edit_gguf(stories_guard, tmp_path / "typed.gguf", tensor_types={LORA_A: qtype})
    assert worker.run(retyped) == {"kind": "ok", "detail": "loaded and classified"}


def test_model_without_vocabulary_is_refused(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    """llama.cpp loads a 'no vocab' model, then asserts in the first tokenizer call (guard template, chat)."""
    no_vocab = edit_gguf(stories_gguf, tmp_path / "no-vocab.gguf", keys=[
        ("tokenizer.ggml.model", "none", GGUFValueType.STRING), ("llama.vocab_size", 512, GGUFValueType.UINT32),
    ])
    outcome = run_once(no_vocab, stories_guard, tmp_path)
    assert outcome["kind"] == "error", outcome
    assert re.match(r"FileFormatError: .*has no vocabulary", outcome["detail"]), outcome


def test_model_name_not_utf8_is_refused(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    """Model.name is a Python str: a corrupt name must be a FileFormatError, not a UnicodeDecodeError."""
    renamed = edit_gguf(stories_gguf, tmp_path / "named.gguf",
                        keys=[("general.name", "stories-NAME", GGUFValueType.STRING)])
    corrupt = _patch(b"stories-NAME", b"stories-\xffAME")(renamed, tmp_path / "corrupt.gguf")
    outcome = run_once(corrupt, stories_guard, tmp_path)
    assert re.match(r"FileFormatError: .*general\.name is not UTF-8", outcome["detail"]), outcome


def test_overflowing_lora_scale_is_an_error_not_a_silent_pass(worker: GuardWorker, stories_guard: Path,
                                                              tmp_path: Path) -> None:
    """A finite but huge alpha passes the file checks and drives the scores to -inf, which would never flag:
    classify must fail instead."""
    huge = _keys(("adapter.lora.alpha", 1e30, F32))(stories_guard, tmp_path / "huge-alpha.gguf")
    outcome = worker.run(huge)
    assert outcome["kind"] == "error", outcome
    assert re.match(r"BackendError: .*non-finite score", outcome["detail"]), outcome
