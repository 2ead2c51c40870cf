"""Read and validate a guard checkpoint directory (docs/guard-format.md) before anything is written."""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from safetensors.numpy import load_file

from . import keys
from .errors import ConvertError
from .fingerprint import FINGERPRINT_PREFIX

CHECKPOINT_FORMAT = "loraguard-checkpoint"
CHECKPOINT_VERSION = 1

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD = "head.safetensors"
GUARD_CONFIG = "guard_config.json"
BASE_CONFIG = "base_config.json"

_REQUIRED_FILES = {
    ADAPTER_CONFIG: "PEFT LoRA config from save_pretrained",
    ADAPTER_WEIGHTS: "PEFT LoRA weights from save_pretrained",
    HEAD: "classification head",
    GUARD_CONFIG: "labels, thresholds and templates",
    BASE_CONFIG: "the base model's Hugging Face config.json",
}

# PEFT LoRA options whose effect a llama.cpp LoRA adapter (y += scale * B A x) cannot reproduce.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA",
    "use_qalora": "QALoRA",
    "lora_bias": "a bias on lora_B",
    "fan_in_fan_out": "Conv1D (fan_in_fan_out) weights",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token embeddings",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "kasa_config": "KaSA",
    "monteclora_config": "MonteCLoRA",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "Arrow adapter routing",
}

# PEFT's key suffixes, mapped to which LoRA factor they hold.
_FACTOR_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_embedding_A": "A",
    ".lora_embedding_B": "B",
}
_PEFT_PREFIX = "base_model.model."
_FINGERPRINT_RE = re.compile(rf"^{re.escape(FINGERPRINT_PREFIX)}[0-9a-f]{{16}}$")


@dataclass(frozen=True)
class BaseSpec:
    architecture: str
    n_embd: int
    n_layer: int
    fingerprint: str | None
    name: str
    measured_types: list[str]


@dataclass(frozen=True)
class GuardSpec:
    labels: list[str]
    thresholds: list[float]
    pooling: str
    template_prompt: str
    template_pair: str
    parse_special: bool
    base: BaseSpec
    # "alora": the adapter applies from the invocation on (its ids are the adapter config's alora_invocation_tokens)
    activation: str = "lora"
    invocation: str | None = None


@dataclass(frozen=True)
class LoraSpec:
    config: dict[str, Any]
    # scale = alpha / rank for every module, as llama.cpp computes it, with rsLoRA and patterns folded in.
    alpha: float
    ranks: dict[str, int]
    # aLoRA: the invocation's token ids (PEFT's alora_invocation_tokens); None for a plain LoRA
    invocation_tokens: list[int] | None = None


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    guard: GuardSpec
    lora: LoraSpec
    head_weight: npt.NDArray[np.float32]
    head_bias: npt.NDArray[np.float32]
    base_config: dict[str, Any]


