"""Guard model on the PyTorch side: frozen HF backbone + PEFT LoRA + linear head (LoRA-Guard, EMNLP 2024).

Everything here must agree with docs/guard-format.md: the runtime scores the same rendered string, with the
same tokenization and the same pooling, so any drift between this file and the contract is a parity bug.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from loraguard_convert.gguf_read import GgufFile
from loraguard_train.inputs import logits_of, pad_id, tokenize

DEFAULT_TEMPLATE_PROMPT = "user: {prompt}"
DEFAULT_TEMPLATE_PAIR = "user: {prompt}\n\nagent: {response}"
DEFAULT_RANK = 8
DEFAULT_ALPHA = 16.0
DEFAULT_DROPOUT = 0.05

CHECKPOINT_FORMAT = "loraguard-checkpoint"
CHECKPOINT_VERSION = 1
POOLINGS = ("last", "mean", "cls")
# "lora": the adapter changes every token (LoRA-Guard); "alora": only the invocation appended after the input and
# what follows it (activated LoRA), so the guard can read a chat's cache, which holds the base model's K/V
ACTIVATIONS = ("lora", "alora")

# Encoders are run bidirectionally and pooled like sentence-embedding models; every other model type is
# treated as a decoder whose final-norm hidden state of the last token is the guard's feature.
ENCODER_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta"})

# The paper adapts the query and value projections; models that fuse q/k/v into one matrix can only be
# adapted through the fused projection.
_QV_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "phi3": ("qkv_proj",),
}
_DEFAULT_QV_TARGETS = ("q_proj", "v_proj")

# llama.cpp's architecture names where they differ from the HF model_type (convert_hf_to_gguf maps Mistral
# onto the llama graph, and Gemma 3's text-only config has its own model_type).
_LLAMA_CPP_ARCH = {"mistral": "llama", "gemma3_text": "gemma3"}


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    parse_special: bool = False,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize rendered strings like llama_tokenize(add_special=True, parse_special=parse_special).

    Padding is done here rather than by the tokenizer because many decoder tokenizers have no pad token;
    the pad id is irrelevant as padded positions are masked and padding is on the right, after the pooled
    positions of every pooling mode.
    """
    if not texts:
        raise ValueError("encode() needs at least one text")
    batch = tokenizer(
        list(texts),
        add_special_tokens=True,
        split_special_tokens=not parse_special,
        truncation=max_length is not None,
        max_length=max_length,
    )
    ids: list[list[int]] = batch["input_ids"]
    if any(len(row) == 0 for row in ids):
        raise ValueError("a text tokenized to zero tokens; the guard has nothing to pool")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def invocation_ids(tokenizer: Any, text: str) -> list[int]:
    """An aLoRA invocation's token ids: its text tokenized alone with special-token text parsed and no BOS/EOS
    framing (llama_tokenize(add_special=false, parse_special=true)); the runtime appends these very ids."""
    ids: list[int] = tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the invocation {text!r} tokenizes to no tokens")
    return ids


def is_encoder(config: Any) -> bool:
    return config.model_type in ENCODER_MODEL_TYPES


def default_target_modules(model_type: str) -> list[str]:
    return list(_QV_TARGETS.get(model_type, _DEFAULT_QV_TARGETS))


def llama_cpp_arch(model_type: str) -> str:
    return _LLAMA_CPP_ARCH.get(model_type, model_type)


