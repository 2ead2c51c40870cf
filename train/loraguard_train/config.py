"""Training configuration: a recipe file (TOML) and command-line overrides, checked before any slow work.

Relative paths in a recipe are relative to the recipe's directory, so a recipe runs from anywhere; a path
``package:NAME/sub/dir`` points inside an installed Python package (e.g. a model shipped on PyPI).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraguard_convert.base import OUTTYPES
from loraguard_convert.guard import DEFAULT_GUARD_OUTTYPE
from loraguard_cpp import LoraGuardError, registry
from loraguard_train.data import (
    FORMATS,
    TARGETS,
    Columns,
    DataError,
    Dataset,
    load_dataset,
    map_categories,
    only_label,
    sample,
)
from loraguard_train.model import (
    ACTIVATIONS,
    DEFAULT_ALPHA,
    DEFAULT_DROPOUT,
    DEFAULT_RANK,
    DEFAULT_TEMPLATE_PAIR,
    DEFAULT_TEMPLATE_PROMPT,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PACKAGE_PREFIX = "package:"
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A recipe or option that cannot work; the message says which key and why."""


@dataclass
class DataSpec:
    """One data file and how to read it (see loraguard_train.data)."""

    path: Path
    format: str = "auto"
    target: str = "pair"
    text_column: str | None = None
    label_columns: list[str] = field(default_factory=list)
    response_column: str | None = None
    # a seeded random subset of this many rows
    limit: int | None = None
    # keep only rows whose `unsafe` label is this value (0: a safe-only set)
    only_unsafe: int | None = None
    # the row's own harm category: an `extra` field (a string or a list of strings), the guard label each of
    # its values means on a harmful row, and values whose rows are left out (see data.map_categories)
    category_field: str | None = None
    categories: dict[str, str] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    # how much each row counts in the training loss (1: as much as any other row)
    weight: float = 1.0

    def load(self, seed: int) -> Dataset:
        columns = None
        if self.text_column is not None or self.label_columns:
            if self.text_column is None or not self.label_columns:
                raise DataError(f"{self.path}: a generic file needs both a text column and a label column")
            columns = Columns(self.text_column, self.label_columns, self.response_column)
        elif self.response_column is not None:
            raise DataError(f"{self.path}: a response column is only for generic files (with a text column)")
        dataset = load_dataset(self.path, self.format, self.target, columns)
        if self.category_field is not None:
            dataset = map_categories(dataset, self.category_field, self.categories, self.drop)
        elif self.categories or self.drop:
            raise DataError(f"{self.path}: categories and drop need the category_field they read")
        if self.weight <= 0:
            raise DataError(f"{self.path}: weight must be positive, got {self.weight}")
        dataset.weight = self.weight
        if self.only_unsafe is not None:
            dataset = only_label(dataset, "unsafe", self.only_unsafe)
        if self.limit is not None:
            dataset = sample(dataset, self.limit, seed)
        return dataset


