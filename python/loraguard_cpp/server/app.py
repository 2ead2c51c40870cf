"""The ASGI application: OpenAI's moderation, chat-completion and model endpoints on one loaded guard."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..cli import REFUSAL
from ..conversation import conversation_inputs
from ..errors import FlaggedError, InvalidInputError
from ..guard import DEFAULT_MAX_TOKENS, ChatVerdict, Guard, GuardResult
from ..reply import ReplyGate
from .batching import BatchDone, Batcher, QueueFullError
from .categories import content_filter_results, moderation_result, moderation_results
from .schema import APIError, ChatRequest, ModerationRequest, moderation_inputs, parse_body, text_of_parts

log = logging.getLogger("loraguard.server")

API_KEY_ENV = "LORAGUARD_API_KEY"
T = TypeVar("T")
_ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/moderations", "/v1/chat/completions")


@dataclass(frozen=True)
class ServerConfig:
    """What ``loraguard-cli serve`` is told; every limit has a safe default."""

    model_name: str
    aliases: tuple[str, ...] = ()
    api_key: str | None = None
    batch_window_ms: float = 5.0
    max_batch: int = 32
    max_queue: int = 256
    max_chat_queue: int = 4
    max_body_bytes: int = 1 << 20
    max_input_chars: int = 32_000
    max_inputs: int = 64
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    max_tokens: int = 1024
    window: int = 16
    chat_n_ctx: int = 2048
    request_timeout_s: float = 120.0
    guard_contexts: int = 1
    chat_slots: int = 1


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("loraguard_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "loraguard_request_seconds", "time to the last byte of a response", ["endpoint"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.queue_depth = Gauge("loraguard_queue_depth", "guard inputs waiting for a batch", registry=r)
        self.chats = Gauge("loraguard_chats", "chat requests admitted and not done: checking, generating or waiting "
                           "for a chat slot", registry=r)
        self.batch_size = Histogram(
            "loraguard_batch_size", "guard inputs per decode", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128)
        )
        # Per context and per slot: an operator sees whether the pool is used evenly and how busy it is (busy
        # seconds summed over contexts past the wall time mean decodes overlapped).
        self.contexts_busy = Gauge("loraguard_guard_contexts_busy", "guard contexts decoding now", registry=r)
        pool_buckets = (1, 2, 3, 4, 6, 8, 12, 16)
        self.contexts_in_use = Histogram(
            "loraguard_guard_contexts_in_use", "guard contexts decoding as a batch starts, its own included",
            registry=r, buckets=pool_buckets,
        )
        self.slots_in_use = Histogram(
            "loraguard_chat_slots_in_use", "chat slots generating as a generation starts, its own included",
            registry=r, buckets=pool_buckets,
        )
        self.context_batches = Counter("loraguard_guard_context_batches", "batches a guard context scored",
                                       ["context"], registry=r)
        self.context_busy = Counter("loraguard_guard_context_busy_seconds", "time a guard context spent decoding",
                                    ["context"], registry=r)
        self.slot_chats = Counter("loraguard_chat_slot_requests", "generations a chat slot ran", ["slot"], registry=r)
        self.slot_busy = Counter("loraguard_chat_slot_busy_seconds", "time a chat slot spent generating", ["slot"],
                                 registry=r)
        self.inputs = Counter("loraguard_guard_inputs", "texts the guard scored", registry=r)
        self.flagged = Counter("loraguard_flagged", "verdicts flagging a label", ["label"], registry=r)
        self.chat_verdicts = Counter("loraguard_chat_verdicts_in_place",
                                     "verdicts an aLoRA guard gave in a chat slot's own context", registry=r)
        self.completion_tokens = Counter("loraguard_completion_tokens", "tokens generated on the chat path", registry=r)


@dataclass(frozen=True)
class _ChatSlot:
    """A chat context of its own (a twin of the loaded guard) and the thread that runs it."""

    index: int
    guard: Guard
    executor: ThreadPoolExecutor


@dataclass
class _Turn:
    """One chat request after its checks: what to generate and what to guard."""

    messages: list[tuple[str, str]]
    user: str
    max_tokens: int
    max_tokens_param: str | None  # the field the limit was sent in, None for the server's default: errors name it
    params: dict[str, Any]
    deadline: float
    include_usage: bool
    prompt_tokens: int = 0
    prompt_verdicts: list[GuardResult] = field(default_factory=list)  # one per message, in order
    generation: asyncio.Future[None] | None = None  # the native generation on a chat slot's thread, once started
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


class _Server:
    """The loaded guard and everything the endpoints share: batcher, chat slots, limits, metrics.

    One copy of the weights: the guard pool's contexts and the chat slots are twins of the loaded guard
    (:meth:`Guard.twin`), each a context of its own; twin ``i`` serves guard context ``i`` and chat slot ``i``."""

    def __init__(self, config: ServerConfig, open_guard: Callable[[], Guard],
                 on_load_error: Callable[[BaseException], None]) -> None:
        self.config = config
        self._open_guard = open_guard
        self._on_load_error = on_load_error
        self.metrics = _Metrics()
        self.guard: Guard | None = None  # set once ready
        self._loaded: list[Guard] = []  # the loaded guard, then its twins
        self.batcher: Batcher | None = None
        self.is_encoder = False
        # Loading, then the chat slots' threads: one thread per native chat context.
        self._load_executor = ThreadPoolExecutor(1, thread_name_prefix="loraguard-load")
        self._chat_slots: list[_ChatSlot] = []
        self._free_slots: asyncio.Queue[_ChatSlot] = asyncio.Queue()
        self.chat_busy = 0  # chat requests admitted and not done (admit_chat to release_chat)
        self._loading: asyncio.Task[None] | None = None
        self.metrics.chats.set_function(lambda: self.chat_busy)

    # -- lifetime -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            guard = await loop.run_in_executor(self._load_executor, self._open_guard)
            self._loaded.append(guard)
            self.is_encoder = guard.model.is_encoder
            n_slots = 0 if self.is_encoder else config.chat_slots
            while len(self._loaded) < max(config.guard_contexts, n_slots):
                self._loaded.append(await loop.run_in_executor(self._load_executor, guard.twin))
            for twin in self._loaded[:n_slots]:
                # Creates the chat context now, so that the first chat request does not pay for it.
                await loop.run_in_executor(self._load_executor, twin.tokenize_chat, [("user", "hello")])
        except Exception as e:
            log.error("loading the guard failed: %s", e)
            self._on_load_error(e)
            return
        self._chat_slots = [_ChatSlot(i, twin, ThreadPoolExecutor(1, thread_name_prefix=f"loraguard-chat-{i}"))
                            for i, twin in enumerate(self._loaded[:n_slots])]
        for slot in self._chat_slots:
            self._free_slots.put_nowait(slot)
        self.batcher = Batcher(
            [twin.classify_many for twin in self._loaded[:config.guard_contexts]],
            window_s=config.batch_window_ms / 1000, max_batch=config.max_batch, max_pending=config.max_queue,
            on_batch=self._on_batch,
        )
        self.batcher.start()
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth if self.batcher else 0)
        self.metrics.contexts_busy.set_function(lambda: self.batcher.busy if self.batcher else 0)
        self.guard = guard
        log.info("ready: %r; %d guard context(s), %d chat slot(s) of %d tokens, %d thread(s) shared",
                 guard, config.guard_contexts, n_slots, config.chat_n_ctx, guard.model.n_threads)

    def _on_batch(self, done: BatchDone) -> None:
        self.metrics.batch_size.observe(done.size)
        self.metrics.contexts_in_use.observe(done.in_use)
        self.metrics.context_batches.labels(str(done.context)).inc()
        self.metrics.context_busy.labels(str(done.context)).inc(done.seconds)

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.stop()
        for slot in self._chat_slots:
            slot.executor.shutdown(wait=True)
        self._load_executor.shutdown(wait=True)
        for guard in reversed(self._loaded):  # twins first: they share the loaded guard's model object
            guard.close()

    # -- shared checks --------------------------------------------------------------------------------------

    def ready_guard(self) -> tuple[Guard, Batcher]:
        if self.guard is None or self.batcher is None:
            raise APIError(503, "the guard is still loading: retry shortly (GET /health answers 200 when ready)",
                           type="server_error", code="model_loading")
        return self.guard, self.batcher

    def check_model(self, name: str | None) -> None:
        if name is None or name == self.config.model_name or name in self.config.aliases:
            return
        served = ", ".join((self.config.model_name, *self.config.aliases))
        raise APIError(404, f"model {name!r} is not served here; this server serves: {served} (GET /v1/models)",
                       param="model", code="model_not_found")

    async def verdicts(self, pairs: Sequence[tuple[str, str | None]]) -> list[GuardResult]:
        _, batcher = self.ready_guard()
        try:
            results = await batcher.classify(pairs)
        except QueueFullError as e:
            raise APIError(429, str(e), type="rate_limit_error", code="queue_full") from e
        except InvalidInputError as e:
            raise APIError(400, str(e)) from e
        self.metrics.inputs.inc(len(results))
        for result in results:
            self.count_verdict(result)
        return results

    def count_verdict(self, result: GuardResult) -> None:
        for label in result.flagged_labels:
            self.metrics.flagged.labels(label).inc()

    # -- chat path ------------------------------------------------------------------------------------------

    def admit_chat(self) -> None:
        """Takes a place among the chat slots and the chat queue, or answers 429: checked and taken at once (no
        await between), so chats arriving together cannot all pass the check."""
        config = self.config
        if self.chat_busy >= config.chat_slots + config.max_chat_queue:
            raise APIError(429, f"{self.chat_busy} chat requests are in progress or waiting (limit: "
                           f"{config.chat_slots} chat slots + {config.max_chat_queue} waiting): retry later",
                           type="rate_limit_error", code="queue_full")
        self.chat_busy += 1

    def release_chat(self, turn: _Turn) -> None:
        """Gives an admitted chat's place back once its request is done and its generation, if any, has stopped
        (at its next token once told to)."""
        def done(_generation: object = None) -> None:
            self.chat_busy -= 1

        if turn.generation is None:
            done()
        else:
            turn.generation.add_done_callback(done)

    async def generate(self, turn: _Turn) -> AsyncIterator[str | ChatVerdict]:
        """The reply's text pieces from the chat path (message contents stay plain text: a user cannot spell turn
        markers); the native generation runs on a free chat slot's thread and stops at the next token once the
        consumer goes away or the deadline passes. The slot is held while the model generates, not while the
        consumer guards what it generated, so the next chat starts meanwhile.

        With an aLoRA guard the slot's chat context judges the conversation in place, after the prompt's prefill
        and every ``window`` reply tokens, at the cost of the new tokens and the invocation: those verdicts come
        among the pieces, each after the pieces it covers; a flagged one ends the generation."""
        self.ready_guard()
        loop = asyncio.get_running_loop()
        messages, params, deadline = turn.messages, turn.params, turn.deadline
        slot = await asyncio.wait_for(self._free_slots.get(), max(0.0, deadline - time.monotonic()))
        self.metrics.slot_chats.labels(str(slot.index)).inc()
        self.metrics.slots_in_use.observe(len(self._chat_slots) - self._free_slots.qsize())
        start = time.perf_counter()

        def release(_done: object) -> None:
            self.metrics.slot_busy.labels(str(slot.index)).inc(time.perf_counter() - start)
            self._free_slots.put_nowait(slot)

        pieces: asyncio.Queue[str | ChatVerdict | BaseException | None] = asyncio.Queue()
        stop = threading.Event()
        # a plain LoRA guard cannot judge in the chat's context: the consumer (_GuardedReply) guards the reply
        window = self.config.window if slot.guard.is_alora else None

        def put(item: str | ChatVerdict | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(pieces.put_nowait, item)

        def pump() -> None:
            try:
                stream = slot.guard.stream_with_verdicts(messages, window=window, **params)
                with contextlib.closing(stream):
                    for item in stream:
                        put(item)
                        if stop.is_set():
                            break
            except FlaggedError:
                pass  # the flagged verdict went before it
            except Exception as e:
                put(e)
            finally:
                put(None)

        worker = loop.run_in_executor(slot.executor, pump)
        worker.add_done_callback(release)
        turn.generation = worker
        try:
            while (item := await asyncio.wait_for(pieces.get(), max(0.0, deadline - time.monotonic()))) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


class _GuardedReply:
    """The assistant's reply, streamed in the pieces its :class:`ReplyGate` releases.

    Every ``window`` pieces the guard reads (prompt, reply so far) through the batcher; the reply is cut with
    ``finish_reason: "content_filter"`` at the first verdict that flags it, so no flagged text leaves the server.
    The whole reply is guarded once more when generation ends. An aLoRA guard's verdicts come from the chat slot's
    own context (:meth:`_Server.generate`) instead of a re-read through the batcher."""

    def __init__(self, server: _Server, turn: _Turn) -> None:
        self._server = server
        self._turn = turn
        self._gate = ReplyGate(server.config.window)
        self.finish_reason = "stop"
        self.completion_tokens = 0

    @property
    def text(self) -> str:
        """The reply as far as it was released."""
        return self._gate.released

    @property
    def verdict(self) -> GuardResult | None:
        return self._gate.verdict

    async def chunks(self) -> AsyncIterator[str]:
        gate = self._gate
        generated = ""
        try:
            pieces = self._server.generate(self._turn)
            async with contextlib.aclosing(pieces):
                async for item in pieces:
                    if isinstance(item, ChatVerdict):
                        self._server.count_verdict(item)
                        self._server.metrics.chat_verdicts.inc()
                        released = gate.apply_in_place(item)
                    else:
                        generated += item
                        gate.add(item)
                        if not gate.window_due:
                            continue
                        released = await self._judge_pending()
                    if gate.flagged:
                        self.finish_reason = "content_filter"
                        return
                    if released:
                        yield released
            # In place, the last verdict read the whole reply (a flagged one ended it): the native chat path hands
            # out a stop string's possible beginning, and a character split across tokens, only after it.
            released = gate.release() if gate.in_place else await self._judge_pending()
            if gate.flagged:
                self.finish_reason = "content_filter"
                return
            if released:
                yield released
        finally:
            # Usage counts what was generated, released or not (a tokenizer round trip: the chat path reports
            # text, not token ids).
            guard, _ = self._server.ready_guard()
            self.completion_tokens = len(guard.model.tokenize(generated, add_special=False)) if generated else 0
            self._server.metrics.completion_tokens.inc(self.completion_tokens)
            if self.finish_reason == "stop" and self.completion_tokens >= self._turn.max_tokens:
                self.finish_reason = "length"

    async def _judge_pending(self) -> str:
        """The pending pieces the gate releases once the guard has judged the reply so far, where it must."""
        gate = self._gate
        if not gate.needs_verdict:
            return gate.release()
        (verdict,) = await self._server.verdicts([(self._turn.user, gate.candidate)])
        return gate.apply(verdict)


# -- HTTP layer -------------------------------------------------------------------------------------------------


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _stream_error(e: Exception) -> APIError:
    """The error event that ends a stream whose headers are out: an APIError as it is, a timeout as the 504 it
    would have been, and any other failure as a 500 whose details go to the log only."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, TimeoutError):
        return APIError(504, "the reply took longer than the request timeout (--request-timeout)",
                        type="server_error", code="timeout")
    log.error("the streamed reply failed", exc_info=e)
    return APIError(500, "internal server error (the server log has the details)", type="server_error")