def _split_source(source: str | os.PathLike[str]) -> tuple[str, str | None]:
    """An HF directory loads as is; a .gguf file loads through transformers' GGUF reader (dequantized)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    return str(path), None


# llama.cpp pre-tokenizers that transformers' GGUF tokenizer reader does not know (it then splits text with GPT-2's
# regex whatever `tokenizer.ggml.pre` says), as the tokenizers pre-tokenizer the model's own tokenizer.json has and
# llama.cpp follows. SmolLM splits every digit off first: without it "\n\n1." is "\n" "\n" "1" "." in torch and
# "\n\n" "1" "." in the runtime, so a guard would train on other tokens than the runtime reads (one text in 20 of
# the moderation data, most markdown lists in replies).
_PRE_TOKENIZERS: dict[str, Any] = {
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
}


def load_tokenizer(source: str | os.PathLike[str]) -> Any:
    """The base's tokenizer, splitting text as the runtime does (llama.cpp's pre-tokenizer for a GGUF base)."""
    directory, gguf_file = _split_source(source)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    if gguf_file is not None:
        pre = GgufFile(Path(directory) / gguf_file).string("tokenizer.ggml.pre")
        if pre in _PRE_TOKENIZERS:
            tokenizer.backend_tokenizer.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    return tokenizer


def load_backbone(source: str | os.PathLike[str], attn_implementation: str | None = None) -> PreTrainedModel:
    """Load the frozen base in fp32: a CausalLM for decoders (so PEFT module names match what llama.cpp's
    LoRA converter expects), a bare encoder without its pooler for encoders (the pooler is never used)."""
    directory, gguf_file = _split_source(source)
    config = AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
    kwargs: dict[str, Any] = {"gguf_file": gguf_file, "dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if is_encoder(config):
        return AutoModel.from_pretrained(directory, add_pooling_layer=False, **kwargs)
    return AutoModelForCausalLM.from_pretrained(directory, **kwargs)


class GuardModel(torch.nn.Module):
    """LoRA-adapted backbone plus a linear head on a pooled hidden state; only LoRA and head are trainable."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        n_labels: int,
        pooling: str | None = None,
        r: int = DEFAULT_RANK,
        alpha: float = DEFAULT_ALPHA,
        dropout: float = DEFAULT_DROPOUT,
        target_modules: str | Sequence[str] | None = None,
        adapter_dir: str | os.PathLike[str] | None = None,
        invocation: Sequence[int] | None = None,
    ) -> None:
        """A fresh LoRA (r, alpha, dropout, target_modules), or with `adapter_dir` a saved PEFT adapter.

        With `invocation` (token ids) the fresh adapter is an activated LoRA: it applies from the first invocation
        token on, and every input must end with the invocation (loraguard_train.inputs.tokenize appends it).
        """
        super().__init__()
        config = backbone.config
        self.encoder = is_encoder(config)
        if invocation is not None and self.encoder:
            # every token of a bidirectional encoder sees the invocation: nothing before it is the base's state
            raise ValueError("activated LoRA (an invocation) needs a decoder base; encoders read bidirectionally")
        pooling = pooling or ("mean" if self.encoder else "last")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not self.encoder and pooling != "last":
            # the runtime pools decoders by the last token only (docs/guard-format.md)
            raise ValueError(f"decoder backbones only support pooling 'last', got {pooling!r}")
        self.pooling = pooling
        if config.architectures is None:
            config.architectures = [type(backbone).__name__]
        # the trunk yields final-norm hidden states; grabbing it before PEFT wraps the model keeps a direct
        # handle, and the LoRA layers PEFT injects in place are inside it
        self.trunk = backbone.base_model
        self.peft: PeftModel
        if adapter_dir is not None:
            self.peft = PeftModel.from_pretrained(backbone, str(adapter_dir), is_trainable=False)
        else:
            if isinstance(target_modules, str):
                targets: str | list[str] = target_modules
            elif target_modules is not None:
                targets = list(target_modules)
            else:
                targets = default_target_modules(config.model_type)
            lora_config = LoraConfig(
                r=r,
                lora_alpha=alpha,
                lora_dropout=dropout,
                target_modules=targets,
                bias="none",
                alora_invocation_tokens=None if invocation is None else [int(t) for t in invocation],
                # an aLoRA adapter saved as a causal-LM one loads in PEFT (AutoPeftModelForCausalLM) with the
                # offsets found on its own; the guard passes them itself either way
                task_type=None if invocation is None else "CAUSAL_LM",
            )
            self.peft = get_peft_model(backbone, lora_config)
        self.head = torch.nn.Linear(config.hidden_size, n_labels)
        # transformers 5.2x renamed the trunk's cache argument and output (the old names still work, with a warning)
        self._cache_argument = (
            "cache" if "cache" in inspect.signature(self.trunk.forward).parameters else "past_key_values"
        )

    @property
    def config(self) -> Any:
        return self.peft.base_model.model.config

    @property
    def n_labels(self) -> int:
        return self.head.out_features

    @property
    def invocation(self) -> list[int] | None:
        """The aLoRA invocation's token ids (None for a plain LoRA), as the adapter config records them."""
        tokens = getattr(self.peft.peft_config[self.peft.active_adapter], "alora_invocation_tokens", None)
        return None if tokens is None else list(tokens)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "last":
            last = attention_mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1)
        return hidden[:, 0]

    def alora_offsets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
        """PEFT's aLoRA offsets of right-padded rows that end with the invocation: per row, how many positions
        from the invocation's first token to the end of the padded row (the adapter applies to those)."""
        invocation = self.invocation
        assert invocation is not None
        n = len(invocation)
        lengths = attention_mask.sum(dim=1)
        width = input_ids.shape[1]
        if bool((lengths < n).any()):
            raise ValueError(f"an input is shorter than the {n}-token invocation it must end with")
        # the last n real tokens of every row; padding is on the right (inputs.collate)
        at = (lengths - n).unsqueeze(1) + torch.arange(n, device=input_ids.device)
        tails = torch.gather(input_ids, 1, at)
        expected = torch.tensor(invocation, device=input_ids.device)
        if not bool((tails == expected).all()):
            raise ValueError(
                "an aLoRA guard's inputs must end with its invocation tokens "
                "(loraguard_train.inputs.tokenize(..., invocation=model.invocation) appends them)"
            )
        return (width - (lengths - n)).tolist()

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [batch, tokens, n_embd] of right-padded inputs, with the adapter applied as
        the guard's activation says."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if not self.encoder:
            kwargs["use_cache"] = False
        if self.invocation is None:
            return self.trunk(**kwargs).last_hidden_state
        # PEFT finds aLoRA offsets only in its causal-LM forward; the trunk called directly would run the adapter
        # nowhere (a head-only probe with zero LoRA gradient), so the offsets go in explicitly
        offsets = self.alora_offsets(input_ids, attention_mask)
        with self.peft.base_model._enable_peft_forward_hooks(alora_offsets=offsets):
            return self.trunk(**kwargs).last_hidden_state

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled final-norm states [batch, n_embd] of right-padded inputs: the guard's head reads these."""
        if self.invocation is None:
            return self.pool(self.hidden(input_ids, attention_mask), attention_mask)
        return self.invocation_features(input_ids, attention_mask)

    def invocation_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """An aLoRA guard's features computed as the runtime computes them: the text before the invocation by the
        base alone into a K/V cache, then the invocation with the adapter on that cache.

        Equal to pooling `hidden` (the whole input in one pass, the adapter masked by offsets), but nothing before
        the invocation depends on the adapter, so that part runs without autograd and backward covers only the
        invocation's few tokens (bench/alora_train.py measures the step).
        """
        invocation = self.invocation
        assert invocation is not None
        self.alora_offsets(input_ids, attention_mask)  # refuses inputs that do not end with the invocation
        n = len(invocation)
        device = input_ids.device
        prefix_lengths = attention_mask.sum(dim=1) - n
        width = int(prefix_lengths.max())
        # the prefixes left-padded, so every row's text ends where the invocations start: sliding-window layers
        # (Gemma 3) place their window by cache index, which then matches each row's own positions
        pad = width - prefix_lengths.unsqueeze(1)
        columns = torch.arange(width, device=device).unsqueeze(0)
        prefix_ids = torch.gather(input_ids, 1, (columns - pad).clamp(min=0))
        prefix_mask = (columns >= pad).to(attention_mask.dtype)
        positions = (columns - pad).clamp(min=0)
        cache: dict[str, Any] = {}
        if width:
            with torch.no_grad(), self.peft.disable_adapter():
                prefix = self.trunk(
                    input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions, use_cache=True
                )
            cache[self._cache_argument] = getattr(prefix, self._cache_argument)
        tail = torch.tensor(invocation, device=device).expand(input_ids.shape[0], -1)
        mask = torch.cat([prefix_mask, torch.ones_like(tail, dtype=prefix_mask.dtype)], dim=1)
        with self.peft.base_model._enable_peft_forward_hooks(alora_offsets=[n] * input_ids.shape[0]):
            hidden = self.trunk(
                input_ids=tail,
                attention_mask=mask,
                position_ids=prefix_lengths.unsqueeze(1) + torch.arange(n, device=device),
                use_cache=True,
                **cache,
            ).last_hidden_state
        return hidden[:, -1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feats = self.features(input_ids, attention_mask)
        return self.head(feats.to(self.head.weight.dtype))

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        n_labels: int,
        pooling: str | None = None,
        r: int = DEFAULT_RANK,
        alpha: float = DEFAULT_ALPHA,
        dropout: float = DEFAULT_DROPOUT,
        target_modules: str | Sequence[str] | None = None,
        attn_implementation: str | None = None,
        invocation: Sequence[int] | None = None,
    ) -> GuardModel:
        """Build a fresh guard on a base given as an HF directory or a GGUF file."""
        backbone = load_backbone(source, attn_implementation=attn_implementation)
        return cls(
            backbone,
            n_labels,
            pooling=pooling,
            r=r,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            invocation=invocation,
        )


