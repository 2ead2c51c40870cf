"""``loraguard-cli``: classify text, chat and generate on the chat path, inspect and quantize models.

Exit codes: 0 success (nothing flagged), 1 at least one input flagged (classify; chat: a refused turn), 2 error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import dataset, registry
from .conversation import conversation_inputs
from .errors import FileAccessError, FlaggedError, LoraGuardError
from .guard import DEFAULT_MAX_TOKENS, DEFAULT_SEED, DEFAULT_TEMPERATURE, ChatVerdict, Guard, GuardResult
from .reply import ReplyGate

EXIT_FLAGGED = 1
EXIT_ERROR = 2
_BATCH = 32


def _guard_options(p: argparse.ArgumentParser, *, ctx_help: str = "guard context: tokens per text window",
                   ctx_default: int = 512) -> None:
    p.add_argument("--model", "-m", default=None,
                   help=f"base model GGUF or a named base ({', '.join(registry.BASES)}); default: the named guard's")
    p.add_argument("--guard", "-g", default=None,
                   help=f"guard GGUF (loraguard-convert guard) or a named guard ({', '.join(registry.GUARDS)}); "
                   f"default: {registry.DEFAULT_GUARD}")
    p.add_argument("--threads", "-t", type=int, default=None, help="threads (default: free cores)")
    p.add_argument("--gpu-layers", type=int, default=0, help="layers to offload to the GPU backend")
    p.add_argument("--ctx", type=int, default=ctx_default, help=ctx_help)
    p.add_argument("--overflow", choices=["keep_end", "windows", "error"], default="windows",
                   help="text longer than --ctx: score half-overlapping windows, max per label (default: every "
                   "token is read), keep only its end (the start is never read), or fail")
    p.add_argument("--isolated", action="store_true", help="score each text alone (bit-reproducible scores)")
    p.add_argument("--whole", action="store_true",
                   help="read each text whole, not also line by line (fewer texts flagged for one edgy line; a "
                   "request pasted among benign paragraphs is then averaged into them)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def _sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="default: %(default)s")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0: greedy (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="default: %(default)s")


def _guard_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The Guard options every command takes from _guard_options (but --ctx, whose meaning is the command's)."""
    return {"n_threads": args.threads, "n_gpu_layers": args.gpu_layers, "overflow": args.overflow,
            "isolated": args.isolated, "read_lines": not args.whole, "verbose": args.verbose}


def _open_guard(args: argparse.Namespace, **options: int) -> Guard:
    return Guard(args.model, args.guard, n_ctx=args.ctx, **_guard_kwargs(args), **options)


def _inputs(args: argparse.Namespace) -> Iterator[tuple[str, str | None]]:
    if args.jsonl:
        for n, row in dataset.jsonl_objects(args.jsonl):
            yield _text_and_response(row, f"{args.jsonl}:{n}")
    elif args.text == ["-"]:
        for line in sys.stdin:
            if line := line.rstrip("\n"):
                yield line, None
    else:
        for text in args.text:
            yield text, args.response


def _text_and_response(row: dict[str, object], where: str) -> tuple[str, str | None]:
    """(text, response) of one --jsonl object; anything but a string text (and a string or absent response) is an
    error naming the line, never a text like "None" classified in its place."""
    text, response = row.get("text"), row.get("response")
    if not isinstance(text, str):
        got = "no 'text' field" if "text" not in row else f"'text' is {json.dumps(text)[:40]}"
        raise LoraGuardError(f"{where}: 'text' must be a string ({got})")
    if response is not None and not isinstance(response, str):
        raise LoraGuardError(f"{where}: 'response' must be a string or null (got {json.dumps(response)[:40]})")
    return text, response


