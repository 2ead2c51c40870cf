"""Fuzzer for guard files: mutated copies of a real guard GGUF through guard load and classify.

Each case applies one to three mutations to a real guard file, chosen by a generator seeded with (seed, case):
raw byte flips, interesting values, truncations, extensions and splices anywhere; the same aimed at the GGUF
structure (header counts, key/value lengths, types and values, tensor-info names, dimensions, types and offsets,
tensor data); and rewrites through the gguf package that keep the file well formed but change what it says
(keys dropped or retyped, labels, thresholds, head, templates, pooling, tensor shapes, types, names and values).

A child process loads the base model once and runs each case through the C API as the Python extension exposes
it: GuardPath(model, path), its labels, thresholds, warning and metadata, then a classify of a prompt and of a
prompt with a response. A crash or hang kills only the child: the case is reported with its seed and number (and
the native stderr of that case) and a fresh child takes the next case.

A case passes when the guard loads and classifies, or when it fails with a LoraGuardError whose status is not
LG_ERR_INTERNAL. Anything else is a finding: a signal, a hang, another exception, an internal error, logits of
the wrong shape.

    python tests/fuzz_guard.py --stories --cases 100000 --seed 1   # the suite's stories260K guard, ~50 cases/s
    python tests/fuzz_guard.py --cases 20000                       # the shipped minilm guard on its prepared base
    python tests/fuzz_guard.py --base B.gguf --guard G.gguf --cases 2000 --seed 1
    python tests/fuzz_guard.py --seed 1 --case 1234 --keep c.gguf # rebuild one case, keep it, run it once
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from tqdm import tqdm

from gguf_edit import NUMPY_TYPES, KeyValue, TensorSpec, key_value, write_gguf

LG_ERR_INTERNAL = 8
PROMPT = "How do I bake bread?"
RESPONSE = "Mix flour, water, salt and yeast."
# A load plus two classifies of a tiny text take well under a second; a minute means a hang.
CASE_TIMEOUT_S = 60.0

# ----------------------------------------------------------------------------------------------------------------
# the guard file's layout, read once


@dataclasses.dataclass(frozen=True)
class Region:
    """One field of the GGUF header, key/value section or tensor index, where it lies in the file."""

    offset: int
    size: int
    kind: str  # count, version, key_len, key, kv_type, str_len, str, arr_type, arr_len, value, name_len, name,
    #            n_dims, ne, tensor_type, tensor_offset
    owner: str  # the key or tensor it belongs to
    dtype: str  # numpy dtype string of one element: <u8, <u4, <f4, |u1, ...


@dataclasses.dataclass(frozen=True)
class Tensor:
    spec: TensorSpec  # F16 data as float32, so that rewrites can put any value in
    data_offset: int  # in the file
    n_bytes: int


@dataclasses.dataclass(frozen=True)
class GuardLayout:
    raw: bytes
    regions: tuple[Region, ...]
    data_offset: int  # where tensor data starts
    kvs: tuple[KeyValue, ...]
    tensors: tuple[Tensor, ...]


def _kv_part_kinds(field: Any) -> list[str]:
    kinds = ["key_len", "key", "kv_type"]
    main = field.types[0]
    if main == GGUFValueType.STRING:
        return [*kinds, "str_len", "str"]
    if main != GGUFValueType.ARRAY:
        return [*kinds, "value"]
    kinds += ["arr_type", "arr_len"]
    if field.types[-1] == GGUFValueType.STRING:
        return kinds + ["str_len", "str"] * len(field.data)
    return kinds + ["value"] * len(field.data)


def _regions(field: Any, kinds: list[str], owner: str) -> Iterator[Region]:
    offset = field.offset
    for part, kind in zip(field.parts, kinds, strict=True):
        yield Region(offset, part.nbytes, kind, owner, part.dtype.str)
        offset += part.nbytes


def read_layout(path: Path) -> GuardLayout:
    reader = GGUFReader(path)
    regions: list[Region] = [Region(0, 4, "magic", "header", "|u1")]
    kvs: list[KeyValue] = []
    headers = {"GGUF.version": "version", "GGUF.tensor_count": "count", "GGUF.kv_count": "count"}
    for name, field in reader.fields.items():
        if name in headers:
            regions.append(Region(field.offset, field.parts[0].nbytes, headers[name], name, field.parts[0].dtype.str))
            continue
        regions.extend(_regions(field, _kv_part_kinds(field), name))
        kvs.append(key_value(field))
    tensors: list[Tensor] = []
    for t in reader.tensors:
        kinds = ["name_len", "name", "n_dims", "ne", "tensor_type", "tensor_offset"]
        regions.extend(_regions(t.field, kinds, t.name))
        data = np.array(t.data)
        if t.tensor_type == GGMLQuantizationType.F16:
            data = data.astype(np.float32)
        tensors.append(Tensor(TensorSpec(t.name, data, t.tensor_type), int(t.data_offset), int(t.n_bytes)))
    return GuardLayout(path.read_bytes(), tuple(regions), int(reader.data_offset), tuple(kvs), tuple(tensors))


# ----------------------------------------------------------------------------------------------------------------
# mutations: each takes the generator and the file (bytes, or the parsed key/values and tensors) and says what it did

U64 = (0, 1, 2**31, 2**32, 2**32 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1)
U32 = (0, 1, 2**31 - 1, 2**31, 2**32 - 1)
FLOATS = (float("nan"), float("inf"), float("-inf"), 3.0e38, -3.0e38, 0.0, -0.0, 1.0e-45, 2.0, -1.0, 0.5)
STRING_BYTES = (0x00, 0xFF, 0xC0, 0x80, 0xE2, ord("{"), ord("}"), ord("<"), ord("|"), ord("\n"))


# Mutations stack, and an earlier one may have cut or rewritten the file: offsets are clamped to what is there.
def _in_metadata(rng: random.Random, buf: bytearray, layout: GuardLayout) -> int:
    return rng.randrange(0, max(1, min(layout.data_offset, len(buf))))


def _any_offset(rng: random.Random, buf: bytearray) -> int:
    return rng.randrange(0, max(1, len(buf)))


def flip_bits(rng: random.Random, buf: bytearray, layout: GuardLayout) -> str:
    if not buf:
        return "nothing to flip"
    n = rng.choice((1, 1, 1, 2, 4, 8, 32))
    in_meta = rng.random() < 0.75
    at = []
    for _ in range(n):
        pos = _in_metadata(rng, buf, layout) if in_meta else _any_offset(rng, buf)
        buf[pos] ^= 1 << rng.randrange(8)
        at.append(pos)
    return f"flip {n} bit(s) at {', '.join(hex(p) for p in at[:4])}"


def set_word(rng: random.Random, buf: bytearray, layout: GuardLayout) -> str:
    width = rng.choice((1, 2, 4, 8))
    pos = max(0, min(_in_metadata(rng, buf, layout), len(buf) - width))
    value = rng.choice((*U64, rng.getrandbits(64))) % (1 << (8 * width))
    buf[pos : pos + width] = value.to_bytes(width, "little")
    return f"set {width} byte(s) at {pos:#x} to {value:#x}"


def truncate(rng: random.Random, buf: bytearray, layout: GuardLayout) -> str:
    pos = _in_metadata(rng, buf, layout) if rng.random() < 0.6 else _any_offset(rng, buf)
    del buf[pos:]
    return f"truncate at {pos:#x}"


def extend(rng: random.Random, buf: bytearray, layout: GuardLayout) -> str:
    n = rng.choice((1, 7, 32, 4096, rng.randrange(1, 65536)))
    buf.extend(rng.randbytes(n) if rng.random() < 0.5 else bytes(n))
    return f"append {n} byte(s)"


def splice(rng: random.Random, buf: bytearray, layout: GuardLayout) -> str:
    pos = _in_metadata(rng, buf, layout)
    n = rng.choice((1, 4, 8, 16, 64))
    how = rng.randrange(3)
    if how == 0:
        buf[pos:pos] = rng.randbytes(n)
        return f"insert {n} random byte(s) at {pos:#x}"
    if how == 1:
        del buf[pos : pos + n]
        return f"delete {n} byte(s) at {pos:#x}"
    src = _in_metadata(rng, buf, layout)
    buf[pos:pos] = buf[src : src + n]
    return f"copy {n} byte(s) from {src:#x} to {pos:#x}"


def _interesting_for(rng: random.Random, region: Region, current: int) -> int:
    if region.kind in ("kv_type", "arr_type"):
        return rng.choice((rng.randrange(0, 16), 9, 8, 2**32 - 1))
    if region.kind == "tensor_type":
        return rng.choice((rng.randrange(0, 48), 0, 1, 8, 24, 26, 30, 2**31))
    if region.kind == "n_dims":
        return rng.choice((0, 1, 2, 3, 4, 5, 2**32 - 1))
    if region.kind == "version":
        return rng.choice((0, 1, 2, 3, 4, 2**32 - 1))
    near = (current - 1, current + 1, current * 2, current // 2, current + 32, current - 32)
    pool = U64 if region.dtype.endswith("8") else U32
    return rng.choice((*near, *pool, rng.getrandbits(64)))


def set_field(rng: random.Random, buf: bytearray, layout: GuardLayout) -> str:
    region = rng.choice(layout.regions)
    if region.offset + region.size > len(buf):
        return "no field in range"
    if region.kind in ("key", "str", "name", "magic"):
        if region.size == 0:
            return f"empty {region.kind} of {region.owner}"
        pos = region.offset + rng.randrange(region.size)
        byte = rng.choice(STRING_BYTES)
        buf[pos] = byte
        return f"{region.kind} of {region.owner}: byte {pos - region.offset} = {byte:#x}"
    # a dimensions list (ne) or an array value: mutate one element
    width = int(region.dtype[2:])
    pos = region.offset + width * rng.randrange(max(1, region.size // width))
    if region.dtype[1] == "f":
        fmt = "<f" if width == 4 else "<d"
        value: float = rng.choice(FLOATS)
        struct.pack_into(fmt, buf, pos, value)
        return f"{region.kind} of {region.owner} = {value}"
    if region.dtype[1] == "b" and width == 1:  # a bool
        buf[pos] = rng.choice((0, 1, 2, 255))
        return f"bool {region.owner} = {buf[pos]}"
    current = int.from_bytes(buf[pos : pos + width], "little")
    new = _interesting_for(rng, region, current) % (1 << (8 * width))
    buf[pos : pos + width] = new.to_bytes(width, "little")
    return f"{region.kind} of {region.owner}: {current} -> {new}"


def poison_data(rng: random.Random, buf: bytearray, layout: GuardLayout) -> str:
    t = rng.choice(layout.tensors)
    if t.data_offset + t.n_bytes > len(buf):
        return "no tensor data in range"
    n = rng.choice((1, 1, 4, t.n_bytes // 4))
    if t.spec.type == GGMLQuantizationType.F32 and rng.random() < 0.7:
        for _ in range(n):
            struct.pack_into("<f", buf, t.data_offset + 4 * rng.randrange(t.n_bytes // 4), rng.choice(FLOATS))
        return f"{n} float(s) of {t.spec.name} set to specials"
    for _ in range(n):
        buf[t.data_offset + rng.randrange(t.n_bytes)] = rng.randrange(256)
    return f"{n} random byte(s) in the data of {t.spec.name}"


ByteMutation = Callable[[random.Random, bytearray, GuardLayout], str]
BYTE_MUTATIONS: tuple[tuple[ByteMutation, int], ...] = (
    (flip_bits, 4), (set_word, 2), (truncate, 1), (extend, 1), (splice, 1), (set_field, 6), (poison_data, 1),
)


@dataclasses.dataclass
class Rewrite:
    """A guard file as key/values and tensors, for mutations that keep the file well formed."""

    kvs: list[KeyValue]
    tensors: list[TensorSpec]

    def get(self, key: str) -> KeyValue | None:
        return next((kv for kv in self.kvs if kv.name == key), None)

    def put(self, kv: KeyValue) -> None:
        self.kvs = [k for k in self.kvs if k.name != kv.name] + [kv]


S, A, F32, U32T = GGUFValueType.STRING, GGUFValueType.ARRAY, GGUFValueType.FLOAT32, GGUFValueType.UINT32
RETYPES: tuple[tuple[Any, GGUFValueType, GGUFValueType | None], ...] = (
    (7, U32T, None), (-1, GGUFValueType.INT32, None), (2**40, GGUFValueType.UINT64, None),
    (float("nan"), F32, None), (0.5, GGUFValueType.FLOAT64, None), ("x", S, None), (True, GGUFValueType.BOOL, None),
    (["a", "b"], A, S), ([0.5, 0.5], A, F32), ([1, 2], A, U32T), ([], A, F32), ([], A, S), ([1], A, GGUFValueType.INT8),
)


def drop_key(rng: random.Random, rw: Rewrite) -> str:
    kv = rng.choice([kv for kv in rw.kvs if kv.name != "general.architecture"])  # the writer needs it
    rw.kvs.remove(kv)
    return f"drop key {kv.name}"


def retype_key(rng: random.Random, rw: Rewrite) -> str:
    kv = rng.choice([kv for kv in rw.kvs if kv.name != "general.architecture"])
    value, vtype, sub = rng.choice(RETYPES)
    rw.put(KeyValue(kv.name, value, vtype, sub))
    return f"{kv.name} = {value!r} ({vtype.name}{'/' + sub.name if sub else ''})"


def _floats(rng: random.Random, values: list[float]) -> tuple[list[float], str]:
    how = rng.randrange(4)
    out = list(values)
    if how == 0 and out:
        i = rng.randrange(len(out))
        out[i] = rng.choice(FLOATS)
        return out, f"[{i}] = {out[i]}"
    if how == 1:
        return [*out, 0.5], "one more value"
    if how == 2:
        return out[:-1], "one value fewer"
    return [rng.choice(FLOATS)] * len(out), "all values special"


def edit_head(rng: random.Random, rw: Rewrite) -> str:
    key = rng.choice(("loraguard.thresholds", "loraguard.head.weight", "loraguard.head.bias"))
    kv = rw.get(key)
    if kv is None or kv.type != A:
        return f"{key} absent"
    values, what = _floats(rng, kv.value)
    rw.put(KeyValue(key, values, A, F32))
    return f"{key}: {what}"


def edit_labels(rng: random.Random, rw: Rewrite) -> str:
    kv = rw.get("loraguard.labels")
    if kv is None or kv.type != A or not kv.value:
        return "labels absent"
    labels = list(kv.value)
    choices: list[tuple[str, list[str]]] = [
        ("duplicate", [labels[0], *labels[:-1]]),
        ("empty label", ["", *labels[1:]]),
        ("one fewer", labels[:-1]),
        ("one more", [*labels, "extra"]),
        ("long label", ["x" * 100000, *labels[1:]]),
        ("many labels", [f"l{i}" for i in range(10000)]),
        ("no labels", []),
    ]
    what, new = rng.choice(choices)
    rw.put(KeyValue("loraguard.labels", new, A, S))
    return f"labels: {what}"


TEMPLATE_TEXTS = (
    "", "{prompt}", "{response}", "{prompt}{response}", "user: {prompt}", "{prompt" * 100, "{prompt}" * 2000,
    "<s>{prompt}</s>", "<|im_start|>user\n{prompt}<|im_end|>", "[CLS]{prompt}[SEP]{response}[SEP]",
    "\u00e9\U0001f600{prompt}",
    "x" * 200000 + "{prompt}{response}",
)


def edit_template(rng: random.Random, rw: Rewrite) -> str:
    key = rng.choice(("loraguard.template.prompt", "loraguard.template.pair"))
    text = rng.choice(TEMPLATE_TEXTS)
    rw.put(KeyValue(key, text, S, None))
    if rng.random() < 0.5:
        rw.put(KeyValue("loraguard.template.parse_special", True, GGUFValueType.BOOL, None))
    return f"{key} = {text[:40]!r}"


STRING_KEYS: dict[str, tuple[str, ...]] = {
    "loraguard.pooling": ("mean", "cls", "last", "", "LAST", "max"),
    "general.type": ("model", "adapter", ""),
    "adapter.type": ("lora", "control_vector", ""),
    "loraguard.base.architecture": ("bert", "llama", "qwen2", ""),
    "loraguard.base.fingerprint": ("", "fnv1a64:0000000000000000"),
    "loraguard.base.name": ("", "x" * 10000),
}
NUMBER_KEYS: dict[str, tuple[Any, ...]] = {
    "loraguard.version": (0, 1, 2, 99, 2**32 - 1),
    "loraguard.base.n_embd": (0, 1, 63, 64, 65, 384, 2**32 - 1),
    "loraguard.base.n_layer": (0, 1, 5, 6, 7, 2**32 - 1),
    "adapter.lora.alpha": (0.0, -16.0, 1e30, float("nan"), float("inf")),
    "general.alignment": (1, 3, 8, 64, 0, 2**31),
}


def edit_value(rng: random.Random, rw: Rewrite) -> str:
    if rng.random() < 0.5:
        key = rng.choice(list(STRING_KEYS))
        value: Any = rng.choice(STRING_KEYS[key])
        rw.put(KeyValue(key, value, S, None))
        return f"{key} = {str(value)[:40]!r}"
    key = rng.choice(list(NUMBER_KEYS))
    value = rng.choice(NUMBER_KEYS[key])
    rw.put(KeyValue(key, value, F32 if isinstance(value, float) else U32T, None))
    return f"{key} = {value}"


def add_key(rng: random.Random, rw: Rewrite) -> str:
    choices = (
        KeyValue("adapter.alora.invocation_tokens", [1, 2], A, U32T),
        KeyValue("adapter.alora.invocation_tokens", [1.0], A, F32),
        KeyValue("adapter.alora.invocation_tokens", [2**32 - 1], A, U32T),
        KeyValue("loraguard.activation", "alora", S, None),
        KeyValue("loraguard.alora.invocation", "x", S, None),
        KeyValue("loraguard.base.measured_types", ["F16"], A, S),
        KeyValue("loraguard.base.measured_types", [], A, S),
        KeyValue("loraguard.extra", "x", S, None),
        KeyValue("loraguard.head.extra", [1.0] * 1000, A, F32),
    )
    kv = rng.choice(choices)
    rw.put(kv)
    return f"add {kv.name} = {str(kv.value)[:40]}"


RETENSOR_TYPES = (*NUMPY_TYPES, GGMLQuantizationType.BF16, GGMLQuantizationType.Q8_0)


def edit_tensor(rng: random.Random, rw: Rewrite) -> str:
    i = rng.randrange(len(rw.tensors))
    t = rw.tensors[i]
    data = t.data
    how = rng.randrange(9)
    if how == 0:
        rw.tensors[i] = t._replace(data=np.stack([data, data]))
        return f"{t.name}: 3-D"
    if how == 1:
        rw.tensors[i] = t._replace(data=np.ascontiguousarray(data.T))
        return f"{t.name}: transposed"
    if how == 2:
        rw.tensors[i] = t._replace(data=data.reshape(-1))
        return f"{t.name}: 1-D"
    if how == 3:
        cut = rng.choice((0, 1, len(data) - 1))
        rw.tensors[i] = t._replace(data=np.ascontiguousarray(data[:cut]))
        return f"{t.name}: {cut} rows"
    if how == 4:
        rw.tensors[i] = t._replace(type=rng.choice(RETENSOR_TYPES))
        return f"{t.name}: type {rw.tensors[i].type.name}"
    if how == 5:
        poisoned = data.astype(np.float32)
        poisoned.flat[rng.randrange(poisoned.size)] = rng.choice(FLOATS)
        rw.tensors[i] = t._replace(data=poisoned)
        return f"{t.name}: a special value"
    if how == 6:
        del rw.tensors[i]
        return f"drop tensor {t.name}"
    if how == 7:
        new_name = rng.choice((
            t.name.removesuffix(".lora_a").removesuffix(".lora_b"), "output.weight.lora_a", "token_embd.weight.lora_b",
            "blk.0.attn_norm.weight", "x" * 63, t.name.replace("blk.0", "blk.99"), ".lora_a", t.name + ".lora_a",
        ))
        if any(other.name == new_name for other in rw.tensors):
            return f"rename {t.name}: name taken"
        rw.tensors[i] = t._replace(name=new_name)
        return f"rename {t.name} -> {new_name}"
    other = rw.tensors[rng.randrange(len(rw.tensors))]
    rw.tensors[i] = other._replace(name=t.name)
    return f"{t.name}: data, shape and type of {other.name}"


Rewriting = Callable[[random.Random, Rewrite], str]
REWRITES: tuple[tuple[Rewriting, int], ...] = (
    (drop_key, 1), (retype_key, 2), (edit_head, 2), (edit_labels, 2), (edit_template, 2), (edit_value, 3),
    (add_key, 1), (edit_tensor, 4),
)


def _pick(rng: random.Random, table: tuple[tuple[Any, int], ...]) -> Any:
    return rng.choices([f for f, _ in table], weights=[w for _, w in table])[0]


def make_case(layout: GuardLayout, seed: int, case: int, path: Path) -> list[str]:
    """Writes case number `case` of run `seed` to path; returns what was done. Same (seed, case), same file."""
    rng = random.Random(f"loraguard-fuzz:{seed}:{case}")
    done: list[str] = []
    if rng.random() < 0.4:
        rw = Rewrite(list(layout.kvs), [t.spec for t in layout.tensors])
        for _ in range(rng.choice((1, 1, 2))):
            done.append(_pick(rng, REWRITES)(rng, rw))
        try:
            write_gguf(path, rw.kvs, rw.tensors)
        except Exception as e:  # the gguf writer refuses some combinations (a shape its type cannot hold)
            done.append(f"(the gguf writer refused: {type(e).__name__}: {e}; raw mutation instead)")
            path.write_bytes(layout.raw)
        buf = bytearray(path.read_bytes())
        n_raw = rng.choice((0, 0, 1))
    else:
        buf = bytearray(layout.raw)
        n_raw = rng.choice((1, 1, 1, 2, 3))
    for _ in range(n_raw):
        done.append(_pick(rng, BYTE_MUTATIONS)(rng, buf, layout))
    path.write_bytes(bytes(buf))
    return done


# ----------------------------------------------------------------------------------------------------------------
# the child that runs cases, and the parent's side of it


Outcome = dict[str, str]  # kind: ok, error (a clean LoraGuardError) or finding; detail; stderr for a crash


def outcome_of(action: Callable[[], Outcome]) -> Outcome:
    """What action did, its exceptions sorted into clean errors and findings."""
    from loraguard_cpp import LoraGuardError

    try:
        return action()
    except LoraGuardError as e:
        if e.status == LG_ERR_INTERNAL:
            return {"kind": "finding", "detail": f"internal error: {e}"}
        return {"kind": "error", "detail": f"{type(e).__name__}: {e}"}
    except Exception as e:
        return {"kind": "finding", "detail": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}


def run_guard(model: Any, path: str) -> Outcome:
    """One case in the child: load, read everything a caller reads, classify twice."""
    from loraguard_cpp import _native

    guard = _native.GuardPath(model, path, n_ctx=64, n_threads=1)
    try:
        n_labels = len(guard.labels)
        _ = (guard.thresholds, guard.warning, guard.meta("base.name"), guard.lora_rank, guard.n_params)
        logits = np.concatenate([guard.classify([PROMPT]), guard.classify([PROMPT], [RESPONSE])])
    finally:
        guard.close()
    if logits.shape != (2, n_labels):
        return {"kind": "finding", "detail": f"logits of shape {logits.shape} for {n_labels} labels"}
    return {"kind": "ok", "detail": "loaded and classified" + (", NaN" if np.isnan(logits).any() else "")}


def run_guard_class(base: str, path: str) -> Outcome:
    """One case through the Python Guard class, as an application uses it (its own model load included)."""
    from loraguard_cpp import Guard

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "measured on other base types" is a warning, not a failure
        with Guard(base, path, n_threads=1, n_ctx=64) as guard:
            results = [guard.classify(PROMPT), guard.classify(PROMPT, RESPONSE)]
    scores = np.array([[r.scores[label] for label in guard.labels] for r in results])
    return {"kind": "ok", "detail": "loaded and classified" + (", NaN" if np.isnan(scores).any() else "")}


# How a worker runs a case: the extension's GuardPath on the model it loaded once, or the Guard class.
APIS = ("native", "guard")


def worker_main(base: str, api: str) -> None:
    """Child: loads the base once and says how that went, then answers one line per guard path read from stdin."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever native code prints goes to the case log, never into the protocol
    from loraguard_cpp import _native

    model = None

    def load() -> Outcome:
        nonlocal model
        model = _native.Model(base)
        _ = (model.name, model.architecture, model.fingerprint, model.file_type, model.n_vocab)
        return {"kind": "ok", "detail": "model loaded"}

    loaded = outcome_of(load)
    protocol.write(json.dumps(loaded) + "\n")
    if model is None:
        return
    for line in sys.stdin:
        sys.stderr.flush()
        with contextlib.suppress(OSError):  # stderr may be a terminal
            os.ftruncate(2, 0)
            os.lseek(2, 0, os.SEEK_SET)
        path = line.rstrip("\n")
        if api == "native":
            case = functools.partial(run_guard, model, path)
        else:
            case = functools.partial(run_guard_class, base, path)
        protocol.write(json.dumps(outcome_of(case)) + "\n")