def load_checkpoint(ckpt_dir: Path | str) -> Checkpoint:
    """Read every file of the checkpoint and check it against the contract; raise ConvertError on any problem."""
    directory = Path(ckpt_dir)
    if not directory.is_dir():
        raise ConvertError(f"checkpoint {directory} is not a directory")
    missing = [f"{name} ({what})" for name, what in _REQUIRED_FILES.items() if not (directory / name).is_file()]
    if missing:
        raise ConvertError(f"checkpoint {directory} is missing {', '.join(missing)}")
    guard = _parse_guard_config(_load_json(directory / GUARD_CONFIG), directory / GUARD_CONFIG)
    lora = _parse_lora(_load_json(directory / ADAPTER_CONFIG), directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS)
    weight, bias = _load_head(directory / HEAD, guard)
    base_config = _load_json(directory / BASE_CONFIG)
    _check_base_config(base_config, directory / BASE_CONFIG, guard.base)
    if (guard.activation == "alora") != (lora.invocation_tokens is not None):
        raise ConvertError(
            f"checkpoint {directory}: {GUARD_CONFIG} says activation {guard.activation!r} but {ADAPTER_CONFIG} "
            + ("has no alora_invocation_tokens" if lora.invocation_tokens is None else "is an aLoRA adapter")
            + "; both come from one training run, so the files are mixed up"
        )
    if lora.invocation_tokens is not None and guard.pooling != "last":
        raise ConvertError(f"{directory / GUARD_CONFIG}: an aLoRA guard reads its invocation's last token (pooling "
                           f"'last'), not {guard.pooling!r}")
    return Checkpoint(directory, guard, lora, weight, bias, base_config)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConvertError(f"{path} must hold a JSON object")
    return data


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return (isinstance(value, int | float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _parse_guard_config(cfg: dict[str, Any], path: Path) -> GuardSpec:
    def fail(message: str) -> ConvertError:
        return ConvertError(f"{path}: {message}")

    if cfg.get("format") != CHECKPOINT_FORMAT:
        raise fail(f"format must be {CHECKPOINT_FORMAT!r}, got {cfg.get('format')!r}")
    version = cfg.get("version")
    if not _is_int(version) or not 1 <= version <= CHECKPOINT_VERSION:
        raise fail(f"version {version!r} is not supported (this converter reads version {CHECKPOINT_VERSION})")

    labels = cfg.get("labels")
    if not _is_str_list(labels) or not labels or not all(labels):
        raise fail("labels must be a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise fail(f"labels must be unique, got {labels}")
    if labels[0] != "unsafe":
        raise fail(f"the first label must be 'unsafe', got {labels[0]!r}")
    thresholds = cfg.get("thresholds")
    if not isinstance(thresholds, list) or not all(_is_number(t) and 0.0 <= t <= 1.0 for t in thresholds):
        raise fail("thresholds must be a list of probabilities in [0, 1]")
    if len(thresholds) != len(labels):
        raise fail(f"{len(labels)} labels but {len(thresholds)} thresholds")

    pooling = cfg.get("pooling")
    if pooling not in keys.POOLINGS:
        raise fail(f"pooling must be one of {', '.join(keys.POOLINGS)}, got {pooling!r}")

    template = cfg.get("template")
    if not isinstance(template, dict):
        raise fail("template must be an object with prompt, pair and parse_special")
    prompt, pair = template.get("prompt"), template.get("pair")
    if not isinstance(prompt, str) or "{prompt}" not in prompt:
        raise fail("template.prompt must be a string containing {prompt}")
    if not isinstance(pair, str) or "{prompt}" not in pair or "{response}" not in pair:
        raise fail("template.pair must be a string containing {prompt} and {response}")
    parse_special = template.get("parse_special", False)
    if not isinstance(parse_special, bool):
        raise fail("template.parse_special must be true or false")

    base = cfg.get("base")
    if not isinstance(base, dict):
        raise fail("base must be an object describing the base model")
    architecture, n_embd, n_layer = base.get("architecture"), base.get("n_embd"), base.get("n_layer")
    if not isinstance(architecture, str) or not architecture:
        raise fail("base.architecture must be a llama.cpp architecture name such as 'llama'")
    if not _is_int(n_embd) or n_embd <= 0 or not _is_int(n_layer) or n_layer <= 0:
        raise fail("base.n_embd and base.n_layer must be positive integers")
    fingerprint = base.get("fingerprint") or None
    if fingerprint is not None and (not isinstance(fingerprint, str) or not _FINGERPRINT_RE.match(fingerprint)):
        raise fail(f"base.fingerprint must look like {FINGERPRINT_PREFIX}<16 hex digits>, got {fingerprint!r}")
    name = base.get("name", "")
    measured_types = base.get("measured_types", [])
    if not isinstance(name, str) or not _is_str_list(measured_types):
        raise fail("base.name must be a string and base.measured_types a list of strings")

    activation = cfg.get("activation", "lora")
    if activation not in keys.ACTIVATIONS:
        raise fail(f"activation must be one of {', '.join(keys.ACTIVATIONS)}, got {activation!r}")
    invocation = cfg.get("invocation")
    if activation == "alora" and (not isinstance(invocation, str) or not invocation):
        raise fail("activation 'alora' needs the invocation text (a non-empty string)")
    if activation == "lora" and invocation is not None:
        raise fail("an invocation belongs to activation 'alora' only")

    return GuardSpec(
        labels=labels,
        thresholds=[float(t) for t in thresholds],
        pooling=pooling,
        template_prompt=prompt,
        template_pair=pair,
        parse_special=parse_special,
        base=BaseSpec(architecture, n_embd, n_layer, fingerprint, name, measured_types),
        activation=activation,
        invocation=invocation,
    )


def _parse_lora(cfg: dict[str, Any], config_path: Path, weights_path: Path) -> LoraSpec:
    def fail(message: str) -> ConvertError:
        return ConvertError(f"{config_path}: {message}")

    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise ConvertError(f"unsupported PEFT config type {peft_type}: only LoRA")
    for option, what in _UNSUPPORTED_OPTIONS.items():
        if cfg.get(option):
            raise fail(f"{what} ({option}={cfg[option]!r}) is not supported: llama.cpp applies plain LoRA only")
    if cfg.get("modules_to_save"):
        raise fail(
            f"modules_to_save={cfg['modules_to_save']!r} is not supported: a LoRA GGUF cannot carry fully trained "
            "modules (train the classifier as the separate head)"
        )
    if cfg.get("bias", "none") != "none":
        raise fail(f"bias={cfg['bias']!r} is not supported: llama.cpp LoRA adapters carry no biases (use 'none')")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not _is_int(r) or r <= 0 or not _is_number(alpha):
        raise fail("r must be a positive integer and lora_alpha a number")
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, dict) or not isinstance(alpha_pattern, dict):
        raise fail("rank_pattern and alpha_pattern must be objects")
    use_rslora = bool(cfg.get("use_rslora", False))

    ranks = _read_lora_ranks(weights_path)
    effective_alphas: dict[str, float] = {}
    for module, rank in ranks.items():
        expected_rank = _pattern_value(rank_pattern, module, r)
        if rank != expected_rank:
            raise ConvertError(
                f"{weights_path}: {module} has rank {rank} but {config_path.name} gives it rank {expected_rank}"
            )
        module_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        # llama.cpp scales by alpha / rank; rsLoRA scales by alpha / sqrt(rank), i.e. alpha * sqrt(rank) / rank.
        effective_alphas[module] = module_alpha * math.sqrt(rank) if use_rslora else module_alpha
    (first_module, first_alpha), *_ = effective_alphas.items()
    for module, module_alpha in effective_alphas.items():
        if not math.isclose(module_alpha, first_alpha, rel_tol=1e-6):
            raise fail(
                "rank_pattern/alpha_pattern/use_rslora scale modules inconsistently for llama.cpp, which applies "
                f"one alpha per adapter as alpha / rank: {first_module} needs alpha {first_alpha:g}, {module} needs "
                f"{module_alpha:g}; retrain with one alpha (and with rsLoRA, one rank)"
            )
    invocation_tokens = cfg.get("alora_invocation_tokens")
    if invocation_tokens is not None and (
        not isinstance(invocation_tokens, list)
        or not invocation_tokens
        or not all(_is_int(t) and 0 <= t < 2**32 for t in invocation_tokens)
    ):
        raise fail(f"alora_invocation_tokens must be a non-empty list of token ids, got {invocation_tokens!r}")
    return LoraSpec(config=cfg, alpha=first_alpha, ranks=ranks, invocation_tokens=invocation_tokens)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches a dotted suffix of the module name."""
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return value
        except re.error as e:
            raise ConvertError(f"{ADAPTER_CONFIG}: pattern {pattern!r} is not a valid regular expression: {e}") from e
    return default


def _safetensors_shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    try:
        with safe_open(path, framework="numpy") as f:
            shapes = {}
            for key in f.keys():  # noqa: SIM118 - safe_open objects are not iterable
                tensor = f.get_slice(key)
                shapes[key] = (str(tensor.get_dtype()), tuple(int(d) for d in tensor.get_shape()))
            return shapes
    # safetensors reports malformed files with its own exception type, which it does not export stably.
    except Exception as e:
        raise ConvertError(f"{path} is not a valid safetensors file: {e}") from e


def _read_lora_ranks(path: Path) -> dict[str, int]:
    """Map each adapted module (PEFT name, e.g. model.layers.0.self_attn.q_proj) to its rank, checking the pairs."""
    factors: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, (_dtype, shape) in _safetensors_shapes(path).items():
        suffix = next((s for s in _FACTOR_SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(_PEFT_PREFIX):
            raise ConvertError(f"{path}: unexpected tensor {key!r}: a LoRA adapter holds only lora_A/lora_B pairs")
        module = key[len(_PEFT_PREFIX) : -len(suffix)]
        factors.setdefault(module, {})[_FACTOR_SUFFIXES[suffix]] = shape
    if not factors:
        raise ConvertError(f"{path} holds no LoRA tensors")
    ranks = {}
    for module, pair in factors.items():
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None:
            have, lack = ("B", "A") if a is None else ("A", "B")
            raise ConvertError(f"{path}: {module} has lora_{have} but no lora_{lack}")
        if len(a) != 2 or len(b) != 2 or a[0] != b[1] or a[0] == 0:
            raise ConvertError(f"{path}: {module} has inconsistent LoRA shapes A{list(a)} B{list(b)}")
        ranks[module] = a[0]
    return ranks


def _load_head(path: Path, guard: GuardSpec) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    shapes = _safetensors_shapes(path)
    if set(shapes) != {"weight", "bias"}:
        raise ConvertError(f"{path} must hold exactly the tensors 'weight' and 'bias', found {sorted(shapes)}")
    for name, (dtype, _shape) in shapes.items():
        if dtype != "F32":
            raise ConvertError(f"{path}: {name} is {dtype}, the head must be F32")
    weight_shape, bias_shape = shapes["weight"][1], shapes["bias"][1]
    n_labels, n_embd = len(guard.labels), guard.base.n_embd
    if len(weight_shape) != 2 or len(bias_shape) != 1:
        raise ConvertError(
            f"{path}: weight must be [n_labels, n_embd] and bias [n_labels], "
            f"got {list(weight_shape)} and {list(bias_shape)}"
        )
    if weight_shape[1] != n_embd:
        raise ConvertError(
            f"{path}: head width {weight_shape[1]} does not match the base model's n_embd {n_embd} "
            f"(base.n_embd in {GUARD_CONFIG})"
        )
    if weight_shape[0] != n_labels or bias_shape[0] != n_labels:
        raise ConvertError(
            f"{path}: weight has {weight_shape[0]} rows and bias {bias_shape[0]} entries but {GUARD_CONFIG} lists "
            f"{n_labels} labels"
        )
    try:
        tensors = load_file(path)
    except Exception as e:
        raise ConvertError(f"{path} is not a valid safetensors file: {e}") from e
    weight, bias = tensors["weight"].astype(np.float32), tensors["bias"].astype(np.float32)
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ConvertError(f"{path} contains NaN or infinite values")
    return weight, bias


def _check_base_config(cfg: dict[str, Any], path: Path, base: BaseSpec) -> None:
    """Catch a base_config.json of the wrong model, where it names its width and depth the common way."""
    for hf_key, ours, what in (("hidden_size", base.n_embd, "n_embd"), ("num_hidden_layers", base.n_layer, "n_layer")):
        theirs = cfg.get(hf_key)
        if _is_int(theirs) and theirs != ours:
            raise ConvertError(f"{path}: {hf_key} is {theirs} but {GUARD_CONFIG} has base.{what} {ours}")
