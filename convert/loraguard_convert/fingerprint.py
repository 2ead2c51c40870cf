"""Base-model fingerprint and summary, computed from a base GGUF (docs/guard-format.md, "Base fingerprint")."""

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from . import keys
from .errors import ConvertError
from .gguf_read import GgufFile

FINGERPRINT_PREFIX = "fnv1a64:"
_MAGIC = b"loraguard-fingerprint-v1\0"
_FNV_OFFSET_BASIS = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


class BaseDescription(TypedDict):
    architecture: str
    n_embd: int
    n_layer: int
    name: str
    file_type: str


def fnv1a64(chunks: Iterator[bytes] | list[bytes]) -> int:
    h = _FNV_OFFSET_BASIS
    for chunk in chunks:
        for byte in chunk:
            h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def canonical_stream(base: GgufFile) -> Iterator[bytes]:
    """The byte stream that the fingerprint hashes, in order; the C++ port must produce the same bytes."""
    arch = _architecture(base)
    yield _MAGIC
    yield arch.encode("utf-8") + b"\0"
    tensors = sorted(base.tensors, key=lambda t: t.name.encode("utf-8"))
    for tensor in tensors:
        dims = [int(d) for d in tensor.shape]
        yield tensor.name.encode("utf-8") + b"\0" + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
    for token in base.string_bytes(keys.TOKENIZER_TOKENS) or []:
        yield token + b"\0"
    for tensor in tensors:
        if len(tensor.shape) == 1 and tensor.tensor_type == GGMLQuantizationType.F32:
            # Little-endian whatever the file's byte order, so a big-endian GGUF of the same model agrees.
            yield np.ascontiguousarray(tensor.data, dtype="<f4").tobytes()


def fingerprint_of(base: GgufFile) -> str:
    _require_base_model(base)
    return f"{FINGERPRINT_PREFIX}{fnv1a64(canonical_stream(base)):016x}"


def base_fingerprint(path: Path | str) -> str:
    """Fingerprint of a base model GGUF, e.g. `fnv1a64:0123456789abcdef`."""
    return fingerprint_of(GgufFile(path))


def describe(base: GgufFile) -> BaseDescription:
    _require_base_model(base)
    arch = _architecture(base)
    n_embd = base.integer(f"{arch}.embedding_length")
    n_layer = base.integer(f"{arch}.block_count")
    if n_embd is None or n_layer is None:
        raise ConvertError(f"{base.path} lacks {arch}.embedding_length or {arch}.block_count: not a base model GGUF")
    return BaseDescription(
        architecture=arch,
        n_embd=n_embd,
        n_layer=n_layer,
        name=base.string(keys.GENERAL_NAME) or "",
        file_type=_file_type_name(base.integer(keys.GENERAL_FILE_TYPE)),
    )


def describe_base(path: Path | str) -> BaseDescription:
    """Architecture, hidden width, layer count, general.name and file type of a base model GGUF."""
    return describe(GgufFile(path))


def _file_type_name(file_type: int | None) -> str:
    if file_type is None:
        return "unknown"
    try:
        return LlamaFileType(file_type).name
    except ValueError:
        return str(file_type)


def _architecture(gguf_file: GgufFile) -> str:
    arch = gguf_file.string(keys.GENERAL_ARCHITECTURE)
    if not arch:
        raise ConvertError(f"{gguf_file.path} has no general.architecture")
    return arch


def _require_base_model(base: GgufFile) -> None:
    general_type = base.string(keys.GENERAL_TYPE)
    if general_type == "adapter":
        raise ConvertError(f"{base.path} is an adapter, not a base model GGUF")
    split_count = base.integer(keys.SPLIT_COUNT)
    if split_count is not None and split_count > 1:
        # A shard holds only some tensors, so its fingerprint would not identify the model.
        raise ConvertError(f"{base.path} is one shard of a split GGUF; merge it first (llama-gguf-split --merge)")