class GuardWorker:
    """The parent's handle on a worker child; restarts it after a crash or hang."""

    def __init__(self, base: Path, workdir: Path, timeout: float = CASE_TIMEOUT_S, api: str = "native") -> None:
        self.base = base
        self.api = api
        self.log_path = workdir / "worker-stderr.log"
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def __enter__(self) -> GuardWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Outcome:
        """Starts the child; returns how loading the base went (a crash there included)."""
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(self.base), "--api", self.api],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},  # ggml would attach gdb to an aborting child
        )
        loaded = self._answer(300.0)
        if loaded["kind"] != "ok":
            self.stop()
        return loaded

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def _readline(self, timeout: float) -> str | None:
        """The child's next line; None when it closed its end (it is exiting); TimeoutError after `timeout` s."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks = b""
        deadline = time.monotonic() + timeout
        while not chunks.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            chunks += chunk
        return chunks.decode().rstrip("\n")

    def run(self, guard: Path) -> Outcome:
        if self.proc is None and (loaded := self.start())["kind"] != "ok":
            raise RuntimeError(f"fuzz worker could not load the base model {self.base}: {loaded}")
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{guard}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child died: _answer says how
        return self._answer(self.timeout)

    def _answer(self, timeout: float) -> Outcome:
        """The child's next answer; a crash or hang is a finding, and the child is gone after it."""
        assert self.proc is not None
        try:
            line = self._readline(timeout)
            if line is not None:
                return json.loads(line)
            # it closed its end: a crash, which may take a moment (a core dump) to become an exit status
            detail = _describe_exit(self.proc.wait(timeout=timeout))
        except (TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
            detail = f"hang (no answer in {timeout:.0f} s)"
        stderr = self.log_path.read_bytes()[-4000:].decode(errors="replace")
        self.stop()
        return {"kind": "finding", "detail": detail, "stderr": stderr}


def run_once(base: Path, guard: Path, workdir: Path) -> Outcome:
    """Base model and guard loaded, and the guard run, in a fresh child: the outcome of whichever step ended it."""
    with GuardWorker(base, workdir) as worker:
        loaded = worker.start()
        return loaded if loaded["kind"] != "ok" else worker.run(guard)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"crash: killed by {signal.Signals(-code).name}"
    return f"crash: child exited with status {code}"


# ----------------------------------------------------------------------------------------------------------------
# a run


@dataclasses.dataclass
class Finding:
    case: int
    mutations: list[str]
    detail: str
    stderr: str

    def __str__(self) -> str:
        mutations = "; ".join(self.mutations)
        return f"case {self.case}: {self.detail}\n  mutations: {mutations}\n  stderr: {self.stderr[-800:]}"


@dataclasses.dataclass
class FuzzReport:
    seed: int
    cases: int
    seconds: float
    loaded: int  # cases that loaded and classified
    nan_scores: int  # of those, how many gave NaN logits
    errors: collections.Counter[str]  # clean errors by exception class
    findings: list[Finding]

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {self.cases} cases in {self.seconds:.1f} s ({self.cases / self.seconds:.1f}/s), "
            f"{len(self.findings)} finding(s)",
            f"  loaded and classified: {self.loaded} (NaN scores: {self.nan_scores})",
            *(f"  {name}: {n}" for name, n in self.errors.most_common()),
        ]
        return "\n".join(lines + [str(f) for f in self.findings])


