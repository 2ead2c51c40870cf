"""The native runtime on real llama.cpp with a real model (stories260K) and a guard made by the converter."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from chat_check import assert_chat_bit_identical
from gguf_edit import edit_gguf
from loraguard_convert import guard_head
from loraguard_cpp import (
    FileAccessError,
    FileFormatError,
    Guard,
    InputTooLongError,
    InvalidInputError,
    ModelMismatchError,
)

TEMPLATE = "user: {prompt}"


@pytest.fixture(scope="session")
def guard(stories_gguf: Path, stories_guard: Path) -> Guard:
    g = Guard(stories_gguf, stories_guard, n_threads=1, exact=True, chat_n_ctx=512)
    yield g
    g.close()


# -- guard path ------------------------------------------------------------------------------------------------


def test_guard_scores_match_llama_cpp_python_with_the_same_lora(
    guard: Guard, stories_gguf: Path, stories_guard: Path, real_texts: list[str]
) -> None:
    """Contender 4 of the benchmark, as a reference: stock llama-cpp-python with the guard as its LoRA, in
    embeddings mode (every token output), last-token pooling, and the head in numpy."""
    import llama_cpp

    weight, bias = guard_head(stories_guard)
    llm = llama_cpp.Llama(
        model_path=str(stories_gguf), lora_path=str(stories_guard), embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST, n_ctx=512, n_batch=512, n_threads=1, type_k=0, type_v=0,
        verbose=False,
    )
    texts = [t for t in real_texts if len(guard.tokenize(t)) <= 500]
    ours = guard.logits(texts)
    for text, row in zip(texts, ours, strict=True):
        rendered = TEMPLATE.replace("{prompt}", text)
        assert guard.tokenize(text) == llm.tokenize(rendered.encode(), add_bos=True, special=False)
        hidden = np.asarray(llm.embed(rendered, normalize=False), dtype=np.float32)
        ref = weight @ hidden + bias
        np.testing.assert_allclose(row, ref, atol=1e-3, rtol=1e-3)
    assert np.abs(ours).max() > 0.5, "head too weak for this comparison to mean anything"


def test_lora_changes_the_scores(
    stories_gguf: Path, stories_guard: Path, tmp_path: Path, real_texts: list[str]
) -> None:
    """The same head on a guard whose LoRA B is zeroed must score differently: the delta is really applied."""
    zero_b = edit_gguf(stories_guard, tmp_path / "zero-b.gguf",
                       tensor_data=lambda name, d: np.zeros_like(d) if name.endswith(".lora_b") else d)
    with Guard(stories_gguf, stories_guard, n_threads=1) as g, Guard(stories_gguf, zero_b, n_threads=1) as g0:
        assert np.abs(g.logits(real_texts[:6]) - g0.logits(real_texts[:6])).max() > 0.05


def test_batch_matches_single_within_documented_tolerance(guard: Guard, real_texts: list[str]) -> None:
    texts = real_texts[:16]
    batch = guard.classify_batch(texts)
    single = np.stack([guard.classify_batch([t])[0] for t in texts])
    assert batch.dtype == np.float32 and batch.shape == (len(texts), len(guard.labels))
    np.testing.assert_allclose(batch, single, atol=0.01)
    near = np.abs(single - guard.thresholds) < 0.01
    assert np.array_equal((batch >= guard.thresholds)[~near], (single >= guard.thresholds)[~near])


def test_isolated_scores_are_bit_identical_to_single_calls(
    stories_gguf: Path, stories_guard: Path, real_texts: list[str]
) -> None:
    texts = real_texts[:8]
    with Guard(stories_gguf, stories_guard, n_threads=1, isolated=True) as g:
        batch = g.logits(texts)
        single = np.stack([g.logits([t])[0] for t in texts])
    assert np.array_equal(batch, single)


def test_threads_give_serial_results(guard: Guard, real_texts: list[str]) -> None:
    texts = real_texts[:10]
    serial = [guard.logits([t])[0] for t in texts]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for call in range(50):
                i = (worker + call) % len(texts)
                results[(worker, call)] = guard.logits([texts[i]])[0]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 200
    for (worker, call), row in results.items():
        assert np.array_equal(row, serial[(worker + call) % len(texts)])


def test_classify_result_and_pair_template(guard: Guard) -> None:
    result = guard.classify("How do I bake bread?")
    assert set(result.scores) == set(guard.labels)
    assert all(0.0 <= p <= 1.0 for p in result.scores.values())
    assert result.flagged == bool(result.flagged_labels)
    pair = guard.tokenize("How do I bake bread?", "Mix flour and water.")
    assert pair[: len(guard.tokenize("How do I bake bread?"))] == guard.tokenize("How do I bake bread?")
    assert guard.classify("How do I bake bread?", "Mix flour and water.").scores != result.scores


def test_text_past_the_context(stories_gguf: Path, stories_guard: Path) -> None:
    long = "the cat sat on the mat and " * 200
    other_start = "a dog ran far away " * 150 + "the cat sat on the mat and " * 100
    with Guard(stories_gguf, stories_guard, n_threads=1, n_ctx=64, overflow="error") as g:
        with pytest.raises(InputTooLongError, match="tokens"):
            g.classify(long)
        assert g.classify("short text").scores  # the policy only concerns long inputs
    with Guard(stories_gguf, stories_guard, n_threads=1, n_ctx=64, overflow="keep_end") as keep_end:
        # keep_end runs BOS + the last 63 tokens: texts that end alike score alike, bit for bit
        assert keep_end.tokenize(long)[-63:] == keep_end.tokenize(other_start)[-63:]
        kept = keep_end.logits([long, other_start])
        assert np.array_equal(kept[0], kept[1])
    with Guard(stories_gguf, stories_guard, n_threads=1, n_ctx=64) as default:
        # The default reads every token: a long text's start is scored too, so text placed ahead of a long tail
        # cannot pass unread (keep_end above cannot tell these two texts apart)
        text = default.model.tokenize(other_start, add_special=False)  # the text's tokens, as the windows cut it
        windows = default.sequences(other_start)
        head = next(i for i, (x, y) in enumerate(zip(*windows[:2], strict=True)) if x != y)  # "user: {prompt}"
        width = 64 - head
        assert all(len(w) == 64 and w[:head] == windows[0][:head] for w in windows)
        starts = [i * (width // 2) for i in range(len(windows) - 1)] + [len(text) - width]
        assert [w[head:] for w in windows] == [text[s: s + width] for s in starts]
        assert starts[-2] < starts[-1] <= starts[-2] + width, "tokens between two windows that none reads"
        per_window_max = default.logits([long, other_start])
        assert not np.array_equal(per_window_max[0], per_window_max[1])
        assert (per_window_max >= kept - 1e-3).all(), "windows take the max over windows, the last included"


# -- chat path -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flash_attn", [False, True])
def test_chat_path_is_bit_identical_to_stock_llama_cpp(
    stories_gguf: Path, stories_guard: Path, real_texts: list[str], flash_attn: bool
) -> None:
    assert_chat_bit_identical(stories_gguf, stories_guard, "Once upon a time, there was a little dog named",
                              real_texts[:2], flash_attn)


def test_chat_path_is_bit_identical_on_a_random_init_model(tiny_base, tmp_path: Path, real_texts: list[str]) -> None:
    from loraguard_convert.guard import convert_guard
    from tiny_models import build_tiny_guard_checkpoint

    base = tiny_base("qwen2")
    ckpt = build_tiny_guard_checkpoint(base.hf_dir, tmp_path / "ckpt", targets="qv", base_gguf=base.gguf)
    guard_path = convert_guard(ckpt, tmp_path / "guard.gguf")
    assert_chat_bit_identical(base.gguf, guard_path, "The weather today is", real_texts[:2], flash_attn=False)


def test_generate_and_stream(guard: Guard) -> None:
    text = guard.generate("Once upon a time", max_tokens=16)
    assert text.strip()
    assert "".join(guard.stream("Once upon a time", max_tokens=16)) == text
    assert guard.generate("Once upon a time", max_tokens=16, stop=["Lily"]).find("Lily") == -1


# -- bad input -------------------------------------------------------------------------------------------------


def test_missing_model_file(stories_guard: Path, tmp_path: Path) -> None:
    with pytest.raises(FileAccessError, match="not found"):
        Guard(tmp_path / "nope.gguf", stories_guard)


def test_non_gguf_model_file(stories_guard: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model")
    with pytest.raises(FileFormatError, match="not a GGUF"):
        Guard(bad, stories_guard)


def test_truncated_model_file(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(stories_gguf.read_bytes()[: stories_gguf.stat().st_size // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        Guard(cut, stories_guard)


def test_unreadable_guard_file(stories_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(FileAccessError, match="directory"):
        Guard(stories_gguf, tmp_path)


def test_truncated_guard_file(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(stories_guard.read_bytes()[: stories_guard.stat().st_size - 100])
    with pytest.raises(FileFormatError, match="truncated"):
        Guard(stories_gguf, cut)


def test_guard_for_another_base_names_both(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    """Same architecture and shapes, different weights (a fine-tune): the fingerprint refuses it."""
    other = edit_gguf(
        stories_gguf, tmp_path / "other.gguf",
        keys=[("general.name", "stories260K-finetune", GGUFValueType.STRING)],
        tensor_data=lambda name, d: d * 1.01 if name == "output_norm.weight" else d,
    )
    names_both = r"trained for base .*fingerprint fnv1a64:.*model stories260K-finetune has fingerprint fnv1a64:"
    with pytest.raises(ModelMismatchError, match=names_both):
        Guard(other, stories_guard)


def test_guard_for_another_width(stories_guard: Path, tmp_path: Path) -> None:
    """A guard loaded on a model of another architecture width names both."""
    pytest.importorskip("transformers")
    from loraguard_convert.base import convert_base
    from tiny_models import build_tiny_model

    other = convert_base(build_tiny_model("qwen2", tmp_path / "qwen2"), tmp_path / "qwen2.gguf", outtype="f32")
    with pytest.raises(ModelMismatchError, match=r"architecture 'llama'.*'qwen2'"):
        Guard(other, stories_guard)


def test_plain_lora_without_head(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    plain = edit_gguf(stories_guard, tmp_path / "plain.gguf", drop_prefix="loraguard.")
    with pytest.raises(FileFormatError, match="plain LoRA"):
        Guard(stories_gguf, plain)


def test_alpha_that_is_not_f32_is_refused_not_fatal(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    """llama.cpp's loader asserts (kills the process) on this; we must refuse it first."""
    bad = edit_gguf(stories_guard, tmp_path / "alpha.gguf", keys=[("adapter.lora.alpha", 8, GGUFValueType.UINT32)])
    with pytest.raises(FileFormatError, match=r"adapter\.lora\.alpha"):
        Guard(stories_gguf, bad)


