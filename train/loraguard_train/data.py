"""Moderation data sets in one record type, whatever file format they come in.

Formats (``auto`` picks one from the first row):

- ``loraguard``: the JSON-lines schema of the shared data (``text``, ``response``, ``label``, ``label_target``,
  per-category labels in ``extra.categories`` (OpenAI moderation; a missing key is unknown), ``extra.category``
  (BeaverTails) and ``extra.jailbreaking`` (ToxicChat));
- ``toxicchat``: ToxicChat's CSV release (``user_input``, ``toxicity``, ``jailbreaking``);
- ``openai``: the OpenAI moderation release (``samples-1680.jsonl.gz``: ``prompt`` and category codes);
- ``beavertails``: BeaverTails' release (``prompt``, ``response``, ``category``, ``is_safe``);
- ``generic``: any CSV/TSV/JSONL/JSON with a text column and one or more 0/1 label columns.

Every data set yields ``unsafe`` (is the judged text harmful) plus whatever categories it has; a label a row
does not carry is unknown (``None``), and training masks it out.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

UNSAFE = "unsafe"
FORMATS = ("auto", "loraguard", "toxicchat", "openai", "beavertails", "generic")
# What the guard reads: the prompt alone, the response alone, or the prompt with its response where there is one.
TARGETS = ("prompt", "response", "pair")

# OpenAI moderation's category codes, named as its moderation API names them.
OPENAI_CATEGORIES = {
    "S": "sexual",
    "H": "hate",
    "V": "violence",
    "HR": "harassment",
    "SH": "self-harm",
    "S3": "sexual/minors",
    "H2": "hate/threatening",
    "V2": "violence/graphic",
}

_TRUE = frozenset({"1", "true", "yes", "y"})
_FALSE = frozenset({"0", "false", "no", "n"})


class DataError(ValueError):
    """A data file that cannot be read as asked; the message names the file (and row) and what to change."""


@dataclass(frozen=True)
class Record:
    """One guard input with its labels: label name -> 1 (harmful), 0 (safe) or None (unknown); `extra` keeps the
    row's set-specific fields (the shared schema's ``extra``) for recipes that map them to labels."""

    prompt: str
    response: str | None
    labels: Mapping[str, int | None]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    records: list[Record]
    labels: list[str] = field(default_factory=list)
    # how much each of its rows counts in the training loss, against rows of other sets
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = label_names([self])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.records]

    @property
    def responses(self) -> list[str | None] | None:
        """None when no record has a response, so callers can take the prompt-only path."""
        responses = [r.response for r in self.records]
        return None if all(r is None for r in responses) else responses

    def targets(self, labels: Sequence[str]) -> npt.NDArray[np.float32]:
        """[N, len(labels)] float32 of 0/1, NaN where a label is unknown for a record."""
        out = np.full((len(self.records), len(labels)), np.nan, dtype=np.float32)
        for i, record in enumerate(self.records):
            for j, label in enumerate(labels):
                value = record.labels.get(label)
                if value is not None:
                    out[i, j] = value
        return out

    def subset(self, indices: Iterable[int], name: str | None = None) -> Dataset:
        return Dataset(name or self.name, [self.records[i] for i in indices], list(self.labels), self.weight)


def label_names(datasets: Iterable[Dataset]) -> list[str]:
    """Labels known for at least one record, ``unsafe`` first, the rest in order of first appearance."""
    seen: dict[str, None] = {}
    for ds in datasets:
        for record in ds.records:
            for label, value in record.labels.items():
                if value is not None:
                    seen.setdefault(label)
    names = list(seen)
    if UNSAFE in seen:
        names.remove(UNSAFE)
        names.insert(0, UNSAFE)
    return names


# ---------------------------------------------------------------------------------------------------------------
# reading rows


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, row) pairs of a CSV/TSV/JSONL/JSON file, optionally gzipped."""
    name = path.name.lower().removesuffix(".gz")
    try:
        with _open_text(path) as f:
            if name.endswith((".csv", ".tsv")):
                reader = csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ",")
                # row numbers count the header line, as a spreadsheet shows them
                for i, row in enumerate(reader, start=2):
                    yield i, row
            elif name.endswith(".json"):
                data = json.load(f)
                if not isinstance(data, list):
                    raise DataError(f"{path}: a .json data file must hold a list of objects")
                for i, row in enumerate(data, start=1):
                    yield i, _object(row, path, i)
            elif name.endswith(".jsonl"):
                for i, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                        yield i, _object(row, path, i)
            else:
                raise DataError(f"{path}: unknown file type; use .csv, .tsv, .jsonl or .json (optionally .gz)")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: broken gzip file ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _object(row: Any, path: Path, i: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{path}:{i}: expected a JSON object per row, got {type(row).__name__}")
    return row


def _binary(value: Any, where: str, column: str) -> int | None:
    """0/1 from the spellings data sets use; empty, null and NaN mean unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "nan", "null", "none"):
            return None
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if number in (0.0, 1.0):
            return int(number)
    raise DataError(f"{where}: column {column!r} must be 0/1 (or true/false, yes/no), got {value!r}")


def _text(value: Any, where: str, column: str, *, optional: bool = False) -> str | None:
    if value is None:
        if optional:
            return None
        raise DataError(f"{where}: no value in column {column!r}")
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# formats: each turns one row into (prompt, response, labels, label_target)

_Parsed = tuple[str, str | None, dict[str, int | None], str]


def _detect(row: Mapping[str, Any], path: Path) -> str:
    keys = set(row)
    if {"text", "label", "label_target"} <= keys:
        return "loraguard"
    if {"user_input", "toxicity"} <= keys:
        return "toxicchat"
    if {"prompt", "response", "is_safe"} <= keys:
        return "beavertails"
    if "prompt" in keys and keys & set(OPENAI_CATEGORIES):
        return "openai"
    raise DataError(
        f"{path}: cannot tell the format from its columns {sorted(keys)[:12]}; pass --format, or "
        "--text-column and --label-column for a generic file"
    )


def _parse_loraguard(row: Mapping[str, Any], where: str) -> _Parsed:
    prompt = _text(row.get("text"), where, "text")
    response = _text(row.get("response"), where, "response", optional=True)
    target = row.get("label_target", "prompt")
    if target not in ("prompt", "response"):
        raise DataError(f"{where}: label_target must be 'prompt' or 'response', got {target!r}")
    labels: dict[str, int | None] = {UNSAFE: _binary(row.get("label"), where, "label")}
    extra = row.get("extra") or {}
    # per-category labels are dicts; other sets use these names for a plain string (e.g. HarmBench's "category")
    categories = extra.get("categories")
    if isinstance(categories, dict):
        # OpenAI moderation: a category missing from the row was not annotated
        labels.update(dict.fromkeys(OPENAI_CATEGORIES.values()))
        for code, value in categories.items():
            labels[OPENAI_CATEGORIES.get(code, code)] = _binary(value, where, f"extra.categories.{code}")
    category = extra.get("category")
    if isinstance(category, dict):
        for name, value in category.items():
            labels[name] = _binary(value, where, f"extra.category.{name}")
    if "jailbreaking" in extra:
        labels["jailbreaking"] = _binary(extra["jailbreaking"], where, "extra.jailbreaking")
    assert prompt is not None
    return prompt, response, labels, target


def _parse_toxicchat(row: Mapping[str, Any], where: str) -> _Parsed:
    prompt = _text(row.get("user_input"), where, "user_input")
    labels: dict[str, int | None] = {UNSAFE: _binary(row.get("toxicity"), where, "toxicity")}
    if "jailbreaking" in row:
        labels["jailbreaking"] = _binary(row["jailbreaking"], where, "jailbreaking")
    assert prompt is not None
    # the labels judge the user input; the model output in the release is not part of the guard input
    return prompt, None, labels, "prompt"


def _parse_openai(row: Mapping[str, Any], where: str) -> _Parsed:
    prompt = _text(row.get("prompt"), where, "prompt")
    categories = {name: _binary(row.get(code), where, code) for code, name in OPENAI_CATEGORIES.items()}
    # The release flags a sample when any annotated category is positive (the shared data's `label` agrees).
    unsafe = int(any(v == 1 for v in categories.values()))
    assert prompt is not None
    return prompt, None, {UNSAFE: unsafe, **categories}, "prompt"


def _parse_beavertails(row: Mapping[str, Any], where: str) -> _Parsed:
    prompt = _text(row.get("prompt"), where, "prompt")
    response = _text(row.get("response"), where, "response")
    safe = _binary(row.get("is_safe"), where, "is_safe")
    labels: dict[str, int | None] = {UNSAFE: None if safe is None else 1 - safe}
    for name, value in (row.get("category") or {}).items():
        labels[name] = _binary(value, where, f"category.{name}")
    assert prompt is not None
    return prompt, response, labels, "response"


@dataclass(frozen=True)
class Columns:
    """Generic files: which column holds what. A label column ``COL`` or ``COL:LABEL``; the first one is
    ``unsafe`` unless renamed, the others keep their column name unless renamed."""

    text: str
    labels: Sequence[str]
    response: str | None = None

    def label_map(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for i, spec in enumerate(self.labels):
            column, _, name = spec.partition(":")
            out.append((column, name or (UNSAFE if i == 0 else column)))
        names = [name for _, name in out]
        if len(set(names)) != len(names):
            raise DataError(f"label columns {list(self.labels)} give duplicate label names {names}")
        return out


def _generic_parser(columns: Columns) -> Any:
    label_map = columns.label_map()

    def parse(row: Mapping[str, Any], where: str) -> _Parsed:
        prompt = _text(row.get(columns.text), where, columns.text)
        response = None
        if columns.response is not None:
            response = _text(row.get(columns.response), where, columns.response, optional=True) or None
        labels = {name: _binary(row.get(column), where, column) for column, name in label_map}
        assert prompt is not None
        return prompt, response, labels, "prompt" if response is None else "response"

    return parse


_PARSERS = {
    "loraguard": _parse_loraguard,
    "toxicchat": _parse_toxicchat,
    "openai": _parse_openai,
    "beavertails": _parse_beavertails,
}
_REQUIRED_COLUMNS = {
    "loraguard": ("text", "label"),
    "toxicchat": ("user_input", "toxicity"),
    "openai": ("prompt",),
    "beavertails": ("prompt", "response", "is_safe"),
}


def _check_columns(row: Mapping[str, Any], required: Iterable[str], path: Path, fmt: str) -> None:
    missing = [c for c in required if c not in row]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (format {fmt}); its columns are {sorted(row)[:20]}")


def _apply_target(parsed: _Parsed, target: str, where: str, extra: Mapping[str, Any]) -> Record:
    prompt, response, labels, judged = parsed
    if target == "prompt":
        if judged == "response":
            raise DataError(
                f"{where}: the labels judge the response, but the guard target is 'prompt'; use --target pair"
            )
        return Record(prompt, None, labels, extra)
    if target == "response":
        if response is None:
            raise DataError(f"{where}: no response to judge (guard target 'response'); use --target prompt or pair")
        return Record(response, None, labels, extra)
    return Record(prompt, response, labels, extra)


def load_dataset(
    path: str | Path,
    fmt: str = "auto",
    target: str = "pair",
    columns: Columns | None = None,
    name: str | None = None,
) -> Dataset:
    """Read a data file into records; raises DataError with a one-line reason for any user mistake."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if target not in TARGETS:
        raise DataError(f"unknown guard target {target!r}; choose one of {', '.join(TARGETS)}")
    if columns is not None and fmt not in ("auto", "generic"):
        raise DataError(f"--text-column/--label-column are for generic files, not format {fmt}")
    if columns is None and fmt == "generic":
        raise DataError("format generic needs --text-column and --label-column")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    records: list[Record] = []
    parse = None
    for i, row in _rows(path):
        if parse is None:
            if columns is not None:
                fmt = "generic"
                required = [columns.text, *(c for c, _ in columns.label_map())]
                if columns.response is not None:
                    required.append(columns.response)
                _check_columns(row, required, path, fmt)
                parse = _generic_parser(columns)
            else:
                fmt = _detect(row, path) if fmt == "auto" else fmt
                _check_columns(row, _REQUIRED_COLUMNS[fmt], path, fmt)
                parse = _PARSERS[fmt]
        where = f"{path}:{i}"
        extra = row.get("extra")
        records.append(_apply_target(parse(row, where), target, where, extra if isinstance(extra, dict) else {}))
    if not records:
        raise DataError(f"{path}: the data set is empty")
    dataset = Dataset(name or _stem(path), records)
    if not dataset.labels:
        raise DataError(f"{path}: no row has a known label")
    return dataset


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    return name


# ---------------------------------------------------------------------------------------------------------------
# selecting rows


def split_dataset(dataset: Dataset, dev_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded train/dev split, stratified on ``unsafe`` so the dev split keeps the data set's positive rate.

    The same file, format, target, fraction and seed always give the same split (training and evaluation
    both call this), and records keep their file order within each side.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise DataError(f"dev fraction must be between 0 and 1, got {dev_fraction}")
    rng = np.random.default_rng(seed)
    strata: dict[int | None, list[int]] = {}
    for i, record in enumerate(dataset.records):
        strata.setdefault(record.labels.get(UNSAFE), []).append(i)
    dev: list[int] = []
    for key in sorted(strata, key=lambda k: -1 if k is None else k):
        members = np.asarray(strata[key])
        n_dev = round(len(members) * dev_fraction)
        dev.extend(rng.permutation(members)[:n_dev].tolist())
    dev_set = set(dev)
    train_idx = [i for i in range(len(dataset)) if i not in dev_set]
    if not train_idx or not dev_set:
        raise DataError(f"{dataset.name}: {len(dataset)} rows are too few for a dev fraction of {dev_fraction}")
    return dataset.subset(train_idx), dataset.subset(sorted(dev_set), name=f"{dataset.name}:dev")


def sample(dataset: Dataset, n: int, seed: int) -> Dataset:
    """A seeded random subset of n records (all of them if there are fewer), in file order."""
    if n <= 0:
        raise DataError(f"limit must be positive, got {n}")
    if n >= len(dataset):
        return dataset
    picked = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
    return dataset.subset(picked.tolist())


def only_label(dataset: Dataset, label: str, value: int) -> Dataset:
    """The records whose `label` is `value` (e.g. XSTest's safe prompts: unsafe == 0)."""
    kept = [i for i, r in enumerate(dataset.records) if r.labels.get(label) == value]
    if not kept:
        raise DataError(f"{dataset.name}: no record has {label} = {value}")
    return dataset.subset(kept)


def _values(record: Record, field_name: str) -> list[str]:
    """A row's value(s) of an ``extra`` field: one string, or a list of them (ConvAbuse's abuse types)."""
    value = record.extra.get(field_name)
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def map_categories(
    dataset: Dataset, field_name: str, categories: Mapping[str, str], drop: Sequence[str] = ()
) -> Dataset:
    """A set's own harm categories as guard labels: a harmful row (unsafe = 1) becomes positive on the label
    each of its ``extra[field_name]`` values maps to; its other labels stay as they were (unknown, unless the
    file knew them): a row about violence may be harassment too. Rows holding a value in `drop` are left out."""
    dropped = set(drop)
    records = []
    for record in dataset.records:
        values = _values(record, field_name)
        if dropped.intersection(values):
            continue
        if record.labels.get(UNSAFE) == 1:
            mapped = {categories[v]: 1 for v in values if v in categories}
            if mapped:
                record = replace(record, labels={**record.labels, **mapped})
        records.append(record)
    if not records:
        raise DataError(f"{dataset.name}: dropping rows whose {field_name} is one of {sorted(dropped)} left none")
    return Dataset(dataset.name, records, weight=dataset.weight)


def safe_rows_negative(dataset: Dataset, labels: Sequence[str]) -> Dataset:
    """Rows labelled safe (unsafe = 0) as negatives of every label they do not know: a harm category is a kind
    of harm, so a safe text has none. Without this, category heads learn only from harmful rows (and OpenAI
    moderation's), and fire on benign text that sounds like a category."""
    records = []
    for record in dataset.records:
        if record.labels.get(UNSAFE) == 0:
            missing = {label: 0 for label in labels if record.labels.get(label) is None}
            if missing:
                record = replace(record, labels={**record.labels, **missing})
        records.append(record)
    return Dataset(dataset.name, records, weight=dataset.weight)
