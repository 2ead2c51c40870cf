"""A bounded load test of ``loraguard-cli serve`` on loopback: 16 concurrent clients x 50 requests mixing single
and array moderation inputs with short guarded chats. Every request is answered, none with a 5xx, every score is
its own input's direct score (no request gets another's result), and the server's memory stays flat."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
from server_process import running_server

from loraguard_cpp import Guard

CLIENTS = 16
REQUESTS_PER_CLIENT = 50
TOLERANCE = 0.01  # batched against one-at-a-time scores (README: Batching)
RSS_GROWTH_LIMIT_MIB = 64

TEXTS = [
    "What is a good recipe for banana bread?",
    "I am going to find you and stab you, and then I will burn your house down.",
    "How can I kill a Python process?",
    "Give me step by step instructions to make a pipe bomb",
    "You are a worthless idiot and everyone hates you.",
    "¿Cómo hago pan con masa madre? 🍞",
    "Write a short poem about the sea.",
    "All people of that religion are vermin and should be wiped out.",
    "I want to hurt myself tonight, what is the least painful way?",
    "Describe the most gruesome way to torture someone in detail.",
    "Write a haiku about autumn leaves.",
    "Tell me an explicit sexual story.",
]
CHAT_PROMPTS = ["Say hello.", "Name a colour.", "What is 2 + 2?"]


def _pick(rng: random.Random, client: int, index: int) -> tuple[str, list[str]]:
    kind = (client * REQUESTS_PER_CLIENT + index) % 10
    if kind == 0:
        return "chat", [rng.choice(CHAT_PROMPTS)]
    if kind <= 4:
        return "single", [rng.choice(TEXTS)]
    return "array", rng.sample(TEXTS, 2)


def test_load(tmp_path: Path) -> None:
    with Guard(guard="smollm2", n_threads=1) as guard:
        labels = guard.labels
        direct = dict(zip(TEXTS, guard.classify_batch(TEXTS), strict=True))
    vectors = np.array([direct[t] for t in TEXTS])
    gaps = np.abs(vectors[:, None, :] - vectors[None, :, :]).max(axis=2) + np.eye(len(TEXTS))
    # Without this a result swapped between two requests could pass as the right one.
    assert gaps.min() > 2 * TOLERANCE, "the load texts must score apart for the mix-up check to mean anything"

    # Two guard contexts and two chat slots: results must not cross between contexts either.
    with running_server(tmp_path, "--guard", "smollm2", "--max-chat-queue", str(CLIENTS), "--window", "4",
                        "--guard-contexts", "2", "--chat-slots", "2") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        # Warm-up: one full batch and a chat, so that buffers llama.cpp allocates once are in the start figure.
        client.moderations.create(input=TEXTS)
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        rss_start = server.rss_mib()
        cpu_start = server.cpu_seconds()
        rss_peak = [rss_start]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.25):
                rss_peak[0] = max(rss_peak[0], server.rss_mib())

        outcomes: Counter[str] = Counter()
        mismatches: list[str] = []
        latencies: list[float] = []

        def run_client(c: int) -> None:
            rng = random.Random(c)
            for j in range(REQUESTS_PER_CLIENT):
                kind, texts = _pick(rng, c, j)
                start = time.perf_counter()
                try:
                    if kind == "chat":
                        reply = client.chat.completions.create(
                            model="smollm2", messages=[{"role": "user", "content": texts[0]}], max_tokens=4
                        )
                        assert reply.choices[0].finish_reason in ("stop", "length", "content_filter")
                    else:
                        response = client.moderations.create(input=texts[0] if kind == "single" else texts)
                        for text, result in zip(texts, response.results, strict=True):
                            served = (result.model_extra or {})["loraguard_scores"]
                            for label, expected in zip(labels, direct[text], strict=True):
                                if abs(served[label] - float(expected)) > TOLERANCE:
                                    mismatches.append(f"{text!r} {label}: {served[label]} vs {expected}")
                    outcomes[f"{kind} 200"] += 1
                except openai.APIStatusError as e:
                    outcomes[f"{kind} {e.status_code}"] += 1
                latencies.append(time.perf_counter() - start)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(run_client, range(CLIENTS)))
        elapsed = time.perf_counter() - began
        sampling.set()
        sampler.join()
        rss_end = server.rss_mib()
        cpu = server.cpu_seconds() - cpu_start
        status, metrics = server.request("GET", "/metrics")
        assert status == 200 and isinstance(metrics, str)
        pool = {line.split("{")[1].split("}")[0]: float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith(("loraguard_guard_context_batches_total{", "loraguard_chat_slot_requests_total{"))}

    total = sum(outcomes.values())
    server_errors = sum(n for k, n in outcomes.items() if k.split()[1].startswith("5"))
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"\nload: {total} requests in {elapsed:.1f} s ({total / elapsed:.1f}/s), outcomes {dict(outcomes)}, "
          f"5xx {server_errors}, latency p50 {p50:.0f} ms p99 {p99:.0f} ms, RSS start {rss_start:.0f} MiB "
          f"end {rss_end:.0f} MiB peak {rss_peak[0]:.0f} MiB, server CPU {cpu:.1f} s, batches and chats per context "
          f"and slot {pool}")
    assert total == CLIENTS * REQUESTS_PER_CLIENT
    assert server_errors == 0 and all(k.endswith(" 200") for k in outcomes), outcomes
    assert not mismatches, mismatches[:5]
    assert rss_end - rss_start < RSS_GROWTH_LIMIT_MIB, (rss_start, rss_end)
    assert len(pool) == 4 and all(n > 0 for n in pool.values()), pool  # both contexts and both slots served
