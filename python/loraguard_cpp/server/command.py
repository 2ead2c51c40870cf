"""``loraguard-cli serve``: its options and its run. The web stack is imported only when the server runs, so
the rest of the CLI works without the ``serve`` extra."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .. import registry
from ..errors import LoraGuardError
from ..guard import DEFAULT_MAX_TOKENS


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``serve`` beyond the guard options every subcommand shares."""
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* and /metrics (default: $LORAGUARD_API_KEY)")
    p.add_argument("--model-alias", action="append", default=[], metavar="NAME",
                   help="another model name requests may use (e.g. omni-moderation-latest); repeatable")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long a moderation input waits for others to share its decode")
    p.add_argument("--max-batch", type=int, default=32, help="guard inputs per decode")
    p.add_argument("--guard-contexts", type=int, default=None, metavar="N",
                   help="guard contexts over the one loaded model, each decoding a batch of its own at the same time "
                   "(default: 2, or 1 with --threads 1)")
    p.add_argument("--chat-slots", type=int, default=1, metavar="N",
                   help="chats generating at the same time, each in a chat context of its own; more wait (up to "
                   "--max-chat-queue)")
    p.add_argument("--chat-ctx", type=int, default=2048,
                   help="tokens per chat slot's context: the messages plus max_tokens must fit")
    p.add_argument("--max-queue", type=int, default=256, help="guard inputs waiting at most; beyond: 429")
    p.add_argument("--max-chat-queue", type=int, default=4, help="chat requests waiting at most; beyond: 429")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--max-input-chars", type=int, default=32_000, help="characters per input or message")
    p.add_argument("--max-inputs", type=int, default=64, help="inputs per moderation request")
    p.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a chat request may ask")
    p.add_argument("--default-max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help="max_tokens when a chat request has none (default: %(default)s)")
    p.add_argument("--window", type=int, default=16,
                   help="guard the streamed reply every N pieces and release them only then (0: when finished); an "
                   "aLoRA guard judges every N tokens in the chat slot's own context")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="on SIGINT/SIGTERM, seconds to let requests in flight finish")


def model_name(guard: str | None) -> str:
    """The name clients pass as ``model``: the named guard, or a guard file's stem."""
    if guard is None:
        return registry.DEFAULT_GUARD
    return guard if guard in registry.GUARDS else Path(guard).stem


# The smallest value each numeric option takes (by its argparse dest).
_LEAST: dict[str, float] = {
    "port": 0, "batch_window_ms": 0, "max_batch": 1, "guard_contexts": 1, "chat_slots": 1, "chat_ctx": 64,
    "max_queue": 1, "max_chat_queue": 0, "max_body_bytes": 1024, "max_input_chars": 1, "max_inputs": 1,
    "max_tokens": 1, "default_max_tokens": 1, "window": 0, "request_timeout": 0.001, "graceful_timeout": 0,
}


def default_guard_contexts(threads: int | None) -> int:
    """Two guard contexts where the thread budget has two threads or more, else one. Measured on 2 busy cores
    (bench/README.md, serving): at --threads 2 and 16 clients, two contexts served 12.8 times the moderation
    requests/s of one (median of 3 rounds), whose 2-thread decodes stalled whenever another process took a core;
    at --threads 1 the two were even. More than two were not measured."""
    from .._native import Model

    return min(2, max(1, threads or Model.default_n_threads()))


def _check_limits(args: argparse.Namespace) -> None:
    if args.guard_contexts is None:
        args.guard_contexts = default_guard_contexts(args.threads)
    for dest, least in _LEAST.items():
        if (value := getattr(args, dest)) < least:
            raise LoraGuardError(f"--{dest.replace('_', '-')} must be at least {least:g}, got {value}")
    if args.max_queue < args.max_inputs:
        raise LoraGuardError(f"--max-queue {args.max_queue} is below --max-inputs {args.max_inputs}: a request that "
                             "large could never be queued; raise --max-queue or lower --max-inputs")


def run(args: argparse.Namespace) -> int:
    _check_limits(args)
    try:
        import uvicorn

        from .app import API_KEY_ENV, ServerConfig, create_app
    except ImportError as e:
        raise LoraGuardError(f"loraguard-cli serve needs the serve extra ({e}): pip install 'loraguard[serve]'") from e
    from ..cli import _open_guard

    config = ServerConfig(
        model_name=model_name(args.guard), aliases=tuple(args.model_alias),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch, max_queue=args.max_queue, max_chat_queue=args.max_chat_queue,
        max_body_bytes=args.max_body_bytes, max_input_chars=args.max_input_chars, max_inputs=args.max_inputs,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens), max_tokens=args.max_tokens,
        window=args.window, request_timeout_s=args.request_timeout, guard_contexts=args.guard_contexts,
        chat_slots=args.chat_slots, chat_n_ctx=args.chat_ctx,
    )
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_errors: list[BaseException] = []

    def on_load_error(error: BaseException) -> None:
        load_errors.append(error)
        server.should_exit = True

    app = create_app(config, lambda: _open_guard(args, chat_n_ctx=args.chat_ctx), on_load_error)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, access_log=False, log_level="info", lifespan="on",
        timeout_graceful_shutdown=args.graceful_timeout,
    ))
    log = logging.getLogger("loraguard.server")
    auth = "API key required" if config.api_key else "no API key (--api-key)"
    log.info("serving %s on http://%s:%d (%s); loading the guard", config.model_name, args.host, args.port, auth)
    if not config.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach it may use it", args.host)
    server.run()
    if load_errors:
        raise load_errors[0]
    return 0