@dataclass
class TrainConfig:
    base: str
    out: Path
    train: list[DataSpec]
    # held-out sets; without any, each training set is split (dev_fraction, seed)
    dev: list[DataSpec] = field(default_factory=list)
    dev_fraction: float = 0.2
    # labels to train, `unsafe` first; default: every label the training data knows
    labels: list[str] | None = None
    # the base GGUF the guard runs on; default: the base itself if it is a GGUF, else a conversion of it
    base_gguf: Path | None = None
    base_outtype: str = "f16"
    # the guard file's LoRA tensor type: f32 (native equals PEFT to 1e-4) or f16 (half the file, ~1e-3 off)
    guard_outtype: str = DEFAULT_GUARD_OUTTYPE
    base_name: str | None = None
    pooling: str | None = None
    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    dropout: float = DEFAULT_DROPOUT
    # PEFT module names; default: the paper's query/value projections
    targets: list[str] | None = None
    # "alora": the adapter applies only from an invocation appended to every input (activated LoRA), given as
    # text that tokenizes with special-token text parsed (e.g. "<|im_end|>\n<|im_start|>guard\n")
    activation: str = "lora"
    invocation: str | None = None
    template_prompt: str = DEFAULT_TEMPLATE_PROMPT
    template_pair: str = DEFAULT_TEMPLATE_PAIR
    parse_special: bool = False
    epochs: int = 3
    batch_size: int = 16
    grad_accum: int = 1
    lr_lora: float = 5e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    max_length: int = 256
    # extra training rows that bury a prompt-level row in safe filler up to buried_max_length tokens
    # (loraguard_train.buried), so a harmful request inside a long benign text is not averaged away
    buried_rows: int = 0
    buried_max_length: int = 384
    # positive-class weight n_neg / n_pos per label (capped), so rare labels are not ignored
    class_weights: bool = True
    max_pos_weight: float = 50.0
    seed: int = 0
    # seed of the adapter's initialisation, dropout and batch order (default: `seed`), so a run can be repeated on
    # the same caps and dev split to see how much a dev figure moves between runs alone
    train_seed: int | None = None
    precision: str = "auto"
    device: str = "auto"
    eval_batch_size: int = 32
    # also save the resumable state every this many optimizer steps (0: at the end of each epoch only)
    save_steps: int = 0
    # stop after this many optimizer steps (smoke runs); the schedule still spans all epochs
    max_steps: int | None = None
    threshold: float = 0.5
    # set thresholds that maximise F1 on the dev sets instead of `threshold`
    calibrate: bool = False
    # safe rows (unsafe = 0) are negatives of every label they do not know (data.safe_rows_negative)
    safe_rows_negative: bool = False

    @property
    def run_seed(self) -> int:
        """The seed of everything random in training but the data: train_seed, or else seed."""
        return self.seed if self.train_seed is None else self.train_seed

    def resumable_view(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that wrote the state: all but those that change how
        the run is carried out, not what it computes (or only how its result is written: guard_outtype)."""
        data = to_plain(self)
        for key in ("max_steps", "save_steps", "device", "eval_batch_size", "out", "guard_outtype"):
            data.pop(key)
        return data


def to_plain(value: Any) -> Any:
    """JSON-ready form of configs (paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def resolve_path(value: str, root: Path) -> Path:
    if value.startswith(PACKAGE_PREFIX):
        package, _, sub = value[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{value}: Python package {package!r} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / sub
    return (root / Path(value).expanduser()).resolve()


def resolve_base(value: str, root: Path) -> Path:
    """A named base is prepared (found in its PyPI package, retyped into the user cache) and trained on as the
    very GGUF the named guard runs on; anything else is a path."""
    if registry.is_name(value, registry.BASES):
        try:
            return registry.prepare_base(value)
        except LoraGuardError as e:
            raise ConfigError(str(e)) from None
    return resolve_path(value, root)


def check_dequantizable(path: Path) -> None:
    """transformers trains on a GGUF base by dequantizing every tensor with gguf-py; a type gguf-py cannot read
    would fail deep inside that load, so name the tensor and the way out before any slow work."""
    from gguf import GGUFReader, quants

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"base {path} is not a readable GGUF file ({e})") from None
    checked: set[int] = set()
    for tensor in reader.tensors:
        if tensor.tensor_type in checked:
            continue
        try:
            quants.dequantize(tensor.data.reshape(-1, tensor.data.shape[-1])[:1], tensor.tensor_type)
        except NotImplementedError:
            raise ConfigError(
                f"base {path}: tensor {tensor.name} is of type {tensor.tensor_type.name}, which transformers cannot "
                f"dequantize to train on; re-export the model as F16 (loraguard-cli quantize {path} base-f16.gguf "
                "F16), then train on that file and run the guard on it"
            ) from None
        checked.add(tensor.tensor_type)


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Check a value against a dataclass field's type (the few types configs use); ints pass for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _check_type(where, value, inner)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return {_check_type(where, k, key_hint): _check_type(f"{where}.{k}", v, value_hint) for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path:
        hint = str
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], where: str, root: Path) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        value = _check_type(f"{where}.{key}" if where else key, value, hints[key])
        if hints[key] in (Path, Path | None) and value is not None:
            value = resolve_path(value, root)
        values[key] = value
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values
    ]
    if required:
        raise ConfigError(f"{where or 'config'}: missing {required[0]!r}")
    return cls(**values)


