"""The PyTorch reference agrees with llama.cpp on every architecture loraguard claims.

Two facts the runtime's parity rests on, checked on tiny random models with real tokenizers:
1. the HF tokenizer and llama.cpp's tokenizer give identical ids for the rendered guard input;
2. the torch model's pooled final-norm hidden state equals llama.cpp's pooled embedding (F32 weights, F32 KV).
Plus the torch-side pieces built on them: encode/pooling with padding, and the checkpoint layout.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

try:
    import llama_cpp
    import numpy as np
    import torch
    from gguf import GGUFReader
    from safetensors.torch import load_file

    import tiny_models
    from loraguard_train import (
        GuardModel,
        default_target_modules,
        encode,
        load_backbone,
        load_checkpoint,
        load_tokenizer,
        render,
        render_all,
        score_texts,
    )
    from loraguard_train.model import DEFAULT_TEMPLATE_PAIR, DEFAULT_TEMPLATE_PROMPT
    from tiny_models import ARCHS, GUARD_LABELS, HIDDEN_SIZE, SHARED, MissingSource
except ImportError as e:
    pytest.skip(f"training/test dependencies missing ({e}); pip install -e '.[train,dev]'", allow_module_level=True)

DATA = SHARED / "data"
# F32 weights and F32 KV cache leave only summation-order differences for SiLU decoders (measured: ~5e-6).
ATOL = 1e-3
# llama.cpp's CPU backend computes GELU through an fp16 table of the tanh approximation (GGML_GELU_FP16); HF uses
# the exact erf GELU (BERT) or an fp32 tanh GELU (Gemma): measured up to ~2e-3 on values of magnitude ~2-4.
# With that rounding emulated on the torch side (tiny_models.ggml_cpu_gelu) the models must agree within ATOL.
GELU_ATOL = 4e-3
GELU_ARCHS = frozenset({"bert", "gemma3"})
BERT_MAX_TOKENS = 512
SHORT_TOKENS = 256
LONG_TOKENS = 800
N_HIDDEN_SHORT = 8
GGUF_ARCH = {"llama": "llama", "llama_bpe": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
             "gemma3": "gemma3", "phi3": "phi3", "bert": "bert"}  # fmt: skip

# Where llama.cpp and the HF tokenizer are known to disagree on text that spells special tokens, and why.
_EOG_TEXT = (
    "the tokenizer makes '</s>' a plain (non-special) added token, so HF matches it in user text even with "
    "split_special_tokens, but llama.cpp forces any token spelled '</s>' (and other end-of-generation "
    "spellings) to a control token and so, with parse_special=false, tokenizes it as text"
)
SPECIAL_TEXT_DIVERGENCES = {"phi3": _EOG_TEXT, "gemma3": _EOG_TEXT}
_SPM_SPACE = (
    "llama.cpp's SentencePiece tokenizer adds the dummy-prefix space again to the text that follows each parsed "
    "special token; HF (Metaspace prepend_scheme 'first', legacy=false) does not"
)
_EOG_VOCAB = (
    "the vocabulary has an ordinary BPE token '</s>'; llama.cpp promotes it to an end-of-generation control token "
    "and so, with parse_special=true, matches it in text that HF's BPE spells out as ' </', 's', '>'"
)
PARSE_SPECIAL_DIVERGENCES = {
    "llama": _SPM_SPACE,
    "mistral": _SPM_SPACE,
    "phi3": _SPM_SPACE,
    "qwen2": _EOG_VOCAB,
    "qwen3": _EOG_VOCAB,
}


# ---------------------------------------------------------------------------------------------------------------
# real texts


def _read_rows(name: str) -> list[dict[str, Any]]:
    path = DATA / name
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _has(text: str, test: Callable[[str], bool]) -> bool:
    return any(test(c) for c in text)


def _select_texts() -> list[tuple[str, str | None]]:
    """A fixed, reproducible mix of real prompts (and a few prompt/response pairs): plain English, emoji, CJK,
    Cyrillic, other non-ASCII, irregular whitespace and the longest text of a set."""
    files = (
        "simplesafetytests.jsonl",
        "xstest_prompts.jsonl",
        "openai_moderation_test.jsonl",
        "toxicchat0124_train_human_annotated.jsonl",
        "aegis_safety_test.jsonl",
        "deepset_prompt_injections_train.jsonl",
        "harmbench_response_test.jsonl",
        "beavertails_30k_test.jsonl",
    )
    rows = {name: _read_rows(name) for name in files}
    prompts = [r["text"] for name in files for r in rows[name] if r.get("text")]
    if not prompts:
        return []
    picked: list[str] = [rows[name][0]["text"] for name in files[:6] if rows[name]]
    for test, count in (
        (lambda c: ord(c) >= 0x1F300, 3),  # emoji
        (lambda c: "\u4e00" <= c <= "\u9fff", 2),  # CJK
        (lambda c: "\u0400" <= c <= "\u04ff", 2),  # Cyrillic
        (lambda c: 0x80 <= ord(c) < 0x2000, 4),  # accents, curly quotes, ...
    ):
        picked += [t for t in prompts if _has(t, test) and t not in picked][:count]
    picked += [t for t in prompts if ("  " in t or "\t" in t or "\n\n" in t) and t not in picked][:3]
    picked.append(max(prompts, key=len))
    texts: list[tuple[str, str | None]] = [(t, None) for t in picked]
    texts += [(r["text"], r["response"]) for r in rows["beavertails_30k_test.jsonl"][:3] if r.get("response")]
    return texts


TEXTS = _select_texts()
needs_data = pytest.mark.skipif(len(TEXTS) < 20, reason=f"real moderation data not found under {DATA}")


def _rendered(texts: list[tuple[str, str | None]]) -> list[str]:
    return render_all([p for p, _ in texts], [r for _, r in texts], DEFAULT_TEMPLATE_PROMPT, DEFAULT_TEMPLATE_PAIR)


# ---------------------------------------------------------------------------------------------------------------
# fixtures: each tiny model is built and converted once per session, on first use


class TinyModel:
    def __init__(self, arch: str, model_dir: Path, gguf_path: Path) -> None:
        self.arch = arch
        self.model_dir = model_dir
        self.gguf_path = gguf_path
        self._vocab: llama_cpp.Llama | None = None
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    @property
    def vocab(self) -> llama_cpp.Llama:
        if self._vocab is None:
            self._vocab = llama_cpp.Llama(str(self.gguf_path), vocab_only=True, verbose=False)
        return self._vocab

    def llama_ids(self, text: str, parse_special: bool = False) -> list[int]:
        return self.vocab.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special)

    def hf_ids(self, text: str, parse_special: bool = False) -> list[int]:
        return encode(self.tokenizer, [text], parse_special=parse_special)["input_ids"][0].tolist()


@pytest.fixture(scope="session")
def tiny() -> Callable[[str], TinyModel]:
    models: dict[str, TinyModel] = {}

    def get(arch: str) -> TinyModel:
        if arch not in models:
            try:
                models[arch] = TinyModel(arch, tiny_models.cached_tiny_model(arch), tiny_models.cached_tiny_gguf(arch))
            except MissingSource as e:
                pytest.skip(f"{arch}: {e}")
        return models[arch]

    return get


@pytest.fixture(scope="session")
def embedder() -> Callable[[TinyModel, int], llama_cpp.Llama]:
    cache: dict[tuple[str, int], llama_cpp.Llama] = {}

    def get(model: TinyModel, pooling_type: int) -> llama_cpp.Llama:
        key = (model.arch, pooling_type)
        if key not in cache:
            # one ubatch must hold a whole text for pooled embeddings; no larger, as the attention buffers
            # grow with its square
            longest = max(len(model.llama_ids(t)) for t in _hidden_texts(model))
            n_ctx = (longest // 256 + 1) * 256
            cache[key] = llama_cpp.Llama(
                str(model.gguf_path),
                embedding=True,
                pooling_type=pooling_type,
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                type_k=0,  # GGML_TYPE_F32: an F16 cache alone would cost ~1e-3
                type_v=0,
                n_threads=2,
                verbose=False,
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def backbone() -> Callable[[TinyModel], torch.nn.Module]:
    cache: dict[str, torch.nn.Module] = {}

    def get(model: TinyModel) -> torch.nn.Module:
        if model.arch not in cache:
            cache[model.arch] = load_backbone(model.model_dir).eval()
        return cache[model.arch]

    return get


# ---------------------------------------------------------------------------------------------------------------
# render / encode (no model needed beyond a tokenizer)


def test_render_is_single_pass_plain_replacement() -> None:
    pair = DEFAULT_TEMPLATE_PAIR
    assert render(pair, "a {response} {x}", "b {prompt}") == "user: a {response} {x}\n\nagent: b {prompt}"
    assert render(DEFAULT_TEMPLATE_PROMPT, "p", None) == "user: p"
    with pytest.raises(ValueError):
        render(pair, "p", None)


def test_encode_pads_right_with_mask(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("llama")
    texts = ["user: hi", "user: a much longer text than the first one"]
    enc = encode(model.tokenizer, texts)
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    for i, text in enumerate(texts):
        assert enc["input_ids"][i, : lengths[i]].tolist() == model.llama_ids(text)
        assert enc["attention_mask"][i, lengths[i] :].sum() == 0
    truncated = encode(model.tokenizer, texts, max_length=4)
    assert truncated["input_ids"].shape[1] == 4


# ---------------------------------------------------------------------------------------------------------------
# per architecture: conversion, tokenizer identity, hidden states


@pytest.mark.parametrize("arch", ARCHS)
def test_converts_and_loads(arch: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(arch)
    reader = GGUFReader(model.gguf_path)
    assert reader.fields["general.architecture"].contents() == GGUF_ARCH[arch]
    assert {t.tensor_type.name for t in reader.tensors} <= {"F32"}
    llm = llama_cpp.Llama(str(model.gguf_path), n_ctx=256, verbose=False)
    assert llm.n_embd() == HIDDEN_SIZE
    assert llm.n_vocab() >= len(model.tokenizer)


@needs_data
@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_ids_identical(arch: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(arch)
    mismatches = []
    for text in _rendered(TEXTS):
        hf, cpp = model.hf_ids(text), model.llama_ids(text)
        if hf != cpp:
            at = next((i for i, (a, b) in enumerate(zip(hf, cpp, strict=False)) if a != b), min(len(hf), len(cpp)))
            mismatches.append(
                f"{text[:50]!r}: first difference at {at}: hf {hf[at : at + 4]} llama.cpp {cpp[at : at + 4]}"
            )
    assert not mismatches, f"{arch}: {len(mismatches)}/{len(TEXTS)} texts tokenize differently:\n" + "\n".join(
        mismatches
    )


# control-token spellings of the common chat formats, whether or not the tokenizer at hand knows them
_CONTROL_SPELLINGS = ("<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<start_of_turn>",
                      "<end_of_turn>", "<|user|>", "<|assistant|>", "<|end|>", "[CLS]", "[SEP]", "[INST]")  # fmt: skip


def _special_text(model: TinyModel) -> str:
    tokenizer = model.tokenizer
    own = [*tokenizer.all_special_tokens, *sorted(tokenizer.get_added_vocab())][:30]
    specials = list(dict.fromkeys([*_CONTROL_SPELLINGS, *own]))
    return render(DEFAULT_TEMPLATE_PROMPT, "ignore this " + " x ".join(specials) + " end\nnext", None)


@pytest.mark.parametrize("arch", ARCHS)
def test_special_token_text_is_not_parsed(arch: str, tiny: Callable[[str], TinyModel], request: Any) -> None:
    """User text that spells the model's special tokens must stay text (parse_special=False) on both sides."""
    if arch in SPECIAL_TEXT_DIVERGENCES:
        request.applymarker(pytest.mark.xfail(reason=SPECIAL_TEXT_DIVERGENCES[arch], strict=True))
    model = tiny(arch)
    text = _special_text(model)
    assert model.hf_ids(text) == model.llama_ids(text)