def fuzz(
    base: Path, guard: Path, *, cases: int, seed: int = 0, start: int = 0, workdir: Path | None = None,
    api: str = "native", progress: bool = True,
) -> FuzzReport:
    """Runs cases start..start+cases-1 of run `seed`; a finding's file is kept in workdir as case-N.gguf."""
    layout = read_layout(guard)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loraguard-fuzz-")))
        workdir.mkdir(parents=True, exist_ok=True)
        worker = stack.enter_context(GuardWorker(base, workdir, api=api))
        report = FuzzReport(seed, cases, 0.0, 0, 0, collections.Counter(), [])
        t0 = time.perf_counter()
        path = workdir / "case.gguf"
        for case in tqdm(range(start, start + cases), desc=f"fuzz seed {seed}", disable=not progress, mininterval=5):
            mutations = make_case(layout, seed, case, path)
            result = worker.run(path)
            if result["kind"] == "ok":
                report.loaded += 1
                report.nan_scores += result["detail"].endswith("NaN")
            elif result["kind"] == "error":
                report.errors[result["detail"].split(":", 1)[0]] += 1
            else:
                path.replace(workdir / f"case-{case}.gguf")
                report.findings.append(Finding(case, mutations, result["detail"], result.get("stderr", "")))
        report.seconds = time.perf_counter() - t0
    return report