def _batches(items: Iterable[tuple[str, str | None]], size: int) -> Iterator[list[tuple[str, str | None]]]:
    batch: list[tuple[str, str | None]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_classify(args: argparse.Namespace) -> int:
    if args.input is not None:
        return EXIT_FLAGGED if dataset.score_file(args) else 0
    if not args.text and not args.jsonl:
        raise LoraGuardError("nothing to classify: give text, '-' for lines on stdin, or --jsonl FILE")
    any_flagged = False
    with _open_guard(args) as guard:
        progress = None
        if args.jsonl or args.text == ["-"]:
            from tqdm import tqdm

            progress = tqdm(unit="text", file=sys.stderr, disable=None)
        for batch in _batches(_inputs(args), _BATCH):
            texts = [t for t, _ in batch]
            responses = [r for _, r in batch]
            results = guard.classify_many(texts, responses if any(r is not None for r in responses) else None)
            for text, result in zip(texts, results, strict=True):
                any_flagged |= result.flagged
                if args.json:
                    print(json.dumps({"text": text, **_verdict_dict(result)}, ensure_ascii=False))
                else:
                    verdict = "FLAGGED " + ",".join(result.flagged_labels) if result.flagged else "ok"
                    detail = " ".join(f"{lab}={p:.3f}" for lab, p in result.scores.items())
                    print(f"{verdict}\t{detail}\t{text[:80]!r}")
            if progress is not None:
                progress.update(len(batch))
        if progress is not None:
            progress.close()
    return EXIT_FLAGGED if any_flagged else 0


def _open_chat_model(args: argparse.Namespace, **options: int) -> Guard:
    """The Guard for `generate` and `chat`, refusing a base with no chat path before anything is prepared."""
    chat_guards = ", ".join(f"--guard {name}" for name, g in registry.GUARDS.items() if registry.BASES[g.base].chat)
    named = registry.named_base(args.model, args.guard)
    if named is not None and not named.chat:
        raise LoraGuardError(f"{args.command} needs a chat model, and the {named.name!r} base is an encoder that "
                             f"cannot generate text: use {chat_guards}")
    guard = Guard(args.model, args.guard, **_guard_kwargs(args), **options)
    if guard.model.is_encoder:
        guard.close()
        raise LoraGuardError(f"{args.command} needs a chat model, and {guard.model_path} is an encoder that cannot "
                             f"generate text: use a decoder base or {chat_guards}")
    return guard


def cmd_generate(args: argparse.Namespace) -> int:
    with _open_chat_model(args, chat_n_ctx=args.ctx) as guard:
        # messages keep the user's text plain text on the chat path; --raw is a trusted prompt, parsed as is
        prompt = args.prompt if args.raw else [("user", args.prompt)]
        for piece in guard.stream(prompt, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


REFUSAL = "I can't help with that."


def _verdict_dict(result: GuardResult) -> dict[str, object]:
    return {"flagged": result.flagged, "flagged_labels": result.flagged_labels,
            "scores": {k: round(v, 6) for k, v in result.scores.items()}}


_Judged = dict[tuple[str, str | None], GuardResult]


def _judge_conversation(guard: Guard, history: list[tuple[str, str]], judged: _Judged) -> list[GuardResult]:
    """One verdict per message of the history, as the server judges a request's messages; JUDGED holds the
    verdicts of earlier turns, so that only messages new to it are read (in one batch)."""
    inputs = conversation_inputs(history)
    for stale in judged.keys() - set(inputs):  # messages no longer in the history (refused, dropped to fit)
        del judged[stale]
    if new := list(dict.fromkeys(i for i in inputs if i not in judged)):
        judged.update(zip(new, guard.classify_many([t for t, _ in new], [r for _, r in new]), strict=True))
    return [judged[i] for i in inputs]


def _show(released: str, echo: bool) -> None:
    """Writes reply text to the terminal as the gate releases it."""
    if echo and released:
        sys.stdout.write(released)
        sys.stdout.flush()


def _refuse(where: str, verdict: GuardResult, reply: ReplyGate, echo: bool) -> None:
    """The turn is refused: say so after what was shown, if anything."""
    if echo:
        lead = "\n" if reply.released else ""
        print(f"{lead}[guard: {where} flagged {verdict.flagged_labels}] {REFUSAL}")


def _judge_pending(guard: Guard, user: str, reply: ReplyGate) -> str:
    """The pending pieces the gate releases once a plain guard has judged the reply so far, where it must."""
    if not reply.needs_verdict:
        return reply.release()
    return reply.apply(guard.classify(user, reply.candidate))


def _guarded_turn(guard: Guard, history: list[tuple[str, str]], args: argparse.Namespace, echo: bool,
                  judged: _Judged) -> dict[str, object]:
    """One chat turn: guard every message of the history (those not in JUDGED yet), generate on the chat path,
    guard the response as it grows and show only what a passing verdict read."""
    if guard.is_alora:
        return _alora_turn(guard, history, args, echo)
    user = history[-1][1]
    verdicts = _judge_conversation(guard, history, judged)
    # the first flagged message decides the refusal; with none, the last (the user's) stands for the prompt
    prompt_verdict = next((v for v in verdicts if v.flagged), verdicts[-1])
    turn: dict[str, object] = {"prompt": user, "prompt_verdict": _verdict_dict(prompt_verdict)}
    reply = ReplyGate(args.window)
    if prompt_verdict.flagged:
        turn.update(response=REFUSAL, response_verdict=None, refused="prompt")
        _refuse("prompt", prompt_verdict, reply, echo)
        return turn
    for piece in guard.stream(history, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed):
        reply.add(piece)
        if reply.window_due:
            _show(_judge_pending(guard, user, reply), echo)
            if reply.flagged:
                break
    else:  # the whole reply, unless the last window's verdict read all of it
        _show(_judge_pending(guard, user, reply), echo)
    verdict = reply.verdict
    turn.update(response=reply.released, response_verdict=None if verdict is None else _verdict_dict(verdict))
    if verdict is not None and verdict.flagged:
        # A flagged reply's text never reaches a caller of --json: it gets the refusal, as for a flagged prompt.
        turn.update(response=REFUSAL, response_withheld=True, refused="response")
        _refuse("response", verdict, reply, echo)
        return turn
    if verdict is not None:
        judged[(user, reply.released)] = verdict  # the reply, as the next turn's history holds it
    if echo:
        print()
    return turn


def _alora_turn(guard: Guard, history: list[tuple[str, str]], args: argparse.Namespace,
                echo: bool) -> dict[str, object]:
    """A turn guarded in the chat's own context by an aLoRA guard: the whole conversation, system message and
    history included, is judged after the prompt's prefill and the reply every --window tokens, each at the cost
    of the new tokens plus the invocation; a verdict covers the pieces before it, which are shown once it passes."""
    verdicts: list[ChatVerdict] = []
    reply = ReplyGate()
    try:
        for item in guard.stream_with_verdicts(history, max_tokens=args.max_tokens, temperature=args.temperature,
                                               seed=args.seed, window=args.window):
            if isinstance(item, str):
                reply.add(item)
            else:
                verdicts.append(item)
                _show(reply.apply_in_place(item), echo)
    except FlaggedError as e:
        flagged = e.verdict if isinstance(e.verdict, ChatVerdict) else verdicts[-1]
        where = "prompt" if flagged.n_reply_tokens == 0 else "response"
        turn: dict[str, object] = {"prompt": history[-1][1], "prompt_verdict": _verdict_dict(verdicts[0]),
                                   "response": REFUSAL, "refused": where}
        turn["response_verdict"] = None if where == "prompt" else _verdict_dict(flagged)
        if where == "response":
            turn["response_withheld"] = True
        _refuse(where, flagged, reply, echo)
        return turn
    # The last verdict read the whole reply: a character split across its last token comes after it.
    _show(reply.release(), echo)
    replies = [v for v in verdicts if v.n_reply_tokens > 0]
    if echo:
        print()
    return {"prompt": history[-1][1], "prompt_verdict": _verdict_dict(verdicts[0]), "response": reply.released,
            "response_verdict": _verdict_dict(replies[-1]) if replies and reply.released.strip() else None}


def _fit_history(guard: Guard, history: list[tuple[str, str]], budget: int) -> list[tuple[str, str]]:
    """The history without its oldest exchanges (the system message kept) until the rendered chat leaves
    BUDGET tokens or fewer, so a long conversation goes on instead of overflowing the chat context."""
    system = history[:1] if history and history[0][0] == "system" else []
    turns = history[len(system):]
    while len(turns) > 1 and len(guard.tokenize_chat(system + turns)) > budget:
        turns = turns[2:]  # one user message and the reply to it
    return system + turns


def cmd_chat(args: argparse.Namespace) -> int:
    if args.max_tokens >= args.chat_ctx:
        raise LoraGuardError(f"--max-tokens {args.max_tokens} leaves no room for the prompt in --chat-ctx "
                             f"{args.chat_ctx}: lower it or raise --chat-ctx")
    with _open_chat_model(args, n_ctx=args.ctx, chat_n_ctx=args.chat_ctx) as guard:
        history: list[tuple[str, str]] = [("system", args.system)] if args.system else []
        judged: _Judged = {}
        if args.prompt is not None:
            history.append(("user", args.prompt))
            turn = _guarded_turn(guard, history, args, not args.json, judged)
            if args.json:
                print(json.dumps(turn, ensure_ascii=False))
            return EXIT_FLAGGED if "refused" in turn else 0
        print("loraguard chat: one message per line, Ctrl-D to quit", file=sys.stderr)
        for line in sys.stdin:
            if not (message := line.strip()):
                continue
            history.append(("user", message))
            try:
                history = _fit_history(guard, history, args.chat_ctx - args.max_tokens)
                turn = _guarded_turn(guard, history, args, True, judged)
            except LoraGuardError as e:  # one message too long for the context: say so and go on chatting
                print(f"loraguard-cli: error: {_one_line(e)}", file=sys.stderr)
                history.pop()
                continue
            if "refused" in turn:
                history.pop()
            else:
                history.append(("assistant", str(turn["response"])))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _open_guard(args) as guard:
        m = guard.model
        info = {
            "model": {"path": str(guard.model_path), "name": m.name, "architecture": m.architecture,
                      "file_type": m.file_type, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_vocab": m.n_vocab,
                      "n_params": m.n_params, "fingerprint": m.fingerprint, "encoder": m.is_encoder},
            "guard": {"path": str(guard.guard_path), "labels": guard.labels,
                      "thresholds": [float(t) for t in guard.thresholds],
                      "lora_rank": guard.lora_rank, "n_params": guard.n_params,
                      "params_vs_base": guard.n_params / m.n_params,
                      "pooling": guard.meta("pooling"), "template": guard.meta("template.prompt"),
                      "template_pair": guard.meta("template.pair"), "base_name": guard.meta("base.name"),
                      "base_fingerprint": guard.meta("base.fingerprint")},
        }
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        for section, values in info.items():
            print(f"[{section}]")
            for k, v in values.items():
                print(f"  {k}: {v}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from . import _native

    _native.Model.quantize(args.input, args.output, args.type, args.threads or 0)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size / 2**20:.1f} MiB, {args.type})", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    names = args.prepare or []
    unknown = [n for n in names if n not in registry.GUARDS and n not in registry.BASES]
    if unknown:
        raise LoraGuardError(f"unknown name {unknown[0]!r}; named guards: {', '.join(registry.GUARDS)}")
    for name in names:
        base = registry.GUARDS[name].base if name in registry.GUARDS else name
        print(f"{name}: base ready at {registry.prepare_base(base)}", file=sys.stderr)
    rows = []
    for guard in registry.GUARDS.values():
        base = registry.BASES[guard.base]
        try:
            cached: Path | None = base.cached_path()
        except FileAccessError:  # its package is not installed: prepare_base says what to install
            cached = None
        rows.append({"guard": guard.name, "default": guard.name == registry.DEFAULT_GUARD, "what": guard.what,
                     "guard_file": str(guard.path), "base": base.name, "base_package": base.distribution,
                     "base_type": base.prepared_type,
                     "base_file": str(cached) if cached is not None and cached.is_file() else None})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = row["base_file"] or "prepared on first use"
            default = " (default)" if row["default"] else ""
            print(f"{row['guard']}{default}: {row['what']}\n  base {row['base']} {row['base_type']} from "
                  f"pip package {row['base_package']}: {state}")
    return 0


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .server import command  # its web stack loads only when the server runs

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server: /v1/moderations and guarded /v1/chat/completions")
    _guard_options(p)
    command.add_arguments(p)
    p.set_defaults(func=command.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraguard-cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="classify text (exit 1 if anything is flagged)")
    _guard_options(p)
    p.add_argument("text", nargs="*", help="texts to classify, or '-' for one text per line on stdin")
    p.add_argument("--response", help="classify TEXT as a prompt together with this response")
    p.add_argument("--jsonl", help="JSON lines with 'text' (and optional 'response') fields")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    dataset.add_arguments(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("generate", help="generate on the chat path (no adapter: the base model as is)")
    _guard_options(p, ctx_help="chat context: prompt and generated tokens", ctx_default=2048)
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="use the prompt as is, without the model's chat template")
    _sampling_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat on the chat path, prompts and responses guarded by the same model")
    _guard_options(p)
    p.add_argument("--prompt", help="one turn, non-interactive (otherwise messages are read from stdin)")
    p.add_argument("--system", help="system message")
    p.add_argument("--json", action="store_true", help="with --prompt: print verdicts and response as JSON")
    p.add_argument("--window", type=int, default=16,
                   help="re-guard the streamed response every N pieces (0: only when finished); an aLoRA guard "
                        "judges the whole conversation in the chat's own context every N tokens")
    p.add_argument("--chat-ctx", type=int, default=2048,
                   help="chat context: the oldest exchanges are dropped to keep room for --max-tokens")
    _sampling_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="model and guard metadata")
    _guard_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="named guards and their base models (--prepare NAME: fetch and convert now)")
    p.add_argument("--prepare", nargs="*", metavar="NAME", help="prepare these guards' bases in the user cache")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("quantize", help="quantize a model GGUF (llama.cpp's llama_model_quantize)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("type", help="Q8_0, Q4_K_M, Q4_0, F16, ...")
    p.add_argument("--threads", "-t", type=int, default=None)
    p.set_defaults(func=cmd_quantize)
    _serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (LoraGuardError, OSError) as e:
        print(f"loraguard-cli: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as e:  # a bug or a broken environment: still one line and the error exit, never 1 (flagged)
        print(f"loraguard-cli: error: unexpected {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