@pytest.mark.parametrize("arch", ARCHS)
def test_parse_special_ids_identical(arch: str, tiny: Callable[[str], TinyModel], request: Any) -> None:
    """With parse_special=True (templates that embed control tokens), both sides parse them the same way."""
    if arch in PARSE_SPECIAL_DIVERGENCES:
        request.applymarker(pytest.mark.xfail(reason=PARSE_SPECIAL_DIVERGENCES[arch], strict=True))
    model = tiny(arch)
    text = _special_text(model)
    assert model.hf_ids(text, parse_special=True) == model.llama_ids(text, parse_special=True)


def _llama_cpp_pooled(llm: llama_cpp.Llama, text: str) -> np.ndarray:
    return np.asarray(llm.embed(text, normalize=False), dtype=np.float32)


def _hidden_texts(model: TinyModel) -> list[str]:
    """Some short texts plus the longest one of at most LONG_TOKENS tokens (BERT: its 512 positions).

    llama.cpp computes logits for every token even in embedding mode, so a text costs tokens x vocabulary
    (Gemma 3: 262k) per call; one text of a few hundred tokens covers the position-dependent code (RoPE, sliding
    windows) well enough.
    """
    texts = _rendered(TEXTS)
    lengths = {t: len(model.llama_ids(t)) for t in texts}
    limit = BERT_MAX_TOKENS if model.arch == "bert" else LONG_TOKENS
    longest = max((t for t in texts if lengths[t] <= limit), key=lengths.__getitem__)
    short = [t for t in texts if lengths[t] <= SHORT_TOKENS and t != longest]
    return [*short[:N_HIDDEN_SHORT], longest]


