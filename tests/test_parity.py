"""Parity of the native guard with its PyTorch/PEFT reference, per architecture and on real weights.

For each architecture: a tiny random-init HF model with its real tokenizer, a PEFT LoRA with non-zero B on every
linear projection (and a q/v-only variant), a random head; base and guard converted with loraguard-convert;
the same real texts scored by torch (fp32) and by the native runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_real_texts
from loraguard_cpp import Guard

ARCHS = ("llama", "llama_bpe", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "bert")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return load_real_texts(100)


def build_guard(model_dir: Path, base_gguf: Path, out: Path, targets: str) -> tuple[Path, Path]:
    from loraguard_convert.guard import convert_guard
    from tiny_models import build_tiny_guard_checkpoint

    ckpt = build_tiny_guard_checkpoint(model_dir, out / f"ckpt-{targets}", targets=targets, seed=1,
                                       base_gguf=base_gguf)
    return ckpt, convert_guard(ckpt, out / f"guard-{targets}.gguf")


def torch_logits(ckpt: Path, model_dir: Path, texts: list[str]) -> np.ndarray:
    from loraguard_train.model import load_checkpoint, load_tokenizer, score_texts

    model, _ = load_checkpoint(ckpt, model_dir)
    return score_texts(model, load_tokenizer(model_dir), texts)


# Logits are compared on texts every model can take whole (BERT and stories260K have 512 positions); token
# ids on all texts, the long ones included.
MAX_TOKENS = 500


# ggml's CPU GELU goes through an F16 lookup table: models with GELU (Gemma, BERT) miss torch by up to ~2e-3 of
# the logit scale (measured: gemma3 5e-4, bert 2e-4, MiniLM 2.1e-3), against ~1e-5 for SiLU models. With that
# rounding emulated on the torch side, BERT's hidden states match to 2e-5 (tests/test_reference.py).
GELU_RELATIVE_TOLERANCE = 3e-3


def fitting(guard: Guard, texts: list[str]) -> list[str]:
    return [t for t in texts if len(guard.tokenize(t)) <= MAX_TOKENS]


def check_parity(
    model_dir: Path, base_gguf: Path, ckpt: Path, guard_path: Path, texts: list[str], gelu: bool = False
) -> np.ndarray:
    from loraguard_train.model import encode, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    with Guard(base_gguf, guard_path, n_threads=2, n_ctx=2048, exact=True) as guard:
        for text in texts:
            hf_ids = encode(tokenizer, ["user: " + text])["input_ids"][0].tolist()
            assert guard.tokenize(text) == hf_ids, f"token ids differ for {text[:60]!r}"
        texts = fitting(guard, texts)
        ours = guard.logits(texts)
    assert len(texts) >= 20
    ref = torch_logits(ckpt, model_dir, texts)
    diff = np.abs(ours - ref).max()
    tolerance = GELU_RELATIVE_TOLERANCE * float(np.abs(ref).max()) if gelu else 1e-3
    assert diff <= tolerance, f"max |logit diff| {diff:.2e} (logits up to {np.abs(ref).max():.1f})"
    assert np.abs(ref).max() > 1.0, "a head this weak would hide differences"
    return ref


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_per_architecture(arch: str, tiny_base, tmp_path: Path, texts: list[str]) -> None:
    from loraguard_cpp import _native

    base = tiny_base(arch)
    sample = texts[:24]
    ckpt, guard_path = build_guard(base.hf_dir, base.gguf, tmp_path, "all")
    gelu = arch in ("gemma3", "bert")
    ref = check_parity(base.hf_dir, base.gguf, ckpt, guard_path, sample, gelu=gelu)

    # F16 weights: llama.cpp's F16 matmuls round activations to F16, which costs ~1e-3 of the logit scale even
    # against torch on the very same (dequantized) weights; Q8_0 rounds to 8 bits, so only decisions are compared
    f16 = tmp_path / "f16.gguf"
    _native.Model.quantize(str(base.gguf), str(f16), "F16")
    with Guard(f16, guard_path, n_threads=2, n_ctx=2048, exact=True) as guard:
        diff = np.abs(guard.logits(fitting(guard, sample)) - ref).max()
    f16_tolerance = 2e-3 + (GELU_RELATIVE_TOLERANCE if gelu else 0.0)
    assert diff <= f16_tolerance * float(np.abs(ref).max()), f"F16 base: max |logit diff| {diff:.2e}"

    # Q8_0: llama.cpp also rounds activations to 8 bits; on these 64-wide random models that moves logits by up
    # to ~0.45 (measured), so decisions are held to 99% where the reference is clear of the threshold by 0.5,
    # and to 90% over all texts (measured 95-98%).
    q8 = tmp_path / "q8.gguf"
    _native.Model.quantize(str(base.gguf), str(q8), "Q8_0")
    with Guard(q8, guard_path, n_threads=2, n_ctx=2048) as guard:
        fit = fitting(guard, texts)
        ours = guard.logits(fit)
    full_ref = torch_logits(ckpt, base.hf_dir, fit)
    same = (ours >= 0) == (full_ref >= 0)
    clear = np.abs(full_ref) > 0.5
    assert same[clear].mean() >= 0.99, f"Q8_0 base: {same[clear].mean():.1%} of clear decisions agree"
    assert same.all(axis=1).mean() >= 0.90, f"Q8_0 base: decisions agree on {same.all(axis=1).mean():.1%} of texts"

    ckpt_qv, guard_qv = build_guard(base.hf_dir, base.gguf, tmp_path, "qv")
    check_parity(base.hf_dir, base.gguf, ckpt_qv, guard_qv, sample, gelu=gelu)


def test_parity_stories260k(stories_hf: Path, stories_gguf: Path, tmp_path: Path, texts: list[str]) -> None:
    ckpt, guard_path = build_guard(stories_hf, stories_gguf, tmp_path, "all")
    check_parity(stories_hf, stories_gguf, ckpt, guard_path, texts[:24])


def test_parity_minilm(tmp_path: Path, texts: list[str]) -> None:
    from loraguard_convert.base import convert_base
    from tiny_models import minilm_dir

    model_dir = minilm_dir()
    base_gguf = convert_base(model_dir, tmp_path / "minilm-f32.gguf", outtype="f32")
    ckpt, guard_path = build_guard(model_dir, base_gguf, tmp_path, "all")
    check_parity(model_dir, base_gguf, ckpt, guard_path, texts[:24], gelu=True)