def test_non_lora_tensor_is_refused(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    bad = edit_gguf(stories_guard, tmp_path / "extra.gguf",
                    extra_tensors=[("loraguard_head", np.zeros((2, 64), dtype=np.float32))])
    with pytest.raises(FileFormatError, match="not a LoRA pair"):
        Guard(stories_gguf, bad)


def test_head_width_mismatch(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    bad = edit_gguf(stories_guard, tmp_path / "head.gguf",
                    keys=[("loraguard.head.weight", [0.1] * 10, GGUFValueType.ARRAY)])
    with pytest.raises(FileFormatError, match="head does not fit"):
        Guard(stories_gguf, bad)


def test_newer_format_version(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    bad = edit_gguf(stories_guard, tmp_path / "v99.gguf", keys=[("loraguard.version", 99, GGUFValueType.UINT32)])
    with pytest.raises(FileFormatError, match="upgrade loraguard"):
        Guard(stories_gguf, bad)


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("bad\0byte", "NUL byte"), ("x", None)],
)
def test_bad_text(guard: Guard, text: str, match: str | None) -> None:
    if match is None:
        assert guard.classify(text).scores
        return
    with pytest.raises(InvalidInputError, match=match):
        guard.classify(text)
    assert guard.classify("still alive").scores


def test_invalid_utf8_is_refused(guard: Guard) -> None:
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        guard.classify("lone surrogate \udcff")
    assert guard.classify("still alive").scores


def test_closed_guard(stories_gguf: Path, stories_guard: Path) -> None:
    g = Guard(stories_gguf, stories_guard, n_threads=1)
    g.close()
    g.close()
    with pytest.raises(InvalidInputError, match="closed"):
        g.classify("hello")


def test_one_libllama_per_process_with_llama_cpp_python() -> None:
    code = (
        "from loraguard_cpp import _native\n"  # the package loads its extension on first use
        "import llama_cpp\n"
        "maps = [l.split()[-1] for l in open('/proc/self/maps') if 'libllama' in l]\n"
        "print(len(set(maps)))\n"
    )
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


# -- CLI -------------------------------------------------------------------------------------------------------


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loraguard_cpp.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_cli_classify_json(stories_gguf: Path, stories_guard: Path, guard: Guard) -> None:
    out = cli("classify", "--json", "-m", str(stories_gguf), "-g", str(stories_guard), "How do I bake bread?")
    assert out.returncode in (0, 1), out.stderr
    row = json.loads(out.stdout)
    assert set(row) >= {"flagged", "scores"}
    assert set(row["scores"]) == set(guard.labels)
    assert out.returncode == (1 if row["flagged"] else 0)


def test_cli_classify_stdin_and_jsonl(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    out = cli("classify", "--json", "-m", str(stories_gguf), "-g", str(stories_guard), "-", stdin="one\ntwo\n")
    assert out.returncode in (0, 1), out.stderr
    assert len(out.stdout.splitlines()) == 2
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"text": "hi", "response": "hello"}) + "\n" + json.dumps({"text": "bye"}) + "\n")
    out = cli("classify", "--json", "-m", str(stories_gguf), "-g", str(stories_guard), "--jsonl", str(jsonl))
    assert out.returncode in (0, 1), out.stderr
    assert [json.loads(x)["text"] for x in out.stdout.splitlines()] == ["hi", "bye"]


