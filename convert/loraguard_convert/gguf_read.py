"""Typed, error-checked access to GGUF key/values through the PyPI `gguf` package's reader."""

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFReader, GGUFValueType, GGUFWriter, ReaderField, ReaderTensor

from . import keys
from .errors import ConvertError

# (key, value, type, array element type): a key/value to write
KeyValue = tuple[str, Any, GGUFValueType, GGUFValueType | None]

_INTEGER_TYPES = frozenset(
    {
        GGUFValueType.UINT8,
        GGUFValueType.INT8,
        GGUFValueType.UINT16,
        GGUFValueType.INT16,
        GGUFValueType.UINT32,
        GGUFValueType.INT32,
        GGUFValueType.UINT64,
        GGUFValueType.INT64,
    }
)
_FLOAT_TYPES = frozenset({GGUFValueType.FLOAT32, GGUFValueType.FLOAT64})


class GgufFile:
    """A GGUF file opened read-only (memory-mapped); getters return None for absent keys."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConvertError(f"{self.path}: no such file")
        try:
            self.reader = GGUFReader(self.path, "r")
        # The reader fails on malformed files with whatever numpy/struct raise; all of them mean "not GGUF".
        except Exception as e:
            raise ConvertError(f"{self.path} is not a readable GGUF file: {e}") from e

    @property
    def tensors(self) -> list[ReaderTensor]:
        return list(self.reader.tensors)

    def keys(self) -> list[str]:
        return list(self.reader.fields)

    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def field(self, key: str) -> ReaderField | None:
        return self.reader.fields.get(key)

    def _scalar(self, key: str, allowed: frozenset[GGUFValueType], what: str) -> ReaderField | None:
        field = self.field(key)
        if field is None:
            return None
        if not field.types or field.types[0] not in allowed:
            raise ConvertError(f"{self.path}: key {key} has type {_type_name(field)}, expected {what}")
        return field

    def _array(self, key: str, allowed: frozenset[GGUFValueType], what: str) -> ReaderField | None:
        field = self.field(key)
        if field is None:
            return None
        # A nested array has more than two entries in types; none of our keys are nested.
        if len(field.types) != 2 or field.types[0] != GGUFValueType.ARRAY or field.types[1] not in allowed:
            raise ConvertError(f"{self.path}: key {key} has type {_type_name(field)}, expected an array of {what}")
        return field

    def string(self, key: str) -> str | None:
        field = self._scalar(key, frozenset({GGUFValueType.STRING}), "string")
        return None if field is None else _decode(self.path, key, field.parts[-1].tobytes())

    def integer(self, key: str) -> int | None:
        field = self._scalar(key, _INTEGER_TYPES, "integer")
        return None if field is None else int(field.parts[-1][0])

    def number(self, key: str) -> float | None:
        field = self._scalar(key, _FLOAT_TYPES, "float")
        return None if field is None else float(field.parts[-1][0])

    def boolean(self, key: str) -> bool | None:
        field = self._scalar(key, frozenset({GGUFValueType.BOOL}), "bool")
        return None if field is None else bool(field.parts[-1][0])

    def string_bytes(self, key: str) -> list[bytes] | None:
        """Raw bytes of each string in an array (tokenizer vocabularies need not be valid UTF-8)."""
        field = self._array(key, frozenset({GGUFValueType.STRING}), "strings")
        return None if field is None else [field.parts[i].tobytes() for i in field.data]

    def strings(self, key: str) -> list[str] | None:
        raw = self.string_bytes(key)
        return None if raw is None else [_decode(self.path, key, b) for b in raw]

    def integers(self, key: str, allowed: frozenset[GGUFValueType] = _INTEGER_TYPES) -> list[int] | None:
        """An array of integers; `allowed` narrows the element types accepted (llama.cpp's aLoRA key: UINT32)."""
        field = self._array(key, allowed, " or ".join(sorted(t.name for t in allowed)))
        return None if field is None else [int(v) for i in field.data for v in np.asarray(field.parts[i]).reshape(-1)]

    def floats(self, key: str) -> npt.NDArray[np.float32] | None:
        field = self._array(key, _FLOAT_TYPES, "floats")
        if field is None:
            return None
        if not field.data:
            return np.zeros(0, dtype=np.float32)
        # Readers differ in whether an array is one part or one part per element; concatenating covers both.
        return np.concatenate([np.asarray(field.parts[i]).reshape(-1) for i in field.data]).astype(np.float32)


def field_value(field: ReaderField) -> Any:
    """A key/value as GGUFWriter takes it back; strings stay bytes so that nothing is re-encoded."""
    main_type = field.types[0]
    if main_type == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [field.parts[i].tobytes() for i in field.data]
        return [v for i in field.data for v in field.parts[i].tolist()]
    if main_type == GGUFValueType.STRING:
        return field.parts[-1].tobytes()
    return field.parts[-1].tolist()[0]


def _type_name(field: ReaderField) -> str:
    return "[".join(t.name for t in field.types) + "]" * (len(field.types) - 1) if field.types else "unknown"


def _decode(path: Path, key: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConvertError(f"{path}: key {key} is not valid UTF-8") from e


def write_copy(
    source: GgufFile, path: Path, architecture: str, kvs: list[KeyValue], drop: Collection[str] = ()
) -> None:
    """Write SOURCE's key/values and tensors to PATH with `kvs` added (replacing keys of the same name) and the
    keys in `drop` left out; the tensors and every other key/value are copied byte for byte."""
    replaced = {key for key, *_ in kvs} | set(drop)
    writer = GGUFWriter(path, architecture)
    try:
        for key, field in source.reader.fields.items():
            # GGUF.* are the reader's own header pseudo-keys; the writer emits general.architecture itself.
            if key.startswith("GGUF.") or key == keys.GENERAL_ARCHITECTURE or key in replaced:
                continue
            if key == keys.GENERAL_ALIGNMENT:
                writer.add_custom_alignment(int(field.parts[-1][0]))
                continue
            if len(field.types) > 2:
                raise ConvertError(f"{source.path} has a nested array {key}, which cannot be copied")
            sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field_value(field), field.types[0], sub_type=sub_type)
        for key, value, vtype, sub_type in kvs:
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
        for tensor in source.tensors:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
