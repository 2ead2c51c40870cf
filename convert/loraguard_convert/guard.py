"""`loraguard-convert guard`: checkpoint directory -> guard GGUF (docs/guard-format.md).

The LoRA tensors come from the pinned convert_lora_to_gguf.py unchanged, so stock llama.cpp loads the guard as
a plain adapter; the head, labels and templates are added as `loraguard.*` key/values, which it ignores. An aLoRA
guard's invocation ids are written by that converter too (`adapter.alora.invocation_tokens`, from the PEFT
config), its text and activation by us.
"""

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType
from tqdm import tqdm

from . import keys
from .atomic import atomic_output, check_output_path
from .base import check_outtype
from .checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_CONFIG, GUARD_CONFIG, Checkpoint, load_checkpoint
from .errors import ConvertError
from .fingerprint import describe, fingerprint_of
from .gguf_read import GgufFile, KeyValue, write_copy
from .llama_cpp_source import converter_script
from .subproc import run_converter

_LORA_SUFFIXES = (".lora_a", ".lora_b")
# F32 keeps native equal to PEFT to 1e-4; F16 halves the file at ~1e-3 relative error in the adapter's delta.
DEFAULT_GUARD_OUTTYPE = "f32"


@dataclass(frozen=True)
class _Base:
    architecture: str
    n_embd: int
    n_layer: int
    fingerprint: str
    name: str


def convert_guard(
    ckpt_dir: Path | str,
    out_path: Path | str,
    base_gguf: Path | str | None = None,
    *,
    outtype: str = DEFAULT_GUARD_OUTTYPE,
    quiet: bool = True,
) -> Path:
    """Convert a checkpoint directory to a guard GGUF at OUT_PATH and return OUT_PATH.

    The base fingerprint comes from guard_config.json, or is computed from BASE_GGUF; when both are there
    they must agree. OUTTYPE is the LoRA tensors' type (the head stays F32). Nothing is written unless the
    whole conversion succeeds.
    """
    check_outtype(outtype)
    out_path = check_output_path(Path(out_path))
    ckpt = load_checkpoint(ckpt_dir)
    base = _resolve_base(ckpt, Path(base_gguf) if base_gguf is not None else None, out_path)
    script = converter_script("convert_lora_to_gguf.py")
    # disable=None: no bar when stderr is not a terminal, so logs and error output stay clean.
    with (
        tqdm(total=2, desc="loraguard-convert guard", unit="step", disable=True if quiet else None, leave=False) as bar,
        # On Windows the reader's memory map keeps the converted file open; a leftover there is harmless.
        tempfile.TemporaryDirectory(prefix="loraguard-convert-", ignore_cleanup_errors=True) as tmp,
    ):
        bar.set_postfix_str("converting LoRA")
        lora = GgufFile(_run_lora_converter(script, ckpt, Path(tmp), outtype))
        _check_converted(lora, ckpt, base)
        bar.update()
        bar.set_postfix_str("writing guard")
        with atomic_output(out_path) as tmp_out:
            _write_guard(lora, ckpt, base, tmp_out)
        bar.update()
    return out_path


def _resolve_base(ckpt: Checkpoint, base_gguf: Path | None, out_path: Path) -> _Base:
    spec = ckpt.guard.base
    fingerprint, name = spec.fingerprint, spec.name
    if base_gguf is not None:
        if base_gguf.resolve() == out_path.resolve():
            raise ConvertError(f"the output {out_path} would overwrite the base model --base {base_gguf}")
        base_file = GgufFile(base_gguf)
        actual = describe(base_file)
        for what, trained_on, given in (
            ("architecture", spec.architecture, actual["architecture"]),
            ("n_embd", spec.n_embd, actual["n_embd"]),
            ("n_layer", spec.n_layer, actual["n_layer"]),
        ):
            if trained_on != given:
                raise ConvertError(
                    f"--base {base_gguf} has {what} {given} but the guard was trained on a base with "
                    f"{what} {trained_on}"
                )
        computed = fingerprint_of(base_file)
        if fingerprint is not None and fingerprint != computed:
            raise ConvertError(
                f"base fingerprint mismatch: {GUARD_CONFIG} says {fingerprint} but --base {base_gguf} is {computed}; "
                "the guard was trained on a different base model"
            )
        fingerprint, name = computed, name or actual["name"]
    if fingerprint is None:
        raise ConvertError(
            f"{GUARD_CONFIG} has no base.fingerprint: pass --base BASE.gguf (the base model GGUF the guard runs on)"
        )
    return _Base(spec.architecture, spec.n_embd, spec.n_layer, fingerprint, name)


