"""The KV-sharing (aLoRA) guard: a verdict read in the chat's own context against re-reading the conversation with
today's guard, and a whole guarded streaming chat both ways (issue 16).

    .venv/bin/python -m bench.alora [--lengths 128 512 2048] [--reps 5] [--threads 2] [--out bench/results]

SmolLM2-135M-Instruct as the named guard runs it (the F16 re-export), guards with a random non-zero rank-8 LoRA on
every layer's q and v and a random head that never flags (tests/alora_guards.py): speed does not depend on the
values. The aLoRA guard and today's plain guard carry the same tensors. Each measurement runs in a process of its
own (its peak RSS is its own), with llama.cpp's log on so that its own timer of every scheduler rebuild
("reserve took ... ms") is read off and reported apart.

Cases, per conversation length N (a user message rendered by the chat template, N tokens):
- `in-place`: the chat has read the N tokens; a verdict is `lg_chat_classify` (the invocation with the adapter
  set, then removed and unset) plus the extra cost of the chat's next decode (llama.cpp rebuilds the scheduler
  again once the adapter is gone), measured against the same next decode with no verdict before it.
- `re-read`: today's guard classifies the same N tokens in its own context (n_ctx N + 16, so nothing is cut).
- memory: what either guard adds to the process's peak RSS once the chat has read the N tokens (loaded and used).
And a whole guarded turn: a prompt and a reply of up to 256 tokens judged every 16 tokens, `loraguard-cli chat`'s
turn with each guard (the plain one re-reads prompt and reply at every window), wall time.
Writes OUT/<date>-<host>-alora.{json,md}. Run it on a quiet machine: the report records the load average.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# llama.cpp's own timer of a scheduler rebuild (llama_context::sched_reserve)
RESERVE = re.compile(r"reserve took ([0-9.]+) ms")
TIMED, DONE = "LG-BENCH-TIMED", "LG-BENCH-DONE"
STORY = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def _guards(out: Path) -> tuple[Path, Path, Path]:
    """(base, aLoRA guard, plain guard with the same tensors) on the prepared SmolLM2 F16 base."""
    sys.path.insert(0, str(REPO / "tests"))
    import alora_guards

    from loraguard_cpp.registry import prepare_base

    base = alora_guards.smollm2(prepare_base("smollm2", quiet=True))
    alora = alora_guards.build_alora_guard(base, out / "alora.gguf")
    plain = alora_guards.build_alora_guard(base, out / "plain.gguf", alora=False)
    return base.gguf, alora, plain


def _message(model: Any, chat: Any, n_tokens: int) -> list[tuple[bytes, bytes]]:
    """A user message whose rendered chat is n_tokens long (filler words added one by one near the end)."""
    words = ("the keeper climbs the stairs and trims the lamp while the storm rolls in from the sea " * 400).split()
    lo, hi = 1, len(words)
    while lo < hi:  # the most words that fit
        mid = (lo + hi + 1) // 2
        if len(chat.tokenize([(b"user", " ".join(words[:mid]).encode())])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return [(b"user", " ".join(words[:lo]).encode())]


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def worker(mode: str, length: int, reps: int, threads: int, base: Path, alora: Path, plain: Path) -> dict[str, Any]:
    """One measurement in this process; llama.cpp logs to stderr, with markers around the timed part."""
    from loraguard_cpp import _native

    model = _native.Model(str(base), n_threads=threads, verbose=True)
    chat = _native.ChatPath(model, n_ctx=length + 64 + 2 * reps)
    messages = _message(model, chat, length)
    ids = chat.tokenize(messages)
    chat.decode(ids)
    out: dict[str, Any] = {"mode": mode, "tokens": len(ids), "chat_peak_rss_mib": _vm_hwm_mib()}
    next_token = ids[-1]
    if mode == "in-place":
        guard = _native.GuardPath(model, str(alora))
        chat.classify(guard)  # warm-up
        chat.decode([next_token], False)
        verdict, after, alone = [], [], []
        print(TIMED, file=sys.stderr, flush=True)
        for _ in range(reps):
            t0 = time.perf_counter()
            chat.classify(guard)
            t1 = time.perf_counter()
            chat.decode([next_token], False)  # the chat's next decode, after a verdict
            t2 = time.perf_counter()
            chat.decode([next_token], False)  # and one with no verdict before it
            t3 = time.perf_counter()
            verdict.append(t1 - t0)
            after.append(t2 - t1)
            alone.append(t3 - t2)
        print(DONE, file=sys.stderr, flush=True)
        out.update(verdict_ms=_median_ms(verdict), next_decode_after_verdict_ms=_median_ms(after),
                   next_decode_alone_ms=_median_ms(alone), n_invocation=len(guard.invocation))
    elif mode == "re-read":
        guard = _native.GuardPath(model, str(plain), n_ctx=length + 16)
        text = messages[0][1]
        assert len(guard.tokenize(text)) == len(ids), "the plain guard must re-read exactly the chat's tokens"
        guard.classify([text])  # warm-up
        samples = []
        print(TIMED, file=sys.stderr, flush=True)
        for _ in range(reps):
            t0 = time.perf_counter()
            guard.classify([text])
            samples.append(time.perf_counter() - t0)
        print(DONE, file=sys.stderr, flush=True)
        out.update(reread_ms=_median_ms(samples))
    out["added_rss_mib"] = _vm_hwm_mib() - out["chat_peak_rss_mib"]  # the guard beside the chat, same process
    return out


def turn_worker(guard_path: Path, base: Path, threads: int, max_tokens: int, window: int) -> dict[str, Any]:
    """loraguard-cli chat's turn (prompt verdict, reply streamed and judged every window) with one guard."""
    from loraguard_cpp import Guard, cli

    args = argparse.Namespace(max_tokens=max_tokens, temperature=0.0, seed=0, window=window)
    with Guard(base, guard_path, n_threads=threads, n_ctx=2048, chat_n_ctx=2048) as g:
        g.chat([("user", "Hi")], max_tokens=1, window=None)  # warm-up: the chat context exists
        g.classify("Hi")
        t0 = time.perf_counter()
        turn = cli._guarded_turn(g, [("user", STORY)], args, echo=False)
        wall = time.perf_counter() - t0
        n_reply = len(g.model.tokenize(str(turn["response"]), add_special=False))
    return {"wall_s": wall, "reply_tokens": n_reply, "refused": turn.get("refused")}


