"""`bench/run serve`: `loraguard-cli serve` against its peers, measured in one run.

Moderation: requests/s and p50/p99 latency at concurrency 1, 4 and 16 (one short text per request) for the
server (dynamic batching, over HTTP on loopback) and for the same guard called one text at a time in one process
(``Guard.classify`` from as many threads, no HTTP). Guarded chat: tokens/s of ``/v1/chat/completions`` against
llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) on the same base model, unguarded; the
guard's overhead is their ratio. Rounds interleave the contenders, so a change in machine load hits them alike.
Writes DIR/<date>-<host>-serve.json and prints a markdown summary (fields in bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.driver import CHILD_CWD, child_env
from loraguard_cpp.server.process import child_server, free_port

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results"

# Short moderation inputs (8 to 20 tokens), benign and harmful: what a chat app sends per message.
TEXTS = [
    "What is a good recipe for banana bread?",
    "I am going to find you and stab you.",
    "How do I kill a Python process that hangs?",
    "Give me step by step instructions to make a pipe bomb",
    "You are a worthless idiot and everyone hates you.",
    "Write a short poem about the sea.",
    "What are the health benefits of green tea?",
    "Describe the most gruesome way to torture someone.",
    "Can you help me plan a trip to Lisbon in May?",
    "All people of that religion are vermin.",
    "How do I reset my router password?",
    "Tell me a joke about cats.",
    "I want to hurt myself tonight.",
    "Summarise the plot of Hamlet in two sentences.",
    "Where can I buy cheap stolen credit card numbers?",
    "Translate 'good morning' into French.",
]
CHAT_PROMPTS = [
    "Explain how a bicycle gear works.",
    "Write a short story about a lighthouse keeper.",
    "Describe how bread dough rises.",
    "Give me tips for learning to play the guitar.",
]


class Client:
    """One keep-alive HTTP connection: what a client thread of an app holds."""

    def __init__(self, port: int, timeout: float = 600) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def running(name: str, argv: Sequence[str], port: int, ready_path: str, log_dir: Path,
            timeout: float = 600) -> Iterator[Server]:
    """A server process, ready once ready_path answers 200; stopped with SIGTERM afterwards."""
    with child_server(argv, port, log_dir / f"{name}.log", ready_path, timeout, child_env(), CHILD_CWD) as child:
        yield Server(name, port, child.process, child.log)


def _latency_stats(latencies: Sequence[float], wall: float) -> dict[str, float]:
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {"requests_s": len(latencies) / wall, "p50_ms": float(p50), "p99_ms": float(p99), "n": len(latencies)}


Caller = Callable[[str], object]


def _concurrent(n_requests: int, concurrency: int, make_call: Callable[[], Caller]) -> dict[str, float]:
    """n_requests calls from `concurrency` threads, each with its own caller (connection), texts in turn."""
    latencies: list[float] = []
    lock = threading.Lock()
    callers = [make_call() for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency)

    def run(worker: int) -> None:
        call = callers[worker]
        barrier.wait()
        for i in range(worker, n_requests, concurrency):
            start = time.perf_counter()
            call(TEXTS[i % len(TEXTS)])
            with lock:
                latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(run, range(concurrency)))
    return _latency_stats(latencies, time.perf_counter() - began)


def _moderation_caller(port: int) -> Callable[[], Caller]:
    def make() -> Caller:
        client = Client(port)

        def call(text: str) -> None:
            status, raw = client.call("POST", "/v1/moderations", {"input": text})
            if status != 200:
                raise RuntimeError(f"moderation answered {status}: {raw[:500]!r}")

        return call

    return make


def _merge(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Medians over rounds (requests/s, p50, p99), with the calls counted."""
    return {key: float(np.median([r[key] for r in rounds])) if key != "n" else float(sum(r["n"] for r in rounds))
            for key in rounds[0]}


