"""GuardScorer on every batch format, and `loraguard-cli classify --input` with worker processes: atomic output,
resumable after a killed worker and after the whole command is killed, no row lost or scored twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loraguard_cpp import InvalidInputError
from loraguard_cpp.batch import FLAGGED_COLUMN, GuardScorer
from moderation_corpus import (
    HARMFUL_RESPONSE,
    PROMPT,
    Reference,
    corpus_reference,
    moderation_corpus,
    score_matrix,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")

N_ROWS = 400
CLI = [sys.executable, "-m", "loraguard_cpp.cli", "classify"]


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    return moderation_corpus(N_ROWS)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return corpus_reference()


def test_scorer_adds_the_same_columns_to_every_batch_format(corpus: list[dict[str, Any]]) -> None:
    rows = corpus[:40]
    texts, responses = [r["text"] for r in rows], [r["response"] for r in rows]
    with GuardScorer(text_column="text", response_column="response", n_threads=2) as scorer:
        expected = scorer.guard.classify_batch(texts, responses)
        expected_flags = np.array([v.flagged for v in scorer.guard.classify_many(texts, responses)])
        numpy_batch = {name: np.array([r[name] for r in rows], dtype=object) for name in ("id", "text", "response")}
        outputs = {
            "numpy": scorer(numpy_batch),
            "pandas": scorer(pd.DataFrame(rows)),
            "arrow": scorer(pa.Table.from_pylist(rows)),
        }
        columns = [*scorer.score_columns, FLAGGED_COLUMN]
        rescored = scorer(outputs["arrow"])
    assert rescored.column_names == outputs["arrow"].column_names, "scoring again replaces the columns"
    for fmt, out in outputs.items():
        names = list(out.column_names if fmt == "arrow" else out.keys() if fmt == "numpy" else out.columns)
        assert names[-len(columns):] == columns, fmt
        assert [int(i) for i in out["id"]] == list(range(40)), fmt
        np.testing.assert_allclose(score_matrix(out, scorer.labels), expected, atol=1e-6, err_msg=fmt)
        np.testing.assert_array_equal(np.asarray(out[FLAGGED_COLUMN], dtype=bool), expected_flags, err_msg=fmt)
    assert expected_flags.any() and not expected_flags.all()


def test_scorer_bad_batches_say_what_to_fix() -> None:
    with GuardScorer(text_column="prompt", n_threads=1) as scorer:
        with pytest.raises(InvalidInputError, match="no column 'prompt'"):
            scorer({"text": np.array(["hello"], dtype=object)})
        with pytest.raises(InvalidInputError, match="row 1 of column 'prompt' is NoneType"):
            scorer(pa.table({"prompt": ["hello", None]}))
        with pytest.raises(InvalidInputError, match="row 1001 of column 'prompt' is float"):
            scorer(pd.DataFrame({"prompt": ["hello", None]}), first_row=1000)  # pandas reads None as NaN
        with pytest.raises(InvalidInputError, match="dict of numpy arrays, a pandas DataFrame or a pyarrow Table"):
            scorer(["hello"])
        empty = scorer(pa.table({"prompt": pa.array([], pa.string())}))
        assert empty.num_rows == 0 and FLAGGED_COLUMN in empty.column_names
        assert scorer({"prompt": np.array(["still alive"], dtype=object)})[FLAGGED_COLUMN].shape == (1,)


def test_scorer_reads_the_response_column_by_default_and_names_a_refused_row() -> None:
    with GuardScorer(n_threads=1) as scorer:
        assert not scorer.guard.classify(PROMPT).flagged and scorer.guard.classify(PROMPT, HARMFUL_RESPONSE).flagged
        scored = scorer(pa.table({"text": [PROMPT, PROMPT], "response": [None, HARMFUL_RESPONSE]}))
        assert scored[FLAGGED_COLUMN].to_pylist() == [False, True], "the response column is read unless named"
        # pandas' NA and numpy's NaN are missing responses, as None is: the prompt is scored alone.
        frame = pd.DataFrame({"text": [PROMPT] * 3, "response": pd.array([pd.NA, HARMFUL_RESPONSE, pd.NA], "string")})
        assert scorer(frame)[FLAGGED_COLUMN].tolist() == [False, True, False]
        batch = {"text": np.array([PROMPT], dtype=object), "response": np.array([np.float32("nan")], dtype=object)}
        assert scorer(batch)[FLAGGED_COLUMN].tolist() == [False]
        with pytest.raises(InvalidInputError, match=r"^row 2: prompt is empty"):
            scorer(pa.table({"text": ["fine", "also fine", "", "fine"]}))
        with pytest.raises(InvalidInputError, match=r"^row 1: response contains a NUL byte"):
            scorer(pa.table({"text": ["fine", "fine"], "response": ["ok", "o\0k"]}))
        with pytest.raises(InvalidInputError, match=r"^row 1001: response contains a NUL byte"):
            scorer({"text": np.array(["fine", "fine"]), "response": np.array(["ok", "o\0k"])}, first_row=1000)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_output(path: Path) -> Any:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa.Table.from_pylist([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])


def test_workers_score_a_jsonl_file_into_parquet(tmp_path: Path, corpus: list[dict[str, Any]],
                                                 reference: Reference) -> None:
    source = _write_jsonl(tmp_path / "corpus.jsonl", corpus)
    out = tmp_path / "scored.parquet"
    run = subprocess.run([*CLI, "--input", str(source), "--output", str(out), "--workers", "2", "--shard-size", "64",
                          "--response-column", "response"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr  # 1: something was flagged
    assert f"wrote {N_ROWS} rows" in run.stderr
    table = _read_output(out)
    reference.check(table, N_ROWS)
    assert table["text"].to_pylist() == [r["text"] for r in corpus] and "source" in table.column_names
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl", "scored.parquet"], "no parts or temporary files left"


def test_workers_score_the_responses_and_keep_every_column_of_ragged_jsonl(tmp_path: Path) -> None:
    # The first row lacks the response and lang keys the second has: no column is taken from the first row alone.
    source = _write_jsonl(tmp_path / "chats.jsonl", [{"id": 0, "text": PROMPT},
                                                      {"id": 1, "text": PROMPT, "response": HARMFUL_RESPONSE,
                                                       "lang": "en"}])
    out = tmp_path / "scored.parquet"
    run = subprocess.run([*CLI, "--input", str(source), "--output", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and "(1 flagged)" in run.stderr, run.stderr
    table = pq.read_table(out)
    assert table.column_names[:4] == ["id", "text", "response", "lang"]
    assert table[FLAGGED_COLUMN].to_pylist() == [False, True]
    assert table["response"].to_pylist() == [None, HARMFUL_RESPONSE]

    run = subprocess.run([*CLI, "--input", str(source), "--output", str(tmp_path / "x.jsonl"), "--response-column",
                          "answer"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no column 'answer' (--response-column" in run.stderr, run.stderr


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _spawned_workers(pid: int) -> list[int]:
    # multiprocessing's spawn children, not its resource tracker
    return [c for c in _children(pid) if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


def _wait_for_parts(parts: Path, at_least: int, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        n = len(list(parts.glob("part-*"))) if parts.is_dir() else 0
        if n >= at_least:
            return n
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()[1]}"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} parts in {parts} after 240 s")


def test_workers_resume_after_a_killed_worker_and_a_killed_run(tmp_path: Path, corpus: list[dict[str, Any]],
                                                              reference: Reference) -> None:
    source = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(corpus), source, row_group_size=100)
    out = tmp_path / "scored.jsonl"
    parts = tmp_path / "scored.jsonl.parts"
    command = [*CLI, "--input", str(source), "--output", str(out), "--workers", "2", "--shard-size", "16",
               "--response-column", "response"]

    # 1. One worker is killed: the command stops with an error that says how to resume.
    first = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    _wait_for_parts(parts, 2, first)
    os.kill(_spawned_workers(first.pid)[0], signal.SIGKILL)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 2 and "rerun the same command to resume" in stderr, stderr
    assert not out.exists()

    # 2. The resumed run is killed as a whole (parent and workers) while parts are being written.
    second = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    _wait_for_parts(parts, len(list(parts.glob("part-*"))) + 3, second)
    os.killpg(second.pid, signal.SIGKILL)
    second.communicate(timeout=60)
    assert not out.exists(), "a killed run leaves no output"
    committed = len(list(parts.glob("part-*")))
    assert 0 < committed < N_ROWS // 16

    # 3. The last run scores only what is missing and writes every row exactly once.
    third = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert third.returncode == 1, third.stderr
    assert f"resuming {parts}: {committed} shards" in third.stderr
    reference.check(_read_output(out), N_ROWS)
    assert not parts.exists()


def test_workers_refuse_bad_input_and_write_nothing(tmp_path: Path, corpus: list[dict[str, Any]]) -> None:
    out = tmp_path / "scored.parquet"
    # A line that is not JSON or not UTF-8 is named before any row is scored.
    # So is a column whose values are of two kinds, which one Parquet column cannot hold (it failed after every row
    # was scored, at the join of the shards).
    for bad, error in ((b"{not json\n", "not JSON"), (b'{"text": "caf\xe9"}\n', "not UTF-8"),
                       (b'{"id": "twenty", "text": "hello"}\n', "column 'id' is string here but number on line 1")):
        source = _write_jsonl(tmp_path / "corpus.jsonl", corpus[:20])
        with open(source, "ab") as f:
            f.write(bad)
        run = subprocess.run([*CLI, "--input", str(source), "--output", str(out), "--shard-size", "8"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and f"{source}:21: {error}" in run.stderr, run.stderr
        assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl"], "nothing written"

    # A row the guard refuses fails its shard, naming the row; the shards before it are committed.
    source = _write_jsonl(tmp_path / "corpus.jsonl", [*corpus[:20], {"id": 20, "text": ""}])
    run = subprocess.run([*CLI, "--input", str(source), "--output", str(out), "--shard-size", "8"],
                         capture_output=True, text=True, timeout=120)
    refused = f"{source.resolve()}, shard 2 (rows 16 to 20, counting from 0): row 20: prompt is empty"
    assert run.returncode == 2 and refused in run.stderr, run.stderr
    assert not out.exists()
    # A rerun with other options must not mix with the committed shards.
    run = subprocess.run([*CLI, "--input", str(source), "--output", str(out), "--shard-size", "4"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "other settings (shard_size differ)" in run.stderr, run.stderr

    out.write_text("keep me")
    run = subprocess.run([*CLI, "--input", str(source), "--output", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "exists" in run.stderr and out.read_text() == "keep me"

    clean = _write_jsonl(tmp_path / "clean.jsonl", corpus[:20])
    other = tmp_path / "other.parquet"
    run = subprocess.run([*CLI, "--input", str(clean), "--output", str(other), "--text-column", "prompt"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "column 'prompt'" in run.stderr, run.stderr
    assert not other.exists()


# (input format, a change that makes row 22 one the scorer refuses, the error naming it)
REFUSED_ROWS = {
    "jsonl": ({"text": 22}, "row 22 of column 'text' is int, not text"),
    "parquet": ({"response": "o\0k"}, "row 22: response contains a NUL byte"),
}


@pytest.mark.parametrize("fmt", list(REFUSED_ROWS))
def test_a_refused_row_in_a_later_shard_is_named_by_its_row_in_the_input(tmp_path: Path,
                                                                          corpus: list[dict[str, Any]],
                                                                          fmt: str) -> None:
    """The error names the refused row by its index in the whole input, not in its shard, so the user need not add
    the shard's offset; the run leaves no output and nothing half-written, only whole parts of other shards."""
    change, error = REFUSED_ROWS[fmt]
    rows = [dict(row) for row in corpus[:30]]
    rows[22].update(change)
    source = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        _write_jsonl(source, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=10)  # shards cross row groups
    out = tmp_path / f"scored.{fmt}"
    run = subprocess.run([*CLI, "--input", str(source), "--output", str(out), "--shard-size", "4"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"{source.resolve()}, shard 5 (rows 20 to 23, counting from 0): {error}" in run.stderr, run.stderr

    assert not out.exists()
    parts = tmp_path / f"{out.name}.parts"
    files = {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file()}
    committed = {int(path.name.split("-")[1].split(".")[0]) for path in parts.glob(f"part-*.{fmt}")}
    expected = {source.name, f"{parts.name}/manifest.json", *(f"{parts.name}/part-{i:06d}.{fmt}" for i in committed)}
    assert files == expected, "no temporary file is left"
    # one worker: the shards before the bad one are committed (the next may be too), the bad one is not
    assert set(range(5)) <= committed and 5 not in committed, committed
    for i in committed:
        assert _read_output(parts / f"part-{i:06d}.{fmt}")["id"].to_pylist() == list(range(4 * i, 4 * i + 4))
