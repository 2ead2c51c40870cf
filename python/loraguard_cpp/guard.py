"""``Guard``: one loaded model that chats (base weights, no adapter) and guards itself (LoRA + head)."""

from __future__ import annotations

import codecs
import copy
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt

from . import _native, registry
from .errors import InvalidInputError

Overflow = Literal["keep_end", "windows", "error"]
_OVERFLOW_CODES: dict[str, int] = {"keep_end": 0, "windows": 1, "error": 2}
Message = tuple[str, str] | dict[str, str]


def _stops(stop: Sequence[str]) -> list[bytes]:
    if isinstance(stop, str):
        raise InvalidInputError("stop must be a sequence of strings, not one string: use stop=[...]")
    stops = [_utf8(s, f"stop string {i}") for i, s in enumerate(stop)]
    if any(not s or b"\0" in s for s in stops):
        raise InvalidInputError("stop strings must be non-empty and free of NUL bytes")
    return stops


@dataclass(frozen=True)
class GuardResult:
    """One text's verdict. ``scores`` maps each label to its probability."""

    flagged: bool
    scores: dict[str, float]
    logits: dict[str, float]
    flagged_labels: list[str] = field(default_factory=list)


def _utf8(text: str, what: str) -> bytes:
    """Text as the native side takes it; a string that is not encodable (lone surrogates) is bad input."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be a str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"{what} is not valid Unicode text ({e.reason} at position {e.start}): decode your input properly"
        ) from e


def _messages(messages: Sequence[Message]) -> list[tuple[bytes, bytes]]:
    pairs = []
    for i, m in enumerate(messages):
        role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1])
        pairs.append((_utf8(role, f"message {i} role"), _utf8(content, f"message {i} content")))
    return pairs


class Guard:
    """A base model (GGUF) with a guard (GGUF made by ``loraguard-convert guard``), loaded once.

    ``Guard()`` loads the default guard (``"minilm"``); ``Guard(guard="smollm2")`` a chat model that guards
    itself. Named guards find or prepare their base model in the user cache (see ``loraguard_cpp.registry``);
    a guard given as a path needs its base model's GGUF as ``model``.

    The chat path (:meth:`generate`, :meth:`stream`, :meth:`chat`) runs the base weights exactly as stock
    llama.cpp does; the guard path (:meth:`classify`, :meth:`classify_batch`) adds the LoRA delta in a context
    of its own and applies the head to the last token's final-norm hidden state. Both share one copy of the
    weights. Calls release the GIL and are safe from several threads; the paths share one thread budget
    (``n_threads``, default: the cores this process may use, cgroup CPU quota included), split between the
    paths that run at the same moment.

    User text goes into the chat path as messages (:meth:`chat`, :meth:`stream` with messages): only the chat
    template's own markers become special tokens, so a message that spells ``<|im_end|>`` stays text, as the
    guard reads it. A raw prompt string (:meth:`generate`, :meth:`stream` with a str) is trusted text whose
    special-token text is parsed, as in stock llama.cpp.

    :meth:`close` (or leaving the ``with`` block) frees everything once calls in flight return; a generation
    in flight is cancelled (it raises), later calls raise :class:`InvalidInputError`.

    Batch classification packs texts into one llama.cpp decode; its scores may differ from one-at-a-time
    scores by up to ~0.01 in probability (kernels depend on the batch shape). ``isolated=True`` scores every
    text alone, bit-reproducibly. ``exact=True`` runs the guard with an F32 K/V cache and no flash attention,
    matching an fp32 PyTorch reference to ~1e-5 (the defaults, as in llama.cpp, add ~1e-3 relative error).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        guard: str | os.PathLike[str] | None = None,
        *,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_ctx: int = 512,
        n_seq_max: int = 32,
        n_ubatch: int | None = None,
        overflow: Overflow = "keep_end",
        isolated: bool = False,
        exact: bool = False,
        chat_n_ctx: int = 2048,
        chat_flash_attn: bool | None = None,
        max_text_bytes: int = 0,
        verbose: bool = False,
    ) -> None:
        if overflow not in _OVERFLOW_CODES:
            raise InvalidInputError(f"overflow must be one of {sorted(_OVERFLOW_CODES)}, got {overflow!r}")
        self._chat_n_ctx = chat_n_ctx
        self._chat_flash_attn = -1 if chat_flash_attn is None else int(chat_flash_attn)
        self._chat: _native.ChatPath | None = None
        self._chat_lock = threading.Lock()
        self._closed = False
        self.model_path, self.guard_path = registry.resolve(model, guard)
        self.model = _native.Model(
            os.fspath(self.model_path), n_gpu_layers=n_gpu_layers, verbose=verbose, n_threads=n_threads or 0
        )
        self._owns_model = True
        self._guard_options: dict[str, int | bool] = {
            "n_ctx": n_ctx,
            "n_seq_max": n_seq_max,
            "overflow": _OVERFLOW_CODES[overflow],
            "isolated": isolated,
            "f32_kv_cache": exact,
            "flash_attn": 0 if exact else -1,
            "n_ubatch": n_ubatch or 0,
            "max_text_bytes": max_text_bytes,
        }
        try:
            self._guard = _native.GuardPath(self.model, os.fspath(self.guard_path), **self._guard_options)
        except BaseException:
            self.model.close()
            raise
        self.labels: list[str] = self._guard.labels
        self.thresholds: npt.NDArray[np.float32] = np.asarray(self._guard.thresholds, dtype=np.float32)
        if self._guard.warning:
            import warnings

            warnings.warn(self._guard.warning, stacklevel=2)

    # -- guard path -----------------------------------------------------------------------------------------

    def _score(
        self, texts: Sequence[str], responses: Sequence[str | None] | None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Logits, probabilities and flags, (len(texts), len(labels)) each, from the native verdict rule."""
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a sequence of strings, not one string: use classify() for one")
        prompts = [_utf8(t, f"text {i}") for i, t in enumerate(texts)]
        if responses is None:
            return self._guard.score(prompts)
        if isinstance(responses, str):
            raise InvalidInputError("responses must be a sequence of strings (or None), not one string")
        answers = [None if r is None else _utf8(r, f"response {i}") for i, r in enumerate(responses)]
        return self._guard.score(prompts, answers)

    def logits(self, texts: Sequence[str], responses: Sequence[str | None] | None = None) -> npt.NDArray[np.float32]:
        """Raw head logits, float32 array of shape (len(texts), len(labels))."""
        return self._score(texts, responses)[0]

    def classify_batch(
        self, texts: Sequence[str], responses: Sequence[str | None] | None = None
    ) -> npt.NDArray[np.float32]:
        """Probabilities, float32 array of shape (len(texts), len(labels))."""
        return self._score(texts, responses)[1]

    def classify(self, text: str, response: str | None = None) -> GuardResult:
        """Classify one prompt, or a prompt with the response to it."""
        return self.classify_many([text], None if response is None else [response])[0]

    def classify_many(self, texts: Sequence[str], responses: Sequence[str | None] | None = None) -> list[GuardResult]:
        """One verdict per text, computed in as few decodes as :meth:`classify_batch`."""
        logits, probs, flags = self._score(texts, responses)
        results = []
        for row_logits, row_probs, row_flags in zip(logits, probs, flags, strict=True):
            flagged = [label for label, f in zip(self.labels, row_flags, strict=True) if f]
            results.append(
                GuardResult(
                    flagged=bool(flagged),
                    scores={label: float(p) for label, p in zip(self.labels, row_probs, strict=True)},
                    logits={label: float(x) for label, x in zip(self.labels, row_logits, strict=True)},
                    flagged_labels=flagged,
                )
            )
        return results

    def tokenize(self, text: str, response: str | None = None) -> list[int]:
        """The token ids the guard runs for this input (its template applied)."""
        return self._guard.tokenize(_utf8(text, "text"), None if response is None else _utf8(response, "response"))

    def sequences(self, text: str, response: str | None = None) -> list[list[int]]:
        """The token sequences the guard scores for this input, its overflow policy applied (several: windows)."""
        return self._guard.sequences(_utf8(text, "text"), None if response is None else _utf8(response, "response"))

    def meta(self, key: str) -> str | None:
        """Guard metadata without the ``loraguard.`` prefix, e.g. ``"base.fingerprint"``, ``"template.prompt"``."""
        return self._guard.meta(key)

    @property
    def lora_rank(self) -> int:
        return self._guard.lora_rank

    @property
    def n_params(self) -> int:
        """Parameters the guard adds (LoRA + head)."""
        return self._guard.n_params

    # -- chat path ------------------------------------------------------------------------------------------

    def _chat_path(self) -> _native.ChatPath:
        with self._chat_lock:
            if self._closed:
                raise InvalidInputError("guard is closed")
            if self._chat is None:
                self._chat = _native.ChatPath(self.model, n_ctx=self._chat_n_ctx, flash_attn=self._chat_flash_attn)
            return self._chat

    def chat_logits(self, tokens: Sequence[int], *, clear: bool = True) -> npt.NDArray[np.float32]:
        """Chat path, low level: evaluate tokens (after the context so far unless clear) and return the last
        token's logits over the vocabulary, exactly as stock llama.cpp computes them."""
        return self._chat_path().decode(list(tokens), clear)

    def format_chat(self, messages: Sequence[Message]) -> str:
        """Messages rendered with the model's chat template, ready for the assistant's turn (for display: the
        chat path tokenizes messages with :meth:`tokenize_chat`, which keeps their contents plain text)."""
        return self._chat_path().format(_messages(messages))

    def tokenize_chat(self, messages: Sequence[Message]) -> list[int]:
        """The token ids the chat path runs for messages: only the template's markers are special tokens."""
        return self._chat_path().tokenize(_messages(messages))

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
        stop: Sequence[str] = (),
    ) -> str:
        """Generate from a trusted raw prompt on the chat path (greedy when temperature <= 0); its special-token
        text is parsed as llama.cpp does. The output ends before the first stop string."""
        chat = self._chat_path()
        out = chat.generate(_utf8(prompt, "prompt"), max_tokens, temperature, top_k, top_p, seed, _stops(stop))
        return out.decode("utf-8", errors="replace")

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
        stop: Sequence[str] = (),
    ) -> str:
        """The assistant's reply to chat messages (the model's chat template; contents stay plain text)."""
        out = self._chat_path().generate_messages(
            _messages(messages), max_tokens, temperature, top_k, top_p, seed, _stops(stop)
        )
        return out.decode("utf-8", errors="replace")

    def stream(
        self,
        prompt: str | Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """Yield generated text as it is produced (whole UTF-8 characters only): for messages, the assistant's
        reply as :meth:`chat` makes it; for a str, a trusted raw prompt as :meth:`generate` takes it. The pieces
        join to exactly what :meth:`chat` / :meth:`generate` return, stop strings included."""
        pieces: queue.Queue[bytes | BaseException | None] = queue.Queue()
        cancelled = threading.Event()
        chat = self._chat_path()
        stops = _stops(stop)
        args = (max_tokens, temperature, top_k, top_p, seed, stops)
        if isinstance(prompt, str):
            raw = _utf8(prompt, "prompt")

            def generate(on_token: _native.TokenCallback) -> None:
                chat.generate(raw, *args, on_token)
        else:
            pairs = _messages(prompt)

            def generate(on_token: _native.TokenCallback) -> None:
                chat.generate_messages(pairs, *args, on_token)

        def on_token(_token: int, piece: bytes, _logits: object) -> bool:
            pieces.put(piece)
            return not cancelled.is_set()

        def run() -> None:
            try:
                generate(on_token)
                pieces.put(None)
            except BaseException as e:  # handed to the consuming thread
                pieces.put(e)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while (item := pieces.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if text := decoder.decode(item):
                    yield text
            if tail := decoder.decode(b"", final=True):
                yield tail
        finally:
            cancelled.set()
            worker.join()

    # -- lifetime -------------------------------------------------------------------------------------------

    def twin(self) -> Guard:
        """Another Guard over this one's loaded weights (no second copy): the same guard with a guard context and
        a chat context of its own, so that calls on the two run at the same moment instead of one after the other
        (a server's pool of contexts). The paths running at once split the model's thread budget (``n_threads``).
        A twin shares this Guard's ``model`` object: close twins first (closing a twin keeps the weights loaded)."""
        with self._chat_lock:
            if self._closed:
                raise InvalidInputError("guard is closed")
            twin = copy.copy(self)
        twin._guard = _native.GuardPath(self.model, os.fspath(self.guard_path), **self._guard_options)
        twin._chat = None
        twin._chat_lock = threading.Lock()
        twin._owns_model = False
        return twin

    def close(self) -> None:
        """Free the contexts, the adapter and the model once calls in flight return; a generation in flight is
        cancelled. Idempotent."""
        with self._chat_lock:
            self._closed = True
            if self._chat is not None:
                self._chat.close()
        self._guard.close()
        if self._owns_model:
            self.model.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.model.closed:
            return "Guard(closed)"
        return (
            f"Guard(model={self.model.name!r} {self.model.architecture} {self.model.file_type}, "
            f"labels={self.labels}, lora_rank={self.lora_rank})"
        )