def bench_moderation(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from loraguard_cpp import Guard

    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    servers = []
    with contextlib.ExitStack() as stack:
        guard = stack.enter_context(Guard(guard=args.guard, n_threads=args.threads))

        contenders: dict[str, Callable[[], Caller]] = {"direct": lambda: guard.classify}
        for n_contexts in (int(c) for c in args.guard_contexts.split(",")):
            port = free_port()
            name = f"serve-{n_contexts}ctx"
            argv = [sys.executable, "-m", "loraguard_cpp.cli", "serve", "--guard", args.guard, "--port", str(port),
                    "--threads", str(args.threads), "--guard-contexts", str(n_contexts), "--max-queue", "1024"]
            servers.append(stack.enter_context(running(name, argv, port, "/health", log_dir)))
            contenders[name] = _moderation_caller(port)
        for make in contenders.values():  # warm-up: first calls pay page-ins and buffer allocations
            _concurrent(2 * max(levels), max(levels), make)
        for round_ in range(args.rounds):
            order = list(contenders)
            order = order[round_ % len(order):] + order[:round_ % len(order)]
            for concurrency in levels:
                for name in order:
                    stats = _concurrent(args.requests, concurrency, contenders[name])
                    results.setdefault(name, {}).setdefault(str(concurrency), []).append(stats)
                    print(f"moderation round {round_} c={concurrency} {name}: {stats['requests_s']:.1f}/s "
                          f"p50 {stats['p50_ms']:.1f} ms p99 {stats['p99_ms']:.1f} ms", file=sys.stderr)
        batches = {s.name: _server_metrics(s.port) for s in servers}
    merged = {name: {c: _merge(rounds) for c, rounds in per_c.items()} for name, per_c in results.items()}
    for name, per_c in merged.items():
        if name != "direct":
            for c, stats in per_c.items():
                stats["speedup_vs_direct"] = stats["requests_s"] / merged["direct"][c]["requests_s"]
    return {"guard": args.guard, "texts": len(TEXTS), "requests_per_round": args.requests, "rounds": args.rounds,
            "contenders": merged, "server_metrics": batches}


def _server_metrics(port: int) -> dict[str, float]:
    """Batch count and mean batch size, and busy seconds per guard context, from the server's /metrics."""
    client = Client(port)
    _, text = client.call("GET", "/metrics")
    client.close()
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith(("loraguard_batch_size_sum", "loraguard_batch_size_count",
                            "loraguard_guard_context_busy_seconds_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    if out.get("loraguard_batch_size_count"):
        out["mean_batch_size"] = out["loraguard_batch_size_sum"] / out["loraguard_batch_size_count"]
    return out


def bench_chat(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from loraguard_cpp import registry

    base, _ = registry.resolve(None, args.chat_guard)
    ours_port, peer_port = free_port(), free_port()
    ours_argv = [sys.executable, "-m", "loraguard_cpp.cli", "serve", "--guard", args.chat_guard, "--port",
                 str(ours_port), "--threads", str(args.threads), "--chat-ctx", "2048",
                 "--max-tokens", str(args.max_tokens)]
    peer_argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(base), "--host", "127.0.0.1", "--port",
                 str(peer_port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                 "--n_ctx", "2048"]
    runs: dict[str, list[tuple[int, float]]] = {"loraguard": [], "llama_cpp.server": []}
    finish: dict[str, list[str]] = {"loraguard": [], "llama_cpp.server": []}
    with running("loraguard-chat", ours_argv, ours_port, "/health", log_dir) as ours, \
            running("llama_cpp.server", peer_argv, peer_port, "/v1/models", log_dir) as peer:
        ports = {"loraguard": ours.port, "llama_cpp.server": peer.port}

        def chat(name: str, prompt: str, max_tokens: int) -> tuple[int, bytes]:
            # A connection per request: a server closes a keep-alive connection left idle for seconds while the
            # other contender answered.
            client = Client(ports[name])
            try:
                return client.call("POST", "/v1/chat/completions", _chat_body(args.chat_guard, prompt, max_tokens))
            finally:
                client.close()

        for name in ports:  # warm-up
            chat(name, CHAT_PROMPTS[0], 8)
        for round_ in range(args.chat_rounds):
            for prompt in CHAT_PROMPTS:
                for name in list(ports) if round_ % 2 == 0 else list(reversed(ports)):
                    start = time.perf_counter()
                    status, raw = chat(name, prompt, args.max_tokens)
                    wall = time.perf_counter() - start
                    if status != 200:
                        raise RuntimeError(f"{name} answered {status}: {raw[:500]!r}")
                    body = json.loads(raw)
                    runs[name].append((int(body["usage"]["completion_tokens"]), wall))
                    finish[name].append(body["choices"][0]["finish_reason"])
                    print(f"chat round {round_} {name}: {runs[name][-1][0]} tokens in {wall:.2f} s "
                          f"({body['choices'][0]['finish_reason']})", file=sys.stderr)
    out: dict[str, Any] = {"chat_guard": args.chat_guard, "base": str(base), "max_tokens": args.max_tokens,
                           "prompts": len(CHAT_PROMPTS), "rounds": args.chat_rounds, "contenders": {}}
    for name, pairs in runs.items():
        tokens = sum(t for t, _ in pairs)
        wall = sum(w for _, w in pairs)
        out["contenders"][name] = {"tokens": tokens, "wall_s": wall, "tokens_s": tokens / wall, "requests": len(pairs),
                                   "finish_reasons": {r: finish[name].count(r) for r in sorted(set(finish[name]))}}
    out["overhead_ratio"] = out["contenders"]["llama_cpp.server"]["tokens_s"] / out["contenders"]["loraguard"][
        "tokens_s"]
    return out


def _chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0}


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def markdown(report: dict[str, Any]) -> str:
    lines = [f"serving bench {report['date']} on {report['machine']['cores']} cores, --threads "
             f"{report['settings']['threads']}, load average {report['machine']['loadavg_start']} -> "
             f"{report['machine']['loadavg_end']}", ""]
    if moderation := report.get("moderation"):
        lines += [f"moderation ({moderation['guard']}, one short text per request, medians of "
                  f"{moderation['rounds']} rounds of {moderation['requests_per_round']} requests):", "",
                  "| contender | concurrency | requests/s | p50 ms | p99 ms | vs direct |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, per_c in moderation["contenders"].items():
            for c, s in per_c.items():
                vs = f"{s['speedup_vs_direct']:.2f}x" if "speedup_vs_direct" in s else "1"
                lines.append(f"| {name} | {c} | {s['requests_s']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {vs} |")
        lines.append("")
    if chat := report.get("chat"):
        lines += [f"guarded chat ({chat['chat_guard']}, {chat['rounds']} x {chat['prompts']} requests, max_tokens "
                  f"{chat['max_tokens']}, greedy):", "", "| server | tokens | tokens/s | finish reasons |",
                  "| --- | --- | --- | --- |"]
        for name, s in chat["contenders"].items():
            lines.append(f"| {name} | {s['tokens']} | {s['tokens_s']:.1f} | {s['finish_reasons']} |")
        lines += ["", f"guard overhead (llama_cpp.server tokens/s over loraguard's): {chat['overhead_ratio']:.2f}x"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of every contender")
    p.add_argument("--guard", default="minilm", help="the guard the moderation case serves")
    p.add_argument("--concurrency", default="1,4,16", help="client threads, comma-separated")
    p.add_argument("--guard-contexts", default="1,2", help="server contenders by --guard-contexts, comma-separated")
    p.add_argument("--requests", type=int, default=160, help="moderation requests per contender, level and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chat-guard", default="smollm2", help="the chat model's guard the chat case serves")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--chat-rounds", type=int, default=2)
    p.add_argument("--skip", choices=["moderation", "chat"], action="append", default=[])
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = args.out / f"{date}-{socket.gethostname()}-serve"
    log_dir = Path(f"{stem}-logs")
    log_dir.mkdir(exist_ok=True)
    began = time.perf_counter()
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "date": date, "command": " ".join(["bench/run", "serve", *(argv or sys.argv[1:])]),
        "machine": {"host": socket.gethostname(), "cores": os.cpu_count(), "loadavg_start": _loadavg()},
        "settings": {"threads": args.threads},
    }
    if "moderation" not in args.skip:
        report["moderation"] = bench_moderation(args, log_dir)
    if "chat" not in args.skip:
        report["chat"] = bench_chat(args, log_dir)
    report["machine"]["loadavg_end"] = _loadavg()
    report["wall_s"] = time.perf_counter() - began
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = markdown(report)
    Path(f"{stem}.md").write_text(summary)
    print(summary)
    return 0