@needs_data
@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_state_matches_llama_cpp(
    arch: str,
    tiny: Callable[[str], TinyModel],
    embedder: Callable[[TinyModel, int], llama_cpp.Llama],
    backbone: Callable[[TinyModel], torch.nn.Module],
) -> None:
    model = tiny(arch)
    torch_model = backbone(model)
    poolings = {"last": llama_cpp.LLAMA_POOLING_TYPE_LAST}
    if arch == "bert":
        poolings = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS}
    variants = {"torch": (contextlib.nullcontext, GELU_ATOL if arch in GELU_ARCHS else ATOL)}
    if arch in GELU_ARCHS:
        # 1.04e-3 measured for gemma3 on this session's machine and packages (within 1e-3 before)
        variants["ggml-gelu"] = (lambda: tiny_models.ggml_cpu_gelu(torch_model), 1.5 * ATOL)
    worst: dict[str, float] = {}
    for text in _hidden_texts(model):
        ids = model.llama_ids(text)
        theirs = {name: _llama_cpp_pooled(embedder(model, kind), text) for name, kind in poolings.items()}
        for variant, (numerics, _) in variants.items():
            with torch.no_grad(), numerics():
                hidden = torch_model.base_model(
                    input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)
                )
            states = hidden.last_hidden_state[0]
            ours = {"last": states[-1], "mean": states.mean(dim=0), "cls": states[0]}
            for name in poolings:
                key = f"{variant}/{name}"
                worst[key] = max(worst.get(key, 0.0), float(np.abs(ours[name].numpy() - theirs[name]).max()))
    print(f"{arch}: max |torch - llama.cpp|: {worst}")
    assert worst
    for key, diff in worst.items():
        atol = variants[key.split("/")[0]][1]
        assert diff <= atol, f"{arch}: {key} differs by {diff} > {atol} ({worst})"


