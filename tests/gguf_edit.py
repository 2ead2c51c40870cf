"""Writes edited copies of GGUF files, to build the malformed and mismatched inputs the runtime must refuse."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize

# (key, value, type) to add or replace; type None removes the key.
KeyEdit = tuple[str, Any, GGUFValueType | None]

# Tensor types numpy holds directly; the others are blocks of bytes (quantized, BF16).
NUMPY_TYPES: dict[GGMLQuantizationType, type[np.generic]] = {
    GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


class KeyValue(NamedTuple):
    name: str
    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None


class TensorSpec(NamedTuple):
    """A tensor to write: numpy-order data (values, or the raw blocks of a block type) and its GGUF type."""

    name: str
    data: np.ndarray
    type: GGMLQuantizationType


def key_value(field: Any) -> KeyValue:
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            items = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
        else:
            items = [field.parts[i].tolist()[0] for i in field.data]
        return KeyValue(field.name, items, kind, sub)
    if kind == GGUFValueType.STRING:
        return KeyValue(field.name, bytes(field.parts[field.data[0]]).decode("utf-8"), kind)
    return KeyValue(field.name, field.parts[field.data[0]].tolist()[0], kind)


def key_values(reader: GGUFReader) -> list[KeyValue]:
    """The file's key/values, without the header fields the reader reports as GGUF.*."""
    return [key_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")]


def write_gguf(dst: Path, kvs: Iterable[KeyValue], tensors: Iterable[TensorSpec]) -> Path:
    """A GGUF of these key/values (general.architecture among them) and tensors. Values of a block type are
    quantized here unless given as its raw bytes."""
    kvs = list(kvs)
    arch = next(kv.value for kv in kvs if kv.name == "general.architecture")
    writer = GGUFWriter(dst, arch)
    for kv in kvs:
        if kv.name != "general.architecture":
            writer.add_key_value(kv.name, kv.value, kv.type, sub_type=kv.sub_type)
    for name, data, qtype in tensors:
        if qtype in NUMPY_TYPES:
            data = data.astype(NUMPY_TYPES[qtype], copy=False)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            blocks = data if data.dtype == np.uint8 else quantize(data.astype(np.float32), qtype)
            writer.add_tensor(name, blocks, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def edit_gguf(
    src: Path,
    dst: Path,
    *,
    keys: Iterable[KeyEdit] = (),
    drop_prefix: str | None = None,
    tensor_data: Callable[[str, np.ndarray], np.ndarray] | None = None,
    tensor_types: Mapping[str, GGMLQuantizationType] | None = None,
    extra_tensors: Iterable[tuple[str, np.ndarray]] = (),
) -> Path:
    """A copy of src with keys edited, a key prefix dropped, tensor data rewritten (tensor_data, given each
    tensor's name and numpy data) and retyped (tensor_types, by name), and extra F32 tensors appended."""
    reader = GGUFReader(src)
    edits = {k: KeyValue(k, v, t) for k, v, t in keys}
    kvs = [
        kv for kv in key_values(reader)
        if kv.name not in edits and not (drop_prefix and kv.name.startswith(drop_prefix))
    ]
    for kv in edits.values():
        if kv.type == GGUFValueType.ARRAY:
            kv = kv._replace(sub_type=GGUFValueType.STRING if isinstance(kv.value[0], str) else GGUFValueType.FLOAT32)
        if kv.type is not None:
            kvs.append(kv)
    tensors = []
    for t in reader.tensors:
        data = np.array(t.data)
        if tensor_data is not None:
            data = tensor_data(t.name, data)
        tensors.append(TensorSpec(t.name, data, (tensor_types or {}).get(t.name, t.tensor_type)))
    tensors += [TensorSpec(name, data, GGMLQuantizationType.F32) for name, data in extra_tensors]
    return write_gguf(dst, kvs, tensors)