def _run(args: list[str]) -> tuple[dict[str, Any], list[float]]:
    """A worker process: its JSON result and llama.cpp's scheduler rebuild times inside its timed part."""
    proc = subprocess.run([sys.executable, "-m", "bench.alora", "--worker", *args], capture_output=True, text=True,
                          cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.alora worker {args} failed:\n{proc.stderr[-3000:]}")
    timed = proc.stderr.split(TIMED, 1)[-1].split(DONE, 1)[0] if TIMED in proc.stderr else ""
    return json.loads(proc.stdout.strip().splitlines()[-1]), [float(m) for m in RESERVE.findall(timed)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.alora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--reps", type=int, default=5)
    # one thread: on a shared machine llama.cpp's threads wait for each other at every op when one is preempted
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--turn-tokens", type=int, default=256)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "turn":
            guard, base, threads, max_tokens, window = rest
            result = turn_worker(Path(guard), Path(base), int(threads), int(max_tokens), int(window))
        else:
            length, reps, threads, base, alora, plain = rest
            result = worker(kind, int(length), int(reps), int(threads), Path(base), Path(alora), Path(plain))
        print(json.dumps(result))
        return 0

    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base, alora, plain = _guards(Path(tmp))
        paths = [str(base), str(alora), str(plain)]
        for n in args.lengths:
            common = [str(n), str(args.reps), str(args.threads), *paths]
            in_place, reserves = _run(["in-place", *common])
            reread, _ = _run(["re-read", *common])
            reserve_ms = statistics.median(reserves) if reserves else float("nan")
            total = in_place["verdict_ms"] + in_place["next_decode_after_verdict_ms"] - in_place["next_decode_alone_ms"]
            rows.append({
                "tokens": in_place["tokens"], **{k: in_place[k] for k in in_place if k.endswith("_ms")},
                "n_invocation": in_place["n_invocation"], "verdict_total_ms": total,
                "reserve_ms_median": reserve_ms, "reserves_per_verdict": len(reserves) / args.reps,
                "verdict_without_rebuilds_ms": total - len(reserves) / args.reps * reserve_ms,
                "reread_ms": reread["reread_ms"], "ratio": total / reread["reread_ms"],
                "ratio_without_rebuilds": (total - len(reserves) / args.reps * reserve_ms) / reread["reread_ms"],
                "chat_peak_rss_mib": in_place["chat_peak_rss_mib"],
                "added_rss_mib_in_place": in_place["added_rss_mib"], "added_rss_mib_reread": reread["added_rss_mib"],
            })
        turn = {name: _run(["turn", path, str(base), str(args.threads), str(args.turn_tokens), str(args.window)])[0]
                for name, path in (("aLoRA in place", alora), ("plain, re-reading", plain))}
        adapter_mib = plain.stat().st_size / 2**20
    load_after = os.getloadavg()

    report = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
              "threads": args.threads, "reps": args.reps, "load_average_before": load_before,
              "load_average_after": load_after, "guard_file_mib": adapter_mib, "lengths": rows, "turn": turn,
              "turn_ratio": turn["aLoRA in place"]["wall_s"] / turn["plain, re-reading"]["wall_s"]}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{report['date']}-{platform.node()}-alora"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"# aLoRA guard in the chat's context vs re-reading, SmolLM2 F16, {args.threads} threads "
             f"({report['date']})", "",
             f"Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}. Guard file "
             f"{adapter_mib:.1f} MiB. Medians of {args.reps} calls.", "",
             "| tokens | verdict ms (call + next-decode extra) | of it: scheduler rebuilds | re-read ms | ratio | "
             "ratio w/o rebuilds | added RSS in place MiB | added RSS re-read MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['tokens']} | {r['verdict_total_ms']:.1f} | {r['reserves_per_verdict']:.0f} x "
              f"{r['reserve_ms_median']:.1f} | {r['reread_ms']:.1f} | {r['ratio']:.1%} | "
              f"{r['ratio_without_rebuilds']:.1%} | {r['added_rss_mib_in_place']:.1f} | "
              f"{r['added_rss_mib_reread']:.1f} |" for r in rows]
    lines += ["", f"Guarded turn (prompt + up to {args.turn_tokens} reply tokens judged every {args.window}):", ""]
    lines += [f"- {name}: {t['wall_s']:.2f} s ({t['reply_tokens']} reply tokens)" for name, t in turn.items()]
    lines += [f"- ratio in place / re-reading: {report['turn_ratio']:.2f}"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
