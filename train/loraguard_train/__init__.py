"""Training side of loraguard: guard model, tokenization and checkpoint writing (docs/guard-format.md)."""

from loraguard_train.model import (
    DEFAULT_ALPHA,
    DEFAULT_DROPOUT,
    DEFAULT_RANK,
    DEFAULT_TEMPLATE_PAIR,
    DEFAULT_TEMPLATE_PROMPT,
    GuardModel,
    base_info_from_model,
    default_target_modules,
    encode,
    is_encoder,
    llama_cpp_arch,
    load_backbone,
    load_checkpoint,
    load_tokenizer,
    save_checkpoint,
    score_texts,
)
from loraguard_train.template import render, render_all, token_ids

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_DROPOUT",
    "DEFAULT_RANK",
    "DEFAULT_TEMPLATE_PAIR",
    "DEFAULT_TEMPLATE_PROMPT",
    "GuardModel",
    "base_info_from_model",
    "default_target_modules",
    "encode",
    "is_encoder",
    "llama_cpp_arch",
    "load_backbone",
    "load_checkpoint",
    "load_tokenizer",
    "render",
    "render_all",
    "save_checkpoint",
    "score_texts",
    "token_ids",
]