def _run_lora_converter(script: Path, ckpt: Checkpoint, tmp: Path, outtype: str) -> Path:
    # The converter names the model after the adapter directory, so keep the checkpoint's name.
    adapter_dir = tmp / (ckpt.directory.resolve().name or "guard")
    base_dir = tmp / "base"
    adapter_dir.mkdir()
    base_dir.mkdir()
    shutil.copyfile(ckpt.directory / ADAPTER_WEIGHTS, adapter_dir / ADAPTER_WEIGHTS)
    # The converter reads lora_alpha only: give it the folded alpha and nothing that would contradict it.
    patched = dict(ckpt.lora.config, lora_alpha=ckpt.lora.alpha, use_rslora=False, rank_pattern={}, alpha_pattern={})
    (adapter_dir / ADAPTER_CONFIG).write_text(json.dumps(patched, indent=2), encoding="utf-8")
    base_config = json.loads((ckpt.directory / BASE_CONFIG).read_text(encoding="utf-8"))
    # A base trained from a GGUF file carries transformers' {"quant_method": "gguf"} marker; its weights were
    # dequantized, and the converter, which only needs the architecture and shapes, refuses any quant method.
    if (base_config.get("quantization_config") or {}).get("quant_method") == "gguf":
        del base_config["quantization_config"]
    (base_dir / "config.json").write_text(json.dumps(base_config, indent=2), encoding="utf-8")
    out = tmp / "lora.gguf"
    run_converter(
        script,
        [str(adapter_dir), "--base", str(base_dir), "--outfile", str(out), "--outtype", outtype],
        # Its log is a list of tensor names; a failure's tail still reaches the user through ConverterFailed.
        echo=False,
    )
    return out


def _check_converted(lora: GgufFile, ckpt: Checkpoint, base: _Base) -> None:
    if lora.string(keys.GENERAL_TYPE) != "adapter" or lora.string(keys.ADAPTER_TYPE) != "lora":
        raise ConvertError(f"convert_lora_to_gguf.py did not produce a LoRA adapter ({lora.path})")
    arch = lora.string(keys.GENERAL_ARCHITECTURE)
    if arch != base.architecture:
        raise ConvertError(
            f"{BASE_CONFIG} describes a llama.cpp {arch!r} model but {GUARD_CONFIG} says base.architecture "
            f"{base.architecture!r}"
        )
    alpha = lora.field(keys.ADAPTER_LORA_ALPHA)
    if alpha is None or alpha.types != [GGUFValueType.FLOAT32]:
        raise ConvertError(f"convert_lora_to_gguf.py wrote no F32 {keys.ADAPTER_LORA_ALPHA}")
    invocation = lora.integers(keys.ADAPTER_ALORA_INVOCATION_TOKENS, frozenset({GGUFValueType.UINT32}))
    if invocation != ckpt.lora.invocation_tokens:
        raise ConvertError(
            f"convert_lora_to_gguf.py wrote {keys.ADAPTER_ALORA_INVOCATION_TOKENS} = {invocation} for an adapter "
            f"whose alora_invocation_tokens are {ckpt.lora.invocation_tokens}"
        )
    names = [t.name for t in lora.tensors]
    stray = [n for n in names if not n.endswith(_LORA_SUFFIXES)]
    if stray or not names:
        raise ConvertError(f"convert_lora_to_gguf.py wrote unexpected tensors {stray[:3]} (or none at all)")
    n_pairs = len(names) // 2
    if n_pairs < len(ckpt.lora.ranks):
        # Converters drop modules llama.cpp never runs (e.g. BERT's pooler): fine if training did not use them either.
        print(
            f"loraguard-convert: warning: {len(ckpt.lora.ranks)} adapted modules became only {n_pairs} LoRA tensor "
            f"pairs; llama.cpp may not apply part of the adapter",
            file=sys.stderr,
        )


def _write_guard(lora: GgufFile, ckpt: Checkpoint, base: _Base, path: Path) -> None:
    guard = ckpt.guard
    f32_array = (GGUFValueType.ARRAY, GGUFValueType.FLOAT32)
    alora = guard.activation == "alora"
    version = keys.ALORA_FORMAT_VERSION if alora else keys.LORA_FORMAT_VERSION
    guard_kvs: list[KeyValue] = [
        (keys.VERSION, version, GGUFValueType.UINT32, None),
        (keys.LABELS, guard.labels, GGUFValueType.ARRAY, GGUFValueType.STRING),
        (keys.THRESHOLDS, guard.thresholds, *f32_array),
        (keys.HEAD_WEIGHT, ckpt.head_weight.reshape(-1).tolist(), *f32_array),
        (keys.HEAD_BIAS, ckpt.head_bias.reshape(-1).tolist(), *f32_array),
        (keys.POOLING, guard.pooling, GGUFValueType.STRING, None),
        (keys.TEMPLATE_PROMPT, guard.template_prompt, GGUFValueType.STRING, None),
        (keys.TEMPLATE_PAIR, guard.template_pair, GGUFValueType.STRING, None),
        (keys.TEMPLATE_PARSE_SPECIAL, guard.parse_special, GGUFValueType.BOOL, None),
        (keys.BASE_ARCHITECTURE, base.architecture, GGUFValueType.STRING, None),
        (keys.BASE_N_EMBD, base.n_embd, GGUFValueType.UINT32, None),
        (keys.BASE_N_LAYER, base.n_layer, GGUFValueType.UINT32, None),
        (keys.BASE_FINGERPRINT, base.fingerprint, GGUFValueType.STRING, None),
        (keys.BASE_NAME, base.name, GGUFValueType.STRING, None),
    ]
    if alora:
        guard_kvs += [
            (keys.ACTIVATION, guard.activation, GGUFValueType.STRING, None),
            (keys.ALORA_INVOCATION, guard.invocation, GGUFValueType.STRING, None),
        ]
    # GGUF has no empty arrays, and the key is optional.
    if guard.base.measured_types:
        guard_kvs.append(
            (keys.BASE_MEASURED_TYPES, guard.base.measured_types, GGUFValueType.ARRAY, GGUFValueType.STRING)
        )
    write_copy(lora, path, base.architecture, guard_kvs)
