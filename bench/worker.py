"""One contender in a process of its own, driven by bench/run.py over a pipe.

Each contender loads once, then times the calls the driver asks for, so that memory (peak RSS) belongs to one
contender only and the driver can interleave contenders call by call on the same inputs. Timings are taken
here, around the call alone; the pipe's cost is not in them.

Protocol: argv[1] is a JSON spec; the worker answers one JSON line on the protocol stream when loaded
({"load_s", ...}), then one line per command read from stdin: {"op": "run", "texts": [...], "batched": bool}
-> {"s": seconds}; {"op": "stats"} -> peak RSS and contender facts; {"op": "quit"}. Everything native code
prints goes to stderr, so it cannot corrupt the protocol on stdout.

Two one-off modes for fresh processes: a spec with "oneshot": TEXT loads, classifies TEXT and exits (start-up
time), one with "added": TEXT prints the memory a guard adds to a running chat model (see added()).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Llama Guard 3's prompt with its published hazard taxonomy: the generative guard reads all of it for every
# text, which is part of what it costs.
LLAMA_GUARD_PROMPT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy "
    "with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Violent Crimes.\nS2: Non-Violent "
    "Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\nS6: Specialized Advice.\nS7: Privacy.\n"
    "S8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\n"
    "S13: Elections.\nS14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
    "User: {prompt}\n\n<END CONVERSATION>\n\nProvide your safety assessment for ONLY THE LAST User message in "
    "the above conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second line must "
    "include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    "\n\n"
)
# "unsafe", "\n", "S1" and an end token: the longest verdict the generative guard writes for one category
VERDICT_TOKENS = 4
# texts per forward pass in the PyTorch contender's batched mode (score_texts' default)
TORCH_BATCH = 16


def peak_rss_mib() -> float:
    """This process's peak RSS. On Linux VmHWM, which belongs to this process image alone: ru_maxrss survives
    exec and so starts at the peak of the driver that spawned us."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    # kilobytes on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Contender(Protocol):
    def run(self, texts: Sequence[str], batched: bool) -> None: ...

    def facts(self) -> dict[str, Any]: ...


def default_threads() -> int:
    """The thread count loraguard picks when given none (lg_default_n_threads: CPU affinity and cgroup quota)."""
    from loraguard_cpp import _native

    return _native.Model.default_n_threads()


class Loraguard:
    """Contender 1: the guard path of loraguard's Python API."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from loraguard_cpp import Guard

        self.threads = {"n_threads": spec["threads"] or default_threads(), "loadavg_at_load": os.getloadavg()[0]}
        self.guard = Guard(spec["base"], spec["guard"], n_threads=spec["threads"], n_ctx=spec["n_ctx"])

    def run(self, texts: Sequence[str], batched: bool) -> None:
        if batched:
            self.guard.logits(texts)
        else:
            for text in texts:
                self.guard.logits([text])

    def facts(self) -> dict[str, Any]:
        return self.threads


class TorchPeft:
    """Contender 3: the same guard checkpoint on its HF base, PyTorch + PEFT on the CPU."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        from loraguard_train.model import load_checkpoint, load_tokenizer

        torch.set_num_threads(spec["threads"])
        model, config = load_checkpoint(spec["ckpt"], spec["hf_dir"])
        self.model = model.to(getattr(torch, spec["dtype"]))
        # the fp32 weights a bf16 model was cast from stay in malloc's free lists unless handed back; in the
        # meantime they crowd out the page cache that holds the other contenders' mapped models
        gc.collect()
        if sys.platform.startswith("linux"):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.tokenizer = load_tokenizer(spec["hf_dir"])
        self.template = config["template"]["prompt"]
        self.parse_special = bool(config["template"]["parse_special"])

    def _forward(self, texts: Sequence[str]) -> None:
        import torch

        from loraguard_train.inputs import collate, pad_id, tokenize

        with torch.inference_mode():
            ids = tokenize(self.tokenizer, texts, None, self.template, self.template, self.parse_special, None)
            self.model(*collate(ids, pad_id(self.tokenizer)))

    def run(self, texts: Sequence[str], batched: bool) -> None:
        if batched:
            for start in range(0, len(texts), TORCH_BATCH):
                self._forward(texts[start : start + TORCH_BATCH])
        else:
            for text in texts:
                self._forward([text])

    def facts(self) -> dict[str, Any]:
        return {}


