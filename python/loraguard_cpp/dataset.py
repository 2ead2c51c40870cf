"""Score a Parquet or JSONL file with several worker processes, resumably (``loraguard-cli classify --input``).

The input is cut into shards of ``--shard-size`` rows in file order. Each worker process loads one
:class:`~loraguard_cpp.batch.GuardScorer` and writes every shard it scores as a part file in the work directory
``OUT.parts``, committed by an atomic rename, so a part file is either complete or absent. A manifest there
records what the run is (the input file's identity and every option that changes the output); a rerun with the
same arguments skips committed shards, so an interrupted run (Ctrl-C, a killed worker, a killed machine) loses no
row and scores none twice. When every shard is committed, the parts are joined into OUT through a temporary file
and a rename, and the work directory is removed: OUT appears complete or not at all.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import registry
from .batch import FLAGGED_COLUMN, RESPONSE_COLUMN, GuardScorer, response_column_of
from .errors import InvalidInputError, LoraGuardError

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MANIFEST = "manifest.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset options of ``loraguard-cli classify``."""
    p.add_argument("--input", type=Path, help="score a Parquet or JSONL file (with --output): one row per input")
    p.add_argument("--output", type=Path, help="with --input: Parquet or JSONL file to write (by its suffix)")
    p.add_argument("--workers", type=int, default=1, help="with --input: worker processes, one Guard each")
    p.add_argument("--text-column", default="text", help="with --input: the column holding the text")
    p.add_argument("--response-column", default=None,
                   help=f"with --input: the column holding a response to the text (default: {RESPONSE_COLUMN!r} "
                   "where the input has it)")
    p.add_argument("--id-column", default=None,
                   help="with --input: write only this column beside the scores (join back on it); "
                   "default: every input column")
    p.add_argument("--shard-size", type=int, default=512,
                   help="with --input: rows per committed part; an interrupted run redoes at most one per worker")


@dataclass(frozen=True)
class Job:
    """Everything that decides the output; a resumed run must match it exactly."""

    input: str
    input_size: int
    input_mtime_ns: int
    output_format: str
    shard_size: int
    model: str
    guard: str
    text_column: str
    response_column: str | None
    id_column: str | None
    input_columns: list[str]
    guard_options: dict[str, Any]


def _format(path: Path, what: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"{what} {path}: unknown format; name it *.parquet or *.jsonl")
    return fmt


def _work_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _part_path(work: Path, index: int, fmt: str) -> Path:
    return work / f"part-{index:06d}.{fmt}"


def _atomic_write_target(final: Path) -> Path:
    """A temporary name in final's directory (a same-filesystem rename), hidden and never a committed name."""
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")


