"""Replace a guard GGUF's per-label thresholds in place (threshold calibration writes them back)."""

import math
from collections.abc import Sequence
from pathlib import Path

from gguf import GGUFValueType, GGUFWriter

from . import keys
from .atomic import atomic_output
from .errors import ConvertError
from .gguf_read import GgufFile, field_value


def set_thresholds(guard_path: Path | str, thresholds: Sequence[float]) -> Path:
    """Rewrite GUARD_PATH with `thresholds` as loraguard.thresholds; every other key/value and tensor is copied
    byte for byte. The new file replaces the old one by rename, so readers see the old file or the new one."""
    guard = GgufFile(guard_path)
    labels = guard.strings(keys.LABELS)
    if labels is None or guard.integer(keys.VERSION) is None:
        raise ConvertError(f"{guard.path} is not a guard GGUF (no {keys.LABELS} / {keys.VERSION})")
    values = [float(t) for t in thresholds]
    if len(values) != len(labels):
        raise ConvertError(f"{guard.path} has {len(labels)} labels but {len(values)} thresholds were given")
    if not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in values):
        raise ConvertError(f"thresholds are probabilities in [0, 1], got {values}")
    architecture = guard.string(keys.GENERAL_ARCHITECTURE)
    if architecture is None:
        raise ConvertError(f"{guard.path} has no {keys.GENERAL_ARCHITECTURE}")

    with atomic_output(guard.path) as tmp:
        writer = GGUFWriter(tmp, architecture)
        try:
            for key, field in guard.reader.fields.items():
                # GGUF.* are the reader's header pseudo-keys; the writer emits general.architecture itself
                if key.startswith("GGUF.") or key == keys.GENERAL_ARCHITECTURE:
                    continue
                if key == keys.GENERAL_ALIGNMENT:
                    writer.add_custom_alignment(int(field.parts[-1][0]))
                    continue
                if key == keys.THRESHOLDS:
                    continue
                sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
                writer.add_key_value(key, field_value(field), field.types[0], sub_type=sub_type)
            writer.add_key_value(keys.THRESHOLDS, values, GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32)
            for tensor in guard.tensors:
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return guard.path
