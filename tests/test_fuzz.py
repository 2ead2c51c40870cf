"""The guard-file fuzzer (tests/fuzz_guard.py): a seeded 2,000-case run on a real guard, and its crash and hang
detection on a real child process. The long run (100,000 cases) is a command: docs/robustness.md."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz_guard import GuardWorker, fuzz, make_case, read_layout


def test_2000_mutated_guards_load_or_fail_cleanly(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    report = fuzz(stories_gguf, stories_guard, cases=2000, seed=0, workdir=tmp_path, progress=False)
    print(report.summary())
    assert not report.findings, report.summary()
    # the corpus must reach both sides: files the checks refuse, and files that still load and classify
    assert report.errors["FileFormatError"] > 500 and report.errors["ModelMismatchError"] > 20, report.summary()
    assert report.loaded > 100, report.summary()


def test_300_mutated_guards_through_the_guard_class(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    """The same corpus through the Python Guard class (its model load, labels, scores, warnings) as apps use it."""
    report = fuzz(stories_gguf, stories_guard, cases=300, seed=3, workdir=tmp_path, api="guard", progress=False)
    assert not report.findings, report.summary()
    assert report.loaded > 20 and report.errors["FileFormatError"] > 100, report.summary()


def test_cases_are_reproducible_from_seed_and_number(stories_guard: Path, tmp_path: Path) -> None:
    layout = read_layout(stories_guard)
    files = {}
    for case in range(20):
        first = make_case(layout, 7, case, tmp_path / "a.gguf")
        again = make_case(layout, 7, case, tmp_path / "b.gguf")
        assert first == again
        assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
        files[case] = (tmp_path / "a.gguf").read_bytes()
    # two cases may draw the same mutation, and a rewrite may happen to write the original back: rarely
    assert len(set(files.values())) >= 18, "cases should differ"
    assert sum(data != stories_guard.read_bytes() for data in files.values()) >= 18


@pytest.fixture
def worker(stories_gguf: Path, tmp_path: Path) -> Iterator[GuardWorker]:
    with GuardWorker(stories_gguf, tmp_path, timeout=10) as w:
        yield w


def _child_pid(worker: GuardWorker) -> int:
    assert worker.proc is not None
    return worker.proc.pid


def test_a_crashing_child_is_a_finding_and_the_next_case_runs(worker: GuardWorker, stories_guard: Path) -> None:
    assert worker.run(stories_guard)["kind"] == "ok"
    os.kill(_child_pid(worker), signal.SIGABRT)  # what GGML_ASSERT raises
    crashed = worker.run(stories_guard)
    assert crashed["kind"] == "finding" and crashed["detail"] == "crash: killed by SIGABRT", crashed
    assert worker.run(stories_guard)["kind"] == "ok"


def test_a_silent_child_is_a_hang(worker: GuardWorker, stories_guard: Path) -> None:
    assert worker.run(stories_guard)["kind"] == "ok"
    os.kill(_child_pid(worker), signal.SIGSTOP)
    hung = worker.run(stories_guard)
    assert hung["kind"] == "finding" and hung["detail"] == "hang (no answer in 10 s)", hung
    assert worker.run(stories_guard)["kind"] == "ok"