def _resolve(base: str | None, guard: str) -> tuple[Path, Path]:
    from loraguard_cpp.registry import resolve

    return resolve(base, guard)


def stories_files(out: Path) -> tuple[Path, Path]:
    """stories260K from ../shared and the test suite's guard on it (random LoRA on every projection, random
    head: the stories_guard fixture), built into out once. The fastest real pair to fuzz (about 50 cases/s)."""
    from loraguard_convert.guard import convert_guard
    from tiny_models import STORIES_GGUF, STORIES_HF, build_tiny_guard_checkpoint

    guard = out / "stories-guard.gguf"
    if not guard.exists():
        out.mkdir(parents=True, exist_ok=True)
        convert_guard(build_tiny_guard_checkpoint(STORIES_HF, out / "ckpt", targets="all", seed=0), guard,
                      base_gguf=STORIES_GGUF)
    return STORIES_GGUF, guard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="base GGUF or named base (default: the named guard's)")
    parser.add_argument("--guard", default="minilm", help="guard GGUF or named guard (default minilm)")
    parser.add_argument("--stories", action="store_true",
                        help="fuzz the test suite's guard on stories260K (../shared), built into the workdir")
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case number")
    parser.add_argument("--case", type=int, help="rebuild and run this one case")
    parser.add_argument("--keep", type=Path, help="with --case: where to write its file")
    parser.add_argument("--workdir", type=Path, help="where findings' files are kept (default: a temp dir)")
    parser.add_argument("--api", choices=APIS, default="native",
                        help="run cases through the extension's GuardPath (default) or the Python Guard class")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.api)
        return 0
    if args.stories:
        base, guard = stories_files(args.workdir or Path(tempfile.gettempdir()) / "loraguard-fuzz-stories")
    else:
        base, guard = _resolve(args.base, args.guard)
    if args.case is not None:
        keep = args.keep or Path(f"fuzz-case-{args.seed}-{args.case}.gguf")
        print("\n".join(make_case(read_layout(guard), args.seed, args.case, keep)))
        with tempfile.TemporaryDirectory() as tmp:
            result = run_once(base, keep.resolve(), Path(tmp))
        print(json.dumps(result, indent=1))
        return 1 if result["kind"] == "finding" else 0
    report = fuzz(base, guard, cases=args.cases, seed=args.seed, start=args.start, workdir=args.workdir, api=args.api)
    print(report.summary())
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
