"""`loraguard-convert inspect`: summarize a guard GGUF."""

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFValueType

from . import keys
from .errors import ConvertError
from .gguf_read import GgufFile

_ACTIVATION_TEXT = {
    "lora": "lora (the adapter changes every token)",
    "alora": "alora (the adapter applies from the invocation on; do not load as a plain --lora)",
}
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)\.weight\.lora_b$")


def _f32(value: float) -> float:
    # The shortest decimal that round-trips through f32, so 0.3 prints as 0.3, not 0.30000001192092896.
    return float(str(np.float32(value)))


def guard_head(path: Path | str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The guard's linear head as the runtime applies it: logits = weight @ hidden + bias, weight of shape
    (n_labels, n_embd)."""
    guard = GgufFile(path)
    weight, bias = guard.floats(keys.HEAD_WEIGHT), guard.floats(keys.HEAD_BIAS)
    if weight is None or bias is None or not len(bias) or len(weight) % len(bias):
        raise ConvertError(f"{guard.path} has no usable head ({keys.HEAD_WEIGHT}, {keys.HEAD_BIAS})")
    return weight.reshape(len(bias), -1), bias


def inspect_guard(path: Path | str) -> dict[str, Any]:
    """Everything a user needs to know about a guard GGUF, as JSON-serializable data."""
    guard = GgufFile(path)
    general_type, adapter_type = guard.string(keys.GENERAL_TYPE), guard.string(keys.ADAPTER_TYPE)
    if general_type != "adapter":
        raise ConvertError(
            f"{guard.path} is not a guard but a {general_type or 'model'} GGUF (guards are LoRA adapters)"
        )
    if adapter_type != "lora":
        raise ConvertError(f"{guard.path} is a {adapter_type} adapter, not a guard (guards are LoRA adapters)")
    version = guard.integer(keys.VERSION)
    if version is None:
        raise ConvertError(f"{guard.path} is a plain LoRA adapter without a loraguard head")
    if version > keys.FORMAT_VERSION:
        raise ConvertError(
            f"{guard.path} has guard format version {version}; this loraguard-convert reads up to {keys.FORMAT_VERSION}"
        )

    def required(value: Any, key: str) -> Any:
        if value is None:
            raise ConvertError(f"{guard.path} is a damaged guard: {key} is missing")
        return value

    labels: list[str] = required(guard.strings(keys.LABELS), keys.LABELS)
    thresholds = required(guard.floats(keys.THRESHOLDS), keys.THRESHOLDS)
    n_embd: int = required(guard.integer(keys.BASE_N_EMBD), keys.BASE_N_EMBD)
    head_weight = required(guard.floats(keys.HEAD_WEIGHT), keys.HEAD_WEIGHT)
    head_bias = required(guard.floats(keys.HEAD_BIAS), keys.HEAD_BIAS)
    if len(thresholds) != len(labels) or len(head_bias) != len(labels) or len(head_weight) != len(labels) * n_embd:
        raise ConvertError(
            f"{guard.path} is a damaged guard: {len(labels)} labels, {len(thresholds)} thresholds, head weight of "
            f"{len(head_weight)} values (expected {len(labels)} x {n_embd}) and {len(head_bias)} biases"
        )

    activation = guard.string(keys.ACTIVATION) or "lora"
    invocation_text = guard.string(keys.ALORA_INVOCATION)
    invocation_ids = guard.integers(keys.ADAPTER_ALORA_INVOCATION_TOKENS, frozenset({GGUFValueType.UINT32}))
    if activation not in keys.ACTIVATIONS:
        raise ConvertError(f"{guard.path} has {keys.ACTIVATION} {activation!r}; known: {', '.join(keys.ACTIVATIONS)}")
    alora = activation == "alora"
    if alora and (not invocation_text or not invocation_ids):
        raise ConvertError(
            f"{guard.path} is a damaged aLoRA guard: it needs {keys.ALORA_INVOCATION} and "
            f"{keys.ADAPTER_ALORA_INVOCATION_TOKENS}"
        )
    if not alora and (invocation_text is not None or invocation_ids is not None):
        # stock llama.cpp would treat the file as an aLoRA while loraguard ran it on every token
        raise ConvertError(f"{guard.path} is a damaged guard: an aLoRA invocation without {keys.ACTIVATION} alora")
    if alora != (version >= keys.ALORA_FORMAT_VERSION):
        raise ConvertError(
            f"{guard.path} is a damaged guard: format version {version} with activation {activation!r} (aLoRA guards "
            f"are version {keys.ALORA_FORMAT_VERSION}, plain ones {keys.LORA_FORMAT_VERSION})"
        )

    ranks: set[int] = set()
    modules: set[str] = set()
    layers: set[int] = set()
    n_pairs = 0
    types: set[str] = set()
    for tensor in guard.tensors:
        types.add(tensor.tensor_type.name)
        if not tensor.name.endswith(".lora_b"):
            continue
        n_pairs += 1
        # llama.cpp takes the rank from lora_b's ne[0]: lora_a is transposed for token embeddings, lora_b never.
        ranks.add(int(tensor.shape[0]))
        match = _BLOCK_TENSOR.match(tensor.name)
        module = match.group(2) if match else tensor.name.removesuffix(".weight.lora_b")
        if match:
            layers.add(int(match.group(1)))
        modules.add(module)

    alpha = guard.number(keys.ADAPTER_LORA_ALPHA)
    return {
        "file": str(guard.path),
        "format_version": version,
        "labels": labels,
        "thresholds": [_f32(t) for t in thresholds],
        "pooling": required(guard.string(keys.POOLING), keys.POOLING),
        "template": {
            "prompt": required(guard.string(keys.TEMPLATE_PROMPT), keys.TEMPLATE_PROMPT),
            "pair": required(guard.string(keys.TEMPLATE_PAIR), keys.TEMPLATE_PAIR),
            "parse_special": bool(guard.boolean(keys.TEMPLATE_PARSE_SPECIAL)),
        },
        "activation": activation,
        "invocation": {"text": invocation_text, "ids": invocation_ids} if alora else None,
        "head": {"n_labels": len(labels), "n_embd": n_embd},
        "lora": {
            "ranks": sorted(ranks),
            "alpha": None if alpha is None else _f32(alpha),
            "target_modules": sorted(modules),
            "n_tensor_pairs": n_pairs,
            "layers": sorted(layers),
            "tensor_types": sorted(types),
        },
        "base": {
            "architecture": required(guard.string(keys.BASE_ARCHITECTURE), keys.BASE_ARCHITECTURE),
            "n_embd": n_embd,
            "n_layer": required(guard.integer(keys.BASE_N_LAYER), keys.BASE_N_LAYER),
            "fingerprint": required(guard.string(keys.BASE_FINGERPRINT), keys.BASE_FINGERPRINT),
            "name": required(guard.string(keys.BASE_NAME), keys.BASE_NAME),
            "measured_types": guard.strings(keys.BASE_MEASURED_TYPES) or [],
        },
    }


def format_report(info: dict[str, Any]) -> str:
    lora, base, template = info["lora"], info["base"], info["template"]
    width = max(len(label) for label in info["labels"])
    lines = [
        f"guard:            {info['file']}",
        f"format version:   {info['format_version']}",
        "labels:",
        *(f"  {label:<{width}}  threshold {t:g}" for label, t in zip(info["labels"], info["thresholds"], strict=True)),
        f"pooling:          {info['pooling']}",
        f"prompt template:  {template['prompt']!r}",
        f"pair template:    {template['pair']!r}",
        f"parse special:    {'yes' if template['parse_special'] else 'no'}",
        f"activation:       {_ACTIVATION_TEXT[info['activation']]}",
        *(
            [f"invocation:       {info['invocation']['text']!r} = ids {info['invocation']['ids']}"]
            if info["invocation"]
            else []
        ),
        f"head:             {info['head']['n_labels']} x {info['head']['n_embd']}",
        f"LoRA rank:        {', '.join(str(r) for r in lora['ranks'])}",
        f"LoRA alpha:       {lora['alpha']:g}" if lora["alpha"] is not None else "LoRA alpha:       none (scale 1)",
        f"target modules:   {', '.join(lora['target_modules'])}",
        f"LoRA tensors:     {lora['n_tensor_pairs']} pairs in {len(lora['layers'])} layers, "
        f"{', '.join(lora['tensor_types'])}",
        f"base:             {base['name']} ({base['architecture']})",
        f"base size:        n_embd {base['n_embd']}, n_layer {base['n_layer']}",
        f"base fingerprint: {base['fingerprint']}",
    ]
    if base["measured_types"]:
        lines.append(f"measured on:      {', '.join(base['measured_types'])}")
    return "\n".join(lines)