@needs_data
@pytest.mark.parametrize("arch", ARCHS)
def test_guard_features_batched_match_llama_cpp(
    arch: str,
    tiny: Callable[[str], TinyModel],
    embedder: Callable[[TinyModel, int], llama_cpp.Llama],
) -> None:
    """GuardModel's encode + pooling on a right-padded batch gives each text's unpadded llama.cpp embedding."""
    model = tiny(arch)
    guard = GuardModel(load_backbone(model.model_dir), n_labels=2).eval()  # fresh LoRA: B = 0, the base exactly
    texts = [t for t in _hidden_texts(model) if len(t) < 2000][:8]
    pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN if arch == "bert" else llama_cpp.LLAMA_POOLING_TYPE_LAST
    enc = encode(model.tokenizer, texts)
    with torch.no_grad():
        feats = guard.features(enc["input_ids"], enc["attention_mask"]).numpy()
    theirs = np.stack([_llama_cpp_pooled(embedder(model, pooling_type), t) for t in texts])
    np.testing.assert_allclose(feats, theirs, atol=GELU_ATOL if arch in GELU_ARCHS else ATOL, rtol=0)


@needs_data
def test_backbone_and_tokenizer_load_from_gguf(tiny: Callable[[str], TinyModel]) -> None:
    """A base given as a GGUF file (dequantized by transformers) is the same model as its HF directory."""
    model = tiny("llama")
    texts = _rendered(TEXTS)[:6]
    from_gguf = load_tokenizer(model.gguf_path)
    assert [encode(from_gguf, [t])["input_ids"][0].tolist() for t in texts] == [model.hf_ids(t) for t in texts]
    enc = encode(model.tokenizer, texts)
    with torch.no_grad():
        ours = load_backbone(model.model_dir).base_model(**enc).last_hidden_state
        theirs = load_backbone(model.gguf_path).base_model(**enc).last_hidden_state
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# guard checkpoints


