"""Writes edited copies of GGUF files, to build the malformed and mismatched inputs the runtime must refuse."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

# (key, value, type) to add or replace; type None removes the key.
KeyEdit = tuple[str, Any, GGUFValueType | None]


def _value(field: Any) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            items = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
        else:
            items = [field.parts[i].tolist()[0] for i in field.data]
        return items, kind, sub
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8"), kind, None
    return field.parts[field.data[0]].tolist()[0], kind, None


def edit_gguf(
    src: Path,
    dst: Path,
    *,
    keys: Iterable[KeyEdit] = (),
    drop_prefix: str | None = None,
    tensor_data: Callable[[str, np.ndarray], np.ndarray] | None = None,
    extra_tensors: Iterable[tuple[str, np.ndarray]] = (),
) -> Path:
    reader = GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(dst, arch)
    edits = {k: (v, t) for k, v, t in keys}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in edits:
            continue
        if drop_prefix and name.startswith(drop_prefix):
            continue
        value, kind, sub = _value(field)
        writer.add_key_value(name, value, kind, sub_type=sub)
    for name, (value, kind) in edits.items():
        if kind is not None:
            sub = None
            if kind == GGUFValueType.ARRAY:
                sub = GGUFValueType.STRING if isinstance(value[0], str) else GGUFValueType.FLOAT32
            writer.add_key_value(name, value, kind, sub_type=sub)
    for t in reader.tensors:
        data = np.array(t.data)
        if tensor_data is not None:
            data = tensor_data(t.name, data)
        writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    for name, data in extra_tensors:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
