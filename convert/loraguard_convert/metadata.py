"""Rewrite a guard GGUF's metadata in place: thresholds from calibration, the base types a guard was measured on."""

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from . import keys
from .atomic import atomic_output
from .errors import ConvertError
from .gguf_read import GgufFile, KeyValue, write_copy

# llama.cpp's tensor type names as the runtime reports a model's file type (F16, Q8_0, Q4_K_M, ...)
_TYPE_NAME = re.compile(r"^(F32|F16|BF16|Q[0-9]_[0-9A-Z_]+|IQ[0-9]_[0-9A-Z_]+|TQ[0-9]_[0-9])$")


def _open_guard(guard_path: Path | str) -> GgufFile:
    guard = GgufFile(guard_path)
    if guard.strings(keys.LABELS) is None or guard.integer(keys.VERSION) is None:
        raise ConvertError(f"{guard.path} is not a guard GGUF (no {keys.LABELS} / {keys.VERSION})")
    return guard


def _rewrite(guard: GgufFile, key: str, values: list[Any], sub_type: GGUFValueType) -> Path:
    """Write GUARD with the array KEY set to `values` (removed when empty: GGUF has no empty arrays); the new
    file replaces the old one by rename, so readers see the old file or the new one."""
    architecture = guard.string(keys.GENERAL_ARCHITECTURE)
    if architecture is None:
        raise ConvertError(f"{guard.path} has no {keys.GENERAL_ARCHITECTURE}")
    kvs: list[KeyValue] = [(key, values, GGUFValueType.ARRAY, sub_type)] if values else []
    with atomic_output(guard.path) as tmp:
        write_copy(guard, tmp, architecture, kvs, drop=[key])
    return guard.path


def set_thresholds(guard_path: Path | str, thresholds: Sequence[float]) -> Path:
    """Replace the per-label thresholds (loraguard.thresholds)."""
    guard = _open_guard(guard_path)
    labels = guard.strings(keys.LABELS) or []
    values = [float(t) for t in thresholds]
    if len(values) != len(labels):
        raise ConvertError(f"{guard.path} has {len(labels)} labels but {len(values)} thresholds were given")
    if not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in values):
        raise ConvertError(f"thresholds are probabilities in [0, 1], got {values}")
    return _rewrite(guard, keys.THRESHOLDS, values, GGUFValueType.FLOAT32)


def set_measured_types(guard_path: Path | str, types: Sequence[str]) -> Path:
    """Replace the base tensor types the guard's accuracy was measured on (loraguard.base.measured_types); the
    runtime warns when the guard runs on a type not listed. An empty list removes the key."""
    guard = _open_guard(guard_path)
    names = [t.upper() for t in types]
    bad = [t for t in names if not _TYPE_NAME.match(t)]
    if bad:
        raise ConvertError(f"{bad[0]!r} is not a llama.cpp tensor type name (F32, F16, BF16, Q8_0, Q4_K_M, ...)")
    return _rewrite(guard, keys.BASE_MEASURED_TYPES, list(dict.fromkeys(names)), GGUFValueType.STRING)