def test_cli_errors_are_one_line(stories_gguf: Path, tmp_path: Path) -> None:
    out = cli("classify", "-m", str(stories_gguf), "-g", str(tmp_path / "missing.gguf"), "text")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "guard file not found" in out.stderr


def test_cli_info_and_quantize(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    out = cli("info", "--json", "-m", str(stories_gguf), "-g", str(stories_guard))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["model"]["fingerprint"] == info["guard"]["base_fingerprint"]
    q8 = tmp_path / "q8.gguf"
    out = cli("quantize", str(stories_gguf), str(q8), "Q8_0")
    assert out.returncode == 0, out.stderr
    with Guard(q8, stories_guard, n_threads=1) as g:
        assert g.model.file_type == "Q8_0"
        assert g.model.fingerprint == info["model"]["fingerprint"], "the fingerprint does not depend on tensor types"
    out = cli("quantize", str(stories_gguf), str(tmp_path / "x.gguf"), "Q9_9")
    assert out.returncode == 2 and "unknown quantization type" in out.stderr
    assert not list(tmp_path.glob("x.gguf*"))


def test_cli_chat_json(stories_gguf: Path, stories_guard: Path, tmp_path: Path) -> None:
    base = ["chat", "--json", "-m", str(stories_gguf), "--max-tokens", "12", "--prompt", "Once upon a time"]
    out = cli(*base, "-g", str(stories_guard))
    turn = json.loads(out.stdout)
    assert set(turn) >= {"prompt", "prompt_verdict", "response", "response_verdict"}
    assert out.returncode == (1 if "refused" in turn else 0), out.stderr
    # thresholds no probability reaches: the prompt passes, the response is generated on the chat path and guarded
    lenient = edit_gguf(stories_guard, tmp_path / "lenient.gguf",
                        keys=[("loraguard.thresholds", [1.0, 1.0], GGUFValueType.ARRAY)])
    out = cli(*base, "-g", str(lenient))
    assert out.returncode == 0, out.stderr
    turn = json.loads(out.stdout)
    assert not turn["prompt_verdict"]["flagged"] and turn["response"].strip()
    assert set(turn["response_verdict"]["scores"]) == set(turn["prompt_verdict"]["scores"])
    with Guard(stories_gguf, lenient, chat_n_ctx=512) as g:
        assert turn["response"] == g.chat([("user", "Once upon a time")], max_tokens=12)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_seq_max": 0}, "n_seq_max must be between"),
        ({"n_seq_max": 100_000}, "n_seq_max must be between"),
        ({"n_threads": 100_000}, "more than llama.cpp supports"),
        ({"n_ctx": 3}, "too small"),
        ({"overflow": "truncate"}, "overflow must be one of"),
    ],
)
def test_bad_guard_params_are_errors_not_crashes(
    stories_gguf: Path, stories_guard: Path, params: dict[str, object], match: str
) -> None:
    """llama.cpp asserts or crashes on some of these (n_seq_max > n_ctx, thousands of threads); we refuse them."""
    with pytest.raises(InvalidInputError, match=match):
        Guard(stories_gguf, stories_guard, **params)  # type: ignore[arg-type]


def test_guard_context_smaller_than_n_seq_max(stories_gguf: Path, stories_guard: Path, real_texts: list[str]) -> None:
    with Guard(stories_gguf, stories_guard, n_threads=1, n_ctx=16, n_seq_max=64) as g:
        assert np.isfinite(g.logits(real_texts[:4])).all()