def load_checkpoint(
    ckpt_dir: str | os.PathLike[str], base: str | os.PathLike[str], attn_implementation: str | None = None
) -> tuple[GuardModel, dict[str, Any]]:
    """A saved guard on its base (HF directory or GGUF file), in eval mode, with its guard_config.json."""
    ckpt = Path(ckpt_dir)
    guard_config = json.loads((ckpt / "guard_config.json").read_text(encoding="utf-8"))
    if guard_config.get("format") != CHECKPOINT_FORMAT or guard_config.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{ckpt} is not a {CHECKPOINT_FORMAT} version {CHECKPOINT_VERSION} checkpoint")
    backbone = load_backbone(base, attn_implementation=attn_implementation)
    model = GuardModel(backbone, len(guard_config["labels"]), pooling=guard_config["pooling"], adapter_dir=ckpt)
    head = load_file(str(ckpt / "head.safetensors"))
    model.head.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
    return model.eval(), guard_config


def base_info_from_model(model: GuardModel, name: str | None = None, fingerprint: str = "") -> dict[str, Any]:
    """Defaults for guard_config.json's `base`; the fingerprint comes from the base GGUF (converter side)."""
    config = model.config
    return {
        "architecture": llama_cpp_arch(config.model_type),
        "n_embd": int(config.hidden_size),
        "n_layer": int(config.num_hidden_layers),
        "fingerprint": fingerprint,
        "name": name if name is not None else str(getattr(config, "_name_or_path", "") or config.model_type),
        "measured_types": [],
    }


