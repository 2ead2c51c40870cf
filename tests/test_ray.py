"""Ray Data on a local cluster: 2,000 real rows scored by 2 GuardScorer actors, every row once, in order, with the
scores of one process; an actor killed mid-run is restarted and its batch retried, losing and duplicating nothing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moderation_corpus import Reference, corpus_reference, moderation_corpus

ray = pytest.importorskip("ray", reason="Ray Data is an optional extra: pip install 'loraguard[ray]'")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N_ROWS = 2000
FAULT_ROWS = 600


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    rows = moderation_corpus(N_ROWS)
    path = tmp_path_factory.mktemp("ray") / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=250)
    return path, rows


@pytest.fixture(scope="module")
def reference() -> Reference:
    return corpus_reference()


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _moderate(path: Path, n_rows: int, batch_size: int) -> Any:
    from loraguard_cpp.integrations.ray import moderate

    # An actor takes whole blocks, and one file is read as one block: blocks of 100 rows keep both actors busy.
    dataset = ray.data.read_parquet(str(path)).repartition(n_rows // 100)
    # Two one-thread actors on a two-CPU cluster, each reserving half a CPU so that reading can run beside them.
    return moderate(dataset, text_column="text", response_column="response", concurrency=2, n_threads=1,
                    num_cpus=0.5, batch_size=batch_size)


def test_two_actors_score_2000_rows_once_in_order(cluster: None, corpus_file: tuple[Path, list[dict[str, Any]]],
                                                  reference: Reference) -> None:
    path, rows = corpus_file
    table = pa.concat_tables(ray.get(_moderate(path, N_ROWS, batch_size=100).to_arrow_refs()))
    reference.check(table, N_ROWS)
    assert table["text"].to_pylist() == [r["text"] for r in rows]


def _actor_pids() -> list[int]:
    """Processes of live GuardScorer actors (Ray titles a worker process after the actor it runs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"GuardScorer" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_actor_is_restarted_and_its_batch_retried(
    cluster: None, corpus_file: tuple[Path, list[dict[str, Any]]], reference: Reference
) -> None:
    full_path, all_rows = corpus_file
    rows = all_rows[:FAULT_ROWS]
    path = full_path.with_name("fault.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    batches = []
    before_kill: list[int] = []
    seen_after_kill: set[int] = set()
    for batch in _moderate(path, FAULT_ROWS, batch_size=50).iter_batches(batch_size=None, batch_format="pyarrow"):
        batches.append(batch)
        if before_kill:
            seen_after_kill.update(_actor_pids())
            continue
        deadline = time.monotonic() + 30
        while len(before_kill := _actor_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(before_kill[0], signal.SIGKILL)
        rows_before_kill = sum(len(b) for b in batches)
    assert before_kill and rows_before_kill < FAULT_ROWS, "the actor was killed while rows were left to score"
    assert seen_after_kill - set(before_kill), "a restarted actor took the killed one's place"
    reference.check(pa.concat_tables(batches), FAULT_ROWS)