class _ChatStream(StreamingResponse):
    """A streamed chat reply that, however the response ends (sent in full, the client gone, the server stopping),
    closes its events at once, which stops the generation at its next token, and then calls ``on_end``."""

    def __init__(self, events: AsyncGenerator[str, None], on_end: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream")
        self._events = events
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._events.aclose()
            finally:
                self._on_end()


def _summary(results: Sequence[GuardResult]) -> str:
    labels = sorted({label for r in results for label in r.flagged_labels})
    flagged = sum(1 for r in results if r.flagged)
    return f"flagged={flagged}/{len(results)}" + (f" labels={','.join(labels)}" if labels else "")


def _reply_summary(reply: _GuardedReply | None, finish_reason: str) -> str:
    verdict = reply.verdict if reply is not None else None
    return f" reply {_summary([verdict]) if verdict is not None else 'unchecked'} finish={finish_reason}"


def _prompt_filter(turn: _Turn) -> list[dict[str, object]]:
    return [{"prompt_index": i, "content_filter_results": content_filter_results(verdict)}
            for i, verdict in enumerate(turn.prompt_verdicts)]


class _Observe:
    """Outermost layer: API-key check, then one log line and the metrics for every request (never its text)."""

    def __init__(self, app: ASGIApp, server: _Server) -> None:
        self.app = app
        self.server = server
        key = server.config.api_key
        self._key = key.encode() if key else None

    def _authorized(self, scope: Scope) -> bool:
        if self._key is None or scope["path"] == "/health":
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        scope.setdefault("state", {})

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._authorized(scope):
                await self.app(scope, receive, observed_send)
            else:
                error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with the key the "
                                 f"server was started with (--api-key or ${API_KEY_ENV})", code="invalid_api_key")
                await _error_response(error)(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - start
            path = scope["path"]
            endpoint = path if path in _ENDPOINTS else "/v1/models/{model}" if path.startswith("/v1/models/") \
                else "unmatched"
            self.server.metrics.requests.labels(endpoint, str(status)).inc()
            self.server.metrics.latency.labels(endpoint).observe(elapsed)
            verdict = scope["state"].get("verdict", "")
            log.info("%s %s %d %.1fms %s", scope["method"], scope["path"], status, elapsed * 1000, verdict)


def create_app(config: ServerConfig, open_guard: Callable[[], Guard],
               on_load_error: Callable[[BaseException], None] = lambda _e: None) -> ASGIApp:
    """The server as an ASGI app. The guard loads in the background once the app starts: until then every
    endpoint but /health and /metrics answers 503."""
    server = _Server(config, open_guard, on_load_error)

    async def read(request: Request, model: type[Any]) -> Any:
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body has {declared} bytes, the limit is {limit} (--max-body-bytes)",
                           code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"the request body exceeds {limit} bytes (--max-body-bytes)",
                               code="request_too_large")
        return parse_body(bytes(body), model)

    async def within_deadline(work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, config.request_timeout_s)
        except TimeoutError as e:
            raise APIError(504, f"the request took longer than {config.request_timeout_s:g} s (--request-timeout)",
                           type="server_error", code="timeout") from e

    async def health(_request: Request) -> Response:
        if server.guard is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": config.model_name})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(name: str) -> dict[str, object]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "loraguard"}

    async def list_models(_request: Request) -> Response:
        names = (config.model_name, *config.aliases)
        return JSONResponse({"object": "list", "data": [model_card(n) for n in names]})

    async def get_model(request: Request) -> Response:
        server.check_model(request.path_params["model"])
        return JSONResponse(model_card(request.path_params["model"]))

    async def moderations(request: Request) -> Response:
        server.ready_guard()
        body: ModerationRequest = await read(request, ModerationRequest)
        server.check_model(body.model)
        texts = moderation_inputs(body.input, config.max_input_chars, config.max_inputs)

        async def answer() -> Response:
            results = await server.verdicts([(text, None) for text in texts])
            request.state.verdict = _summary(results)
            return JSONResponse({"id": f"modr-{uuid.uuid4().hex}", "model": body.model or config.model_name,
                                 "results": [moderation_result(r) for r in results]})

        return await within_deadline(answer())

    def chat_turn(body: ChatRequest) -> _Turn:
        if server.is_encoder:
            raise APIError(400, f"the guard {config.model_name!r} runs on an encoder model, which cannot chat: start "
                           "the server with a chat model's guard (loraguard-cli serve --guard smollm2) for chat "
                           "completions; /v1/moderations works with this one", param="model",
                           code="model_not_supported")
        messages = []
        for i, message in enumerate(body.messages):
            role = "system" if message.role == "developer" else message.role
            messages.append((role, text_of_parts(message.content, f"messages[{i}].content", config.max_input_chars)))
        if messages[-1][0] != "user":
            raise APIError(400, "the last message must be the user's: the reply to it is what is generated",
                           param="messages")
        sent = body.token_limit()
        param, max_tokens = sent or ("max_tokens", config.default_max_tokens)
        if max_tokens > config.max_tokens:
            raise APIError(400, f"{param} {max_tokens} exceeds this server's limit {config.max_tokens}",
                           param=param)
        params = {"max_tokens": max_tokens, "temperature": body.temperature, "top_k": body.top_k,
                  "top_p": body.top_p, "seed": body.seed, "stop": body.stop}
        include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))
        return _Turn(messages, messages[-1][1], max_tokens, param if sent else None, params,
                     time.monotonic() + config.request_timeout_s, include_usage)

    def usage(turn: _Turn, reply: _GuardedReply | None) -> dict[str, int]:
        prompt_tokens = turn.prompt_tokens
        completion = reply.completion_tokens if reply else 0
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    async def chat_completions(request: Request) -> Response:
        guard, _ = server.ready_guard()
        body: ChatRequest = await read(request, ChatRequest)
        server.check_model(body.model)
        turn = chat_turn(body)
        server.admit_chat()
        held = True  # the admitted place, given back here unless a streamed response takes it over
        try:
            # Off the event loop: a long history takes a while to tokenize.
            try:
                prompt_ids = await asyncio.get_running_loop().run_in_executor(None, guard.tokenize_chat,
                                                                              turn.messages)
            except InvalidInputError as e:
                raise APIError(400, f"messages: {e}", param="messages") from e
            turn.prompt_tokens = len(prompt_ids)
            if turn.prompt_tokens + turn.max_tokens > config.chat_n_ctx:
                # Named as the client sent it (n_predict, max_completion_tokens), so that it knows what to lower;
                # with none sent, it learns that the server's default took the room.
                param = turn.max_tokens_param
                limit = f"{param} {turn.max_tokens}" if param else f"the server's default max_tokens {turn.max_tokens}"
                remedy = param or "send a smaller max_tokens"
                raise APIError(400, f"the messages take {turn.prompt_tokens} tokens; with {limit} that exceeds the "
                               f"chat context of {config.chat_n_ctx} tokens: shorten the history or {remedy}",
                               param="messages", code="context_length_exceeded")
            turn.prompt_verdicts = await within_deadline(server.verdicts(conversation_inputs(turn.messages)))
            # the first flagged message decides the refusal; with none, the last (the user's) stands for the prompt
            prompt_verdict = next((v for v in turn.prompt_verdicts if v.flagged), turn.prompt_verdicts[-1])
            request.state.verdict = f"prompt {_summary(turn.prompt_verdicts)}"
            reply = None if prompt_verdict.flagged else _GuardedReply(server, turn)
            if body.stream:
                held = False
                return _ChatStream(sse(turn, prompt_verdict, reply, request), lambda: server.release_chat(turn))

            async def complete() -> Response:
                if reply is not None:
                    async with contextlib.aclosing(reply.chunks()) as chunks:
                        async for _ in chunks:
                            pass
                return JSONResponse(completion(turn, prompt_verdict, reply, request))

            return await within_deadline(complete())
        finally:
            if held:
                server.release_chat(turn)

    def choice_end(reply: _GuardedReply | None) -> tuple[str, dict[str, object]]:
        if reply is None:
            return "content_filter", {}
        filters = content_filter_results(reply.verdict) if reply.verdict else {}
        return reply.finish_reason, filters

    def moderation(prompt_verdict: GuardResult, reply: _GuardedReply | None) -> dict[str, object]:
        """OpenAI's own field for moderated completions, beside Azure's filter fields."""
        output = [reply.verdict] if reply is not None and reply.verdict is not None else []
        return {"input": moderation_results(config.model_name, [prompt_verdict]),
                "output": moderation_results(config.model_name, output)}

    def completion(turn: _Turn, prompt_verdict: GuardResult, reply: _GuardedReply | None,
                   request: Request) -> dict[str, object]:
        finish_reason, filters = choice_end(reply)
        message = ({"role": "assistant", "content": None, "refusal": REFUSAL} if reply is None
                   else {"role": "assistant", "content": reply.text, "refusal": None})
        request.state.verdict += _reply_summary(reply, finish_reason)
        return {
            "id": turn.id, "object": "chat.completion", "created": turn.created, "model": config.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None,
                         "content_filter_results": filters}],
            "usage": usage(turn, reply),
            "prompt_filter_results": _prompt_filter(turn),
            "moderation": moderation(prompt_verdict, reply),
        }

    async def sse(turn: _Turn, prompt_verdict: GuardResult, reply: _GuardedReply | None,
                  request: Request) -> AsyncGenerator[str, None]:
        def event(choices: list[dict[str, object]], **extra: object) -> str:
            chunk = {"id": turn.id, "object": "chat.completion.chunk", "created": turn.created,
                     "model": config.model_name, "choices": choices, **extra}
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        def delta(content: dict[str, object], finish_reason: str | None = None,
                  filters: dict[str, object] | None = None) -> list[dict[str, object]]:
            choice: dict[str, object] = {"index": 0, "delta": content, "finish_reason": finish_reason,
                                         "logprobs": None}
            if filters is not None:
                choice["content_filter_results"] = filters
            return [choice]

        yield event([], prompt_filter_results=_prompt_filter(turn))
        try:
            if reply is None:
                yield event(delta({"role": "assistant", "refusal": REFUSAL}))
            else:
                yield event(delta({"role": "assistant", "content": ""}))
                async with contextlib.aclosing(reply.chunks()) as chunks:
                    async for text in chunks:
                        yield event(delta({"content": text}, filters=content_filter_results(reply.verdict)
                                          if reply.verdict else {}))
            finish_reason, filters = choice_end(reply)
            request.state.verdict += _reply_summary(reply, finish_reason)
            yield event(delta({}, finish_reason, filters), moderation=moderation(prompt_verdict, reply))
            if turn.include_usage:
                yield event([], usage=usage(turn, reply))
        except Exception as e:
            # Headers are out: the error travels as an SSE event, which OpenAI's clients raise as an APIError.
            error = _stream_error(e)
            request.state.verdict += f" stream-error={error.code or error.status}"
            yield f"data: {json.dumps(error.body())}\n\n"
        yield "data: [DONE]\n\n"

    async def api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return _error_response(exc)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: "no such endpoint: this server has /v1/moderations, /v1/chat/completions, /v1/models, "
                        "/health and /metrics",
                   405: "method not allowed on this endpoint"}.get(exc.status_code, str(exc.detail))
        return _error_response(APIError(exc.status_code, message))

    async def internal_error(_request: Request, exc: Exception) -> Response:
        log.exception("internal error", exc_info=exc)
        return _error_response(APIError(500, "internal server error (the server log has the details)",
                                        type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.close()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/v1/moderations", moderations, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    return _Observe(app, server)