def build_config(data: Mapping[str, Any], root: Path) -> TrainConfig:
    """A checked TrainConfig from plain data (a parsed recipe with overrides); paths relative to `root`."""
    data = dict(data)
    specs: dict[str, list[DataSpec]] = {"train": [], "dev": []}
    sources = [(data, root, "")]
    shared = data.pop("data", None)
    if shared is not None:
        # a data recipe shared by several recipes: its [[train]]/[[dev]] tables, paths relative to that file
        path = resolve_path(_check_type("data", shared, str), root)
        sources.append((read_recipe(path), path.parent, f"{path.name}: "))
    for source, source_root, where in sources:
        unknown = sorted(set(source) - {"train", "dev"}) if where else []
        if unknown:
            raise ConfigError(f"{where}a data recipe holds only [[train]] and [[dev]] tables, not {unknown[0]!r}")
        for key in ("train", "dev"):
            items = source.pop(key, []) if not where else source.get(key, [])
            if not isinstance(items, list):
                raise ConfigError(f"{where}{key} must be a list of data tables ([[{key}]] in TOML)")
            specs[key] += [
                _build(DataSpec, {"path": item} if isinstance(item, str) else item, f"{where}{key}[{i}]", source_root)
                for i, item in enumerate(items)
            ]
    base = data.get("base")
    if isinstance(base, str):
        data["base"] = str(resolve_base(base, root))
    config: TrainConfig = _build(TrainConfig, {**data, **specs}, "", root)
    _validate(config)
    return config


def _validate(c: TrainConfig) -> None:
    if not c.train:
        raise ConfigError("no training data: give at least one [[train]] table or --train FILE")
    for spec in [*c.train, *c.dev]:
        if spec.format not in FORMATS:
            raise ConfigError(f"{spec.path}: unknown format {spec.format!r}; choose one of {', '.join(FORMATS)}")
        if spec.target not in TARGETS:
            raise ConfigError(f"{spec.path}: unknown target {spec.target!r}; choose one of {', '.join(TARGETS)}")
    positive = {
        "rank": c.rank,
        "epochs": c.epochs,
        "batch_size": c.batch_size,
        "grad_accum": c.grad_accum,
        "max_length": c.max_length,
        "buried_max_length": c.buried_max_length,
        "eval_batch_size": c.eval_batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if c.buried_rows < 0:
        raise ConfigError(f"buried_rows must be 0 (none) or more, got {c.buried_rows}")
    if c.max_steps is not None and c.max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {c.max_steps}")
    if not 0.0 <= c.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {c.dropout}")
    if not 0.0 < c.dev_fraction < 1.0:
        raise ConfigError(f"dev_fraction must be between 0 and 1, got {c.dev_fraction}")
    if not 0.0 <= c.threshold <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {c.threshold}")
    if c.activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {c.activation!r}")
    if c.activation == "alora" and not c.invocation:
        raise ConfigError(
            "activation 'alora' needs an invocation: the text appended to every input from which the adapter "
            "applies, e.g. invocation = \"<|im_end|>\\n<|im_start|>guard\\n\""
        )
    if c.activation == "lora" and c.invocation is not None:
        raise ConfigError("an invocation is only for activation = 'alora' (a plain LoRA applies to every token)")
    if c.guard_outtype not in OUTTYPES:
        # checked now rather than when the guard is written, after the whole run
        raise ConfigError(f"guard_outtype must be one of {', '.join(OUTTYPES)}, got {c.guard_outtype!r}")
    if c.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    if c.labels is not None and (not c.labels or c.labels[0] != "unsafe"):
        raise ConfigError(f"labels must start with 'unsafe', got {c.labels}")
    if not Path(c.base).exists():
        raise ConfigError(
            f"base {c.base} does not exist (an HF model directory, a GGUF file, or a named base: "
            f"{', '.join(registry.BASES)})"
        )
    if Path(c.base).suffix == ".gguf":
        check_dequantizable(Path(c.base))


def read_recipe(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