class LlamaCppPythonGuard:
    """Contender 4: stock llama.cpp with the guard as a plain LoRA, embeddings pooled as the guard pools them
    (the last token for decoders), numpy head."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from bench.lowlevel import LlamaCpp
        from loraguard_convert import guard_head

        self.llm = LlamaCpp(Path(spec["base"]), n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                            pooling=spec["pooling"], lora=spec["guard"])
        self.weight, self.bias = guard_head(spec["guard"])
        self.template = spec["template"]
        self.parse_special = spec["parse_special"]

    def run(self, texts: Sequence[str], batched: bool) -> None:
        for n_seqs in self.llm.decode_texts(texts, self.template, batched, self.parse_special):
            for s in range(n_seqs):
                self.weight @ self.llm.pooled(s) + self.bias

    def facts(self) -> dict[str, Any]:
        return {}


class Limit:
    """Contender 6, the floor: the base model on stock llama.cpp, no adapter; a decoder computes the logits of
    each text's last token only, an encoder its pooled embedding."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from bench.lowlevel import LlamaCpp

        pooling = None if spec["pooling"] == "last" else spec["pooling"]
        self.llm = LlamaCpp(Path(spec["base"]), n_ctx=spec["n_ctx"], n_threads=spec["threads"], pooling=pooling)
        self.template = spec["template"]
        self.parse_special = spec["parse_special"]

    def run(self, texts: Sequence[str], batched: bool) -> None:
        for _ in self.llm.decode_texts(texts, self.template, batched, self.parse_special):
            pass

    def facts(self) -> dict[str, Any]:
        return {}


class GenerativeGuard:
    """Contender 5: a separate generative guard model (Llama Guard 3 1B's shape and prompt): prefill, then a
    greedy verdict of VERDICT_TOKENS tokens."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from bench.lowlevel import LlamaCpp

        self.llm = LlamaCpp(Path(spec["model"]), n_ctx=spec["n_ctx"], n_threads=spec["threads"])
        self.prompt_tokens: list[int] = []

    def run(self, texts: Sequence[str], batched: bool) -> None:
        # a verdict is generated token by token, so texts go one at a time whatever the caller asks for
        for text in texts:
            # the prompt spells out its special tokens, BOS included
            prompt = LLAMA_GUARD_PROMPT.replace("{prompt}", text)
            tokens = self.llm.tokenize(prompt, add_special=False, parse_special=True)
            self.prompt_tokens.append(len(tokens))
            self.llm.decode([tokens])
            for step in range(VERDICT_TOKENS):
                token = int(np.argmax(self.llm.logits(-1)))
                self.llm.decode([[token]], start_pos=len(tokens) + step, clear=False)

    def facts(self) -> dict[str, Any]:
        return {"prompt_tokens": sorted(set(self.prompt_tokens))}


CONTENDERS: dict[str, type[Contender]] = {
    "loraguard": Loraguard,
    "torch": TorchPeft,
    "llama-cpp-python": LlamaCppPythonGuard,
    "limit": Limit,
    "generative": GenerativeGuard,
}


def oneshot(spec: dict[str, Any]) -> None:
    """Load and classify one text, then exit: the driver times the whole process."""
    CONTENDERS[spec["kind"]](spec).run([spec["oneshot"]], batched=False)


def added(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of an app running the chat model on spec["added"] (the longest text), then what running the
    guard on it adds: loraguard's adapter and context on the same weights, or a separate generative guard."""
    from loraguard_cpp import _native

    model = _native.Model(spec["base"])
    chat = _native.ChatPath(model, n_ctx=spec["n_ctx"], n_threads=spec["threads"])
    text = spec["added"]
    chat.decode(model.tokenize(text))
    before = peak_rss_mib()
    if spec["kind"] == "loraguard":
        guard = _native.GuardPath(model, spec["guard"], n_ctx=spec["n_ctx"], n_threads=spec["threads"])
        guard.classify([text])
    else:
        CONTENDERS[spec["kind"]](spec).run([text], batched=False)
    after = peak_rss_mib()
    return {"chat_peak_rss_mib": before, "with_guard_peak_rss_mib": after, "added_mib": after - before}


def serve(spec: dict[str, Any]) -> None:
    # the protocol keeps the real stdout; fd 1 then points at stderr for whatever native code prints
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    start = time.perf_counter()
    contender = CONTENDERS[spec["kind"]](spec)
    proto.write(json.dumps({"load_s": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            start = time.perf_counter()
            contender.run(cmd["texts"], cmd["batched"])
            reply: dict[str, Any] = {"s": time.perf_counter() - start}
        elif cmd["op"] == "stats":
            reply = {"peak_rss_mib": peak_rss_mib(), **contender.facts()}
        else:
            break
        proto.write(json.dumps(reply) + "\n")


def main(spec: dict[str, Any]) -> None:
    if "oneshot" in spec:
        oneshot(spec)
    elif "added" in spec:
        print(json.dumps(added(spec)))
    else:
        serve(spec)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