@pytest.mark.parametrize("targets", ["all", "qv"])
@pytest.mark.parametrize("arch", ARCHS)
def test_guard_checkpoint_layout(arch: str, targets: str, tiny: Callable[[str], TinyModel], tmp_path: Path) -> None:
    model = tiny(arch)
    ckpt = tiny_models.build_tiny_guard_checkpoint(model.model_dir, tmp_path / "ckpt", targets=targets)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "base_config.json",
        "guard_config.json",
        "head.safetensors",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dir left behind"

    config = json.loads((ckpt / "guard_config.json").read_text(encoding="utf-8"))
    assert config["format"] == "loraguard-checkpoint" and config["version"] == 1
    assert config["labels"] == list(GUARD_LABELS)
    assert config["pooling"] == ("mean" if arch == "bert" else "last")
    assert config["template"] == {
        "prompt": DEFAULT_TEMPLATE_PROMPT,
        "pair": DEFAULT_TEMPLATE_PAIR,
        "parse_special": False,
    }
    assert config["base"]["architecture"] == GGUF_ARCH[arch]
    assert config["base"]["n_embd"] == HIDDEN_SIZE

    base_config = json.loads((ckpt / "base_config.json").read_text(encoding="utf-8"))
    assert base_config["hidden_size"] == HIDDEN_SIZE and base_config["architectures"]

    head = load_file(str(ckpt / "head.safetensors"))
    assert head["weight"].shape == (len(GUARD_LABELS), HIDDEN_SIZE) and head["weight"].dtype == torch.float32
    assert head["bias"].shape == (len(GUARD_LABELS),)

    adapter = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16
    lora = load_file(str(ckpt / "adapter_model.safetensors"))
    b_tensors = [v for k, v in lora.items() if "lora_B" in k]
    assert b_tensors and all(float(v.abs().max()) > 0 for v in b_tensors)
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in lora}
    if targets == "qv":
        assert adapted == set(default_target_modules(base_config["model_type"]))
    else:
        assert len(adapted) >= 4


def test_checkpoint_is_replaced_whole(tiny: Callable[[str], TinyModel], tmp_path: Path) -> None:
    """Saving over an existing checkpoint swaps the directory in one rename and leaves no temp dirs behind."""
    model = tiny("llama")
    out = tmp_path / "ckpt"
    tiny_models.build_tiny_guard_checkpoint(model.model_dir, out, seed=0)
    first = load_file(str(out / "head.safetensors"))["weight"]
    tiny_models.build_tiny_guard_checkpoint(model.model_dir, out, seed=1)
    second = load_file(str(out / "head.safetensors"))["weight"]
    assert not torch.equal(first, second)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@needs_data
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_score_texts_logit_scale(arch: str, tiny: Callable[[str], TinyModel], tmp_path: Path) -> None:
    """A reloaded checkpoint scores deterministically, independent of batching, with logits of order 5."""
    model = tiny(arch)
    ckpt = tiny_models.build_tiny_guard_checkpoint(model.model_dir, tmp_path / "ckpt")
    guard, config = load_checkpoint(ckpt, model.model_dir)
    assert config["labels"] == list(GUARD_LABELS) and guard.pooling == config["pooling"]
    prompts = [p for p, _ in TEXTS[:12]]
    one = score_texts(guard, model.tokenizer, prompts, batch_size=1, max_length=BERT_MAX_TOKENS)
    many = score_texts(guard, model.tokenizer, prompts, batch_size=5, max_length=BERT_MAX_TOKENS)
    assert one.dtype == np.float32 and one.shape == (len(prompts), len(GUARD_LABELS))
    np.testing.assert_allclose(one, many, atol=1e-4)
    assert 1.0 < float(np.abs(one).mean()) < 25.0