def _commit(tmp: Path, final: Path) -> None:
    """Rename tmp onto final once its bytes are on disk, so that even a machine that dies leaves whole files."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# -- reading shards -----------------------------------------------------------------------------------------


def jsonl_objects(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSONL file; a line that is not a JSON object is an
    error naming it. The one JSONL reader of the CLI (``classify --jsonl`` and ``--input``)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInputError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start} of the line); fix or "
                                        "drop the line and rerun") from e
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInputError(f"{path}:{n}: not JSON ({e}); fix or drop the line and rerun") from e
            if not isinstance(row, dict):
                raise InvalidInputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def _jsonl_shards(path: Path, shard_size: int) -> Iterator[list[dict[str, Any]]]:
    rows = (row for _, row in jsonl_objects(path))
    while shard := list(itertools.islice(rows, shard_size)):
        yield shard


def _parquet_shards(path: Path, shard_size: int) -> Iterator[pa.Table]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for record_batch in pq.ParquetFile(path).iter_batches(batch_size=shard_size):
        yield pa.Table.from_batches([record_batch])


def _json_kind(value: object) -> str | None:
    """A JSON value's kind as Parquet types it (null fits any column; integers and reals share one)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _scan(path: Path, fmt: str, to_parquet: bool) -> tuple[int, list[str]]:
    """(rows, columns) of the input; a JSONL file is read through, so a bad line fails before any row is scored,
    and its columns are every key of any row, in the order they first appear. A JSONL column whose values are of
    two kinds cannot become one Parquet column: an error naming it, before anything is scored."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        return int(parquet.metadata.num_rows), list(parquet.schema_arrow.names)
    n_rows = 0
    kinds: dict[str, tuple[str | None, int]] = {}  # column -> (kind of its values so far, line of the first)
    for line, row in jsonl_objects(path):
        n_rows += 1
        for name, value in row.items():
            kind = _json_kind(value)
            seen, first = kinds.setdefault(name, (kind, line))
            if seen is None and kind is not None:
                kinds[name] = (kind, line)
            elif to_parquet and kind is not None and kind != seen:
                raise InvalidInputError(
                    f"{path}:{line}: column {name!r} is {kind} here but {seen} on line {first}: a Parquet column "
                    "has one type; make the column one kind, or write JSONL (--output FILE.jsonl)"
                )
    return n_rows, list(kinds)


def _checked_columns(args: argparse.Namespace, columns: list[str]) -> str | None:
    """The response column to score, once every column named by an option is known to be in the input."""
    for option, name in (("--text-column", args.text_column), ("--response-column", args.response_column),
                         ("--id-column", args.id_column)):
        if name is not None and name not in columns:
            raise InvalidInputError(f"the input has no column {name!r} ({option}; columns: {columns})")
    return response_column_of(args.response_column, columns)


# -- the worker process -------------------------------------------------------------------------------------

_scorer: GuardScorer | None = None
_job: Job | None = None


def _start_worker(job: Job, model_path: str, guard_path: str, n_threads: int) -> None:
    global _scorer, _job
    # Ctrl-C is the parent's to handle: it stops handing out shards, and a worker finishes (and commits) its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _job = job
    _scorer = GuardScorer(model_path, guard_path, text_column=job.text_column, response_column=job.response_column,
                          n_threads=n_threads, **job.guard_options)


def _score_shard(index: int, first_row: int, rows: Any, work: Path) -> int:
    """Score one shard, whose first row is the input's row ``first_row`` (from 0), and commit its part file;
    returns its row count."""
    assert _scorer is not None and _job is not None, "worker not started"
    final = _part_path(work, index, _job.output_format)
    tmp = _atomic_write_target(final)
    try:
        if _job.output_format == "parquet":
            _write_parquet_part(_scorer, _job, rows, first_row, tmp)
        else:
            _write_jsonl_part(_scorer, _job, rows, first_row, tmp)
        _commit(tmp, final)
    except LoraGuardError as e:
        # With first_row, the scorer names a bad row by its index in the whole input: say that it counts from 0
        rows_here = f"rows {first_row} to {first_row + len(rows) - 1}, counting from 0"
        raise LoraGuardError(f"{_job.input}, shard {index} ({rows_here}): {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def _write_parquet_part(scorer: GuardScorer, job: Job, rows: Any, first_row: int, tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(rows, pa.Table):
        table = rows
    else:  # JSONL rows: every column of the input, null where a row lacks it
        table = pa.Table.from_pydict({name: [record.get(name) for record in rows] for name in job.input_columns})
    scored = scorer(table, first_row=first_row)
    if job.id_column is not None:
        scored = scored.select([job.id_column, *scorer.score_columns, FLAGGED_COLUMN])
    pq.write_table(scored, tmp)


def _write_jsonl_part(scorer: GuardScorer, job: Job, rows: Any, first_row: int, tmp: Path) -> None:
    records: list[dict[str, Any]] = rows if isinstance(rows, list) else rows.to_pylist()
    texts = [record.get(job.text_column) for record in records]
    responses = None if job.response_column is None else [record.get(job.response_column) for record in records]
    columns = scorer.columns(texts, responses, first_row=first_row)
    with open(tmp, "w", encoding="utf-8") as f:
        for i, record in enumerate(records):
            out = {job.id_column: record.get(job.id_column)} if job.id_column is not None else dict(record)
            out.update({name: values[i].item() for name, values in columns.items()})
            f.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")


# -- the parent: plan, resume, run, join --------------------------------------------------------------------


def _open_work_dir(work: Path, job: Job) -> set[int]:
    """The work directory for this job, created or resumed; returns the shards already committed."""
    manifest = work / MANIFEST
    if work.is_dir() and manifest.is_file():
        started = json.loads(manifest.read_text(encoding="utf-8"))
        if started != asdict(job):
            changed = sorted(k for k in set(started) | set(asdict(job)) if started.get(k) != asdict(job).get(k))
            raise LoraGuardError(
                f"{work} holds an interrupted run with other settings ({', '.join(changed)} differ): rerun it with "
                f"the same input and options to resume, or delete {work} to start over"
            )
        for leftover in work.glob(".*.tmp"):  # a part that a killed worker was writing
            leftover.unlink()
        done = set()
        for part in work.glob(f"part-*.{job.output_format}"):
            done.add(int(part.name.split("-")[1].split(".")[0]))
        return done
    work.mkdir(exist_ok=True)
    tmp = _atomic_write_target(manifest)
    tmp.write_text(json.dumps(asdict(job), indent=2), encoding="utf-8")
    _commit(tmp, manifest)
    return set()


def _join_parts(work: Path, n_shards: int, job: Job, output: Path) -> tuple[int, int]:
    """Join the committed parts, in shard order, into output atomically; returns (rows, flagged rows)."""
    parts = [_part_path(work, i, job.output_format) for i in range(n_shards)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise LoraGuardError(f"internal error: parts {missing[:3]} are missing from {work}; rerun to score them")
    tmp = _atomic_write_target(output)
    try:
        counts = _join_parquet(parts, tmp) if job.output_format == "parquet" else _join_jsonl(parts, tmp)
        _commit(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def _join_jsonl(parts: list[Path], tmp: Path) -> tuple[int, int]:
    n_rows = n_flagged = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for part in parts:
            with open(part, encoding="utf-8") as f:
                for line in f:
                    n_rows += 1
                    n_flagged += bool(json.loads(line)[FLAGGED_COLUMN])
                    out.write(line)
    return n_rows, n_flagged


def _join_parquet(parts: list[Path], tmp: Path) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # Shards of a JSONL input are typed one by one (a column all null in one shard, absent in another).
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    n_rows = n_flagged = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            table = pq.read_table(part)
            columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
                       for f in schema]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            n_rows += len(table)
            n_flagged += int(pc.sum(table[FLAGGED_COLUMN]).as_py() or 0)
    return n_rows, n_flagged


def score_file(args: argparse.Namespace) -> int:
    """``loraguard-cli classify --input FILE --output OUT``; returns the number of flagged rows."""
    from tqdm import tqdm

    input_path, output = Path(args.input), args.output
    if output is None:
        raise InvalidInputError("--input needs --output: the Parquet or JSONL file to write")
    output = Path(output)
    input_format, output_format = _format(input_path, "input"), _format(output, "output")
    if not input_path.is_file():
        raise InvalidInputError(f"input {input_path} is not a file")
    if output.exists():
        raise InvalidInputError(f"output {output} exists: delete it or name another output")
    if not output.parent.is_dir():
        raise InvalidInputError(f"output directory {output.parent} does not exist")
    if args.workers < 1 or args.shard_size < 1:
        raise InvalidInputError("--workers and --shard-size must be at least 1")
    if "parquet" in (input_format, output_format):
        _require_pyarrow()

    n_rows, columns = _scan(input_path, input_format, output_format == "parquet")
    if n_rows == 0:
        raise InvalidInputError(f"input {input_path} has no rows")
    response_column = _checked_columns(args, columns)
    # Resolved once here so that workers never race to prepare a named guard's base.
    model_path, guard_path = registry.resolve(args.model, args.guard)
    stat = input_path.stat()
    job = Job(
        input=str(input_path.resolve()), input_size=stat.st_size, input_mtime_ns=stat.st_mtime_ns,
        output_format=output_format, shard_size=args.shard_size, model=str(model_path), guard=str(guard_path),
        text_column=args.text_column, response_column=response_column, id_column=args.id_column, input_columns=columns,
        guard_options={"n_ctx": args.ctx, "overflow": args.overflow, "isolated": args.isolated,
                       "n_gpu_layers": args.gpu_layers},
    )
    work = _work_dir(output)
    done = _open_work_dir(work, job)
    if done:
        print(f"loraguard-cli: resuming {work}: {len(done)} shards already scored are skipped", file=sys.stderr)

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    shards = _jsonl_shards(input_path, args.shard_size) if input_format == "jsonl" else _parquet_shards(
        input_path, args.shard_size)
    progress = tqdm(total=n_rows, unit="row", file=sys.stderr, disable=None)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or native state
    pool = ProcessPoolExecutor(args.workers, mp_context=context, initializer=_start_worker,
                               initargs=(job, str(model_path), str(guard_path), threads))
    pending: set[Future[int]] = set()
    n_shards = n_rows_read = 0
    try:
        for index, rows in enumerate(shards):
            n_shards = index + 1
            first_row, n_rows_read = n_rows_read, n_rows_read + len(rows)
            if index in done:
                progress.update(len(rows))
                continue
            # A bounded queue keeps at most two shards per worker in memory.
            while len(pending) >= 2 * args.workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                progress.update(sum(f.result() for f in finished))
            pending.add(pool.submit(_score_shard, index, first_row, rows, work))
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            progress.update(sum(f.result() for f in finished))
    except BrokenProcessPool as e:
        raise LoraGuardError(f"a worker process died ({e}); the shards it committed are kept in {work}: rerun the "
                             "same command to resume") from e
    except KeyboardInterrupt:
        print(f"\nloraguard-cli: interrupted; committed shards are kept in {work}: rerun the same command to resume",
              file=sys.stderr)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()

    rows_written, n_flagged = _join_parts(work, n_shards, job, output)
    shutil.rmtree(work)
    print(f"loraguard-cli: wrote {rows_written} rows to {output} ({n_flagged} flagged)", file=sys.stderr)
    return n_flagged


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise LoraGuardError("Parquet needs pyarrow: pip install 'loraguard[data]'") from e