def save_checkpoint(
    model: GuardModel,
    out_dir: str | os.PathLike[str],
    labels: Sequence[str],
    thresholds: Sequence[float],
    template_prompt: str,
    template_pair: str,
    parse_special: bool,
    pooling: str,
    base_info: Mapping[str, Any],
    invocation: str | None = None,
) -> Path:
    """Write the checkpoint directory of docs/guard-format.md, replacing out_dir atomically; `invocation` is the
    text of an aLoRA guard's invocation (its ids are in the adapter config).

    The directory is assembled next to out_dir and renamed into place, so a reader never sees a half-written
    checkpoint (an interrupted run leaves only a hidden temp dir behind).
    """
    out = Path(out_dir)
    labels = list(labels)
    thresholds = [float(t) for t in thresholds]
    if len(labels) != model.n_labels or len(thresholds) != model.n_labels:
        raise ValueError(f"need {model.n_labels} labels and thresholds, got {len(labels)} and {len(thresholds)}")
    if not labels or labels[0] != "unsafe" or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique and start with 'unsafe', got {labels}")
    if not all(0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"thresholds are probabilities in [0, 1], got {thresholds}")
    if pooling != model.pooling:
        raise ValueError(f"pooling {pooling!r} differs from the model's {model.pooling!r}")
    if "{prompt}" not in template_prompt or "{prompt}" not in template_pair or "{response}" not in template_pair:
        raise ValueError("templates must contain {prompt} (and {response} for the pair template)")
    if (invocation is None) != (model.invocation is None):
        raise ValueError("an aLoRA guard needs its invocation text, and a plain LoRA guard has none")
    base = base_info_from_model(model)
    base.update(base_info)
    if int(base["n_embd"]) != model.head.in_features:
        raise ValueError(f"base n_embd {base['n_embd']} != head input width {model.head.in_features}")

    guard_config = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "labels": labels,
        "thresholds": thresholds,
        "pooling": pooling,
        "template": {"prompt": template_prompt, "pair": template_pair, "parse_special": bool(parse_special)},
        "activation": "lora" if invocation is None else "alora",
        **({} if invocation is None else {"invocation": invocation}),
        "base": {
            "architecture": str(base["architecture"]),
            "n_embd": int(base["n_embd"]),
            "n_layer": int(base["n_layer"]),
            "fingerprint": str(base["fingerprint"]),
            "name": str(base["name"]),
            "measured_types": [str(t) for t in base.get("measured_types", [])],
        },
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.peft.save_pretrained(str(tmp), safe_serialization=True)
        # PEFT adds a model card; the checkpoint is exactly the files of the contract
        (tmp / "README.md").unlink(missing_ok=True)
        save_file(
            {
                "weight": model.head.weight.detach().to("cpu", torch.float32).contiguous(),
                "bias": model.head.bias.detach().to("cpu", torch.float32).contiguous(),
            },
            str(tmp / "head.safetensors"),
        )
        _write_json(tmp / "guard_config.json", guard_config)
        _write_json(tmp / "base_config.json", model.config.to_dict())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def _replace_dir(src: Path, dst: Path) -> None:
    # rename() cannot replace a non-empty directory, so an existing checkpoint is moved aside first and
    # only deleted once the new one is in place
    if not dst.exists():
        src.rename(dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old.rmdir()
    dst.rename(old)
    try:
        src.rename(dst)
    except BaseException:
        old.rename(dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def score_texts(
    model: GuardModel,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str | None] | None = None,
    template_prompt: str = DEFAULT_TEMPLATE_PROMPT,
    template_pair: str = DEFAULT_TEMPLATE_PAIR,
    parse_special: bool = False,
    batch_size: int = 16,
    max_length: int | None = None,
) -> np.ndarray:
    """Logits [N, n_labels] as float32, computed in eval mode and fp32 (what the runtime is compared to), on the
    runtime's token ids (inputs longer than max_length keep their end, as its default overflow policy does; an aLoRA
    guard's invocation is appended)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise TypeError("score_texts compares against the fp32 runtime; call model.float() first")
    ids = tokenize(
        tokenizer,
        prompts,
        responses,
        template_prompt,
        template_pair,
        parse_special,
        max_length,
        invocation=model.invocation or (),
    )
    return logits_of(model, ids, pad_id(tokenizer), batch_size)
