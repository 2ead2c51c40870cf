"""`bench/run [--smoke] [--out DIR]`: the guard against its peers, measured in one run.

Writes DIR/<date>-<host>.json (fields in bench/README.md), a markdown report beside it and PNG plots. Every
speed is compared with peers measured in the same run, interleaved call by call on the same inputs, each
contender in a process of its own (bench/worker.py) so that its memory is its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from bench import models as M
from bench.driver import CHILD_CWD, CliContender, ContenderFailed, Worker, child_env, run_process
from bench.lowlevel import N_UBATCH, cpu_has_amx
from bench.texts import exact_length_text

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results"
# one context size for every llama.cpp contender: it holds a 1024-token text with any template
N_CTX = 2048
DEFAULT_N_CTX = 512  # loraguard's default guard context
LENGTHS = (16, 64, 256, 1024)
# timed calls per length: as many as the case's time budget buys, at least MIN_REPS (MIN_REPS_SLOW where one
# round of calls takes longer than SLOW_ROUND_S: there a call is seconds long and its own average), at most MAX_REPS
MIN_REPS = 5
MIN_REPS_SLOW = 3
SLOW_ROUND_S = 20.0
MAX_REPS = 40
# below this estimated round time each length starts with an untimed warm-up call per contender; above it a call
# is long enough that first-call costs (page-ins, kernel selection) vanish in it
WARMUP_ROUND_S = 15.0
# beyond this length loraguard-cli costs the Python contender plus its fixed start-up, which is measured anyway
CLI_MAX_TOKENS = 64
THROUGHPUT_REPS = 2
LONG_MEASUREMENT_S = 30.0
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


class Timed(Protocol):
    name: str

    def time(self, texts: Sequence[str], batched: bool) -> float: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CaseFiles:
    base: Path
    guard: Path
    ckpt: Path  # the guard's checkpoint directory (PyTorch contenders)
    hf_dir: Path  # the base as a Hugging Face directory (PyTorch contenders)
    generative: Path | None
    description: str


@dataclass(frozen=True)
class CachedGuard:
    """A random guard on a random base of realistic shape, built into the model cache."""

    shape: M.Shape
    qtype: str
    guard: M.GuardSpec

    @property
    def name(self) -> str:
        return f"{self.shape.key} {self.qtype} {self.guard.key}"

    def build_steps(self) -> list[tuple[str, str, str]]:
        return [(self.shape.key, "base", self.qtype), (self.shape.key, "guard", self.guard.key)]

    def files(self, cache: M.ModelCache, generative: M.Shape | None) -> CaseFiles:
        ckpt, guard = cache.guard(self.shape, self.guard)
        where = "q/v" if self.guard.targets == "qv" else "all linear layers"
        return CaseFiles(
            base=cache.base_gguf(self.shape, self.qtype), guard=guard, ckpt=ckpt, hf_dir=cache.hf_dir(self.shape),
            generative=None if generative is None else cache.base_gguf(generative, self.qtype),
            description=f"{self.shape.title} shape (random weights), {self.qtype}; random guard, LoRA rank "
                        f"{self.guard.rank} on {where}")


@dataclass(frozen=True)
class TrainedRun:
    """A guard trained by loraguard-train: its run directory's train.json names base, checkpoint and guard. With
    `base_type`, the guard runs on its base retyped by llama.cpp's quantizer, as a user would run another type
    of the same model (the PyTorch contenders run the trained weights whatever the type)."""

    run_dir: Path
    base_type: str | None = None

    @property
    def name(self) -> str:
        return f"{self.run_dir.name} (trained){'' if self.base_type is None else ' on ' + self.base_type}"

    def build_steps(self) -> list[tuple[str, str, str]]:
        return []

    def files(self, cache: M.ModelCache, generative: M.Shape | None) -> CaseFiles:
        run = json.loads((self.run_dir / "train.json").read_text(encoding="utf-8"))
        base = Path(run["base_gguf"])
        if self.base_type is not None:
            base = cache.retyped(base, self.base_type)
        return CaseFiles(base=base, guard=Path(run["guard"]), ckpt=Path(run["checkpoint"]),
                         hf_dir=Path(run["base"]), generative=None,
                         description=f"trained guard {self.run_dir.name} on {base.name} (trained on "
                                     f"{Path(run['base']).name})")


@dataclass(frozen=True)
class Case:
    """One base and guard, the contenders that run on it and how long to spend on it."""

    model: CachedGuard | TrainedRun
    contenders: tuple[str, ...]
    lengths: tuple[int, ...]
    seconds_per_length: float  # the time budget that sizes the timed rounds of one length
    throughput: Mapping[int, int] = field(default_factory=dict)  # length -> texts, batched vs one by one
    n_ctx: int = N_CTX
    primary: bool = False  # start-up, added memory and the busy machine are measured on the primary case only

    @property
    def name(self) -> str:
        return self.model.name


@dataclass(frozen=True)
class Plan:
    cases: tuple[Case, ...]
    generative: M.Shape
    busy_reps: int
    startup_reps: int
    deadline_s: float  # cases after the primary one are skipped once the run is this old


ALL = ("loraguard", "loraguard-cli", "torch-fp32", "torch-bf16", "llama-cpp-python", "generative", "limit")
STOCK = ("loraguard", "llama-cpp-python", "limit")


def find_run(kind: str) -> Path | None:
    """The newest trained guard under runs/<kind>-* (loraguard-train's recipes write there), if any."""
    runs = sorted(REPO.glob(f"runs/{kind}-*/train.json"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def full_plan(minilm_run: Path | None, smollm2_run: Path | None) -> Plan:
    tl, qw = M.TINYLLAMA, M.QWEN
    cases = [
        Case(CachedGuard(tl, "Q4_K_M", M.GUARD_QV8), ALL, LENGTHS, 25.0, {16: 64, 64: 32, 256: 8, 1024: 2},
             primary=True),
        Case(CachedGuard(tl, "Q4_K_M", M.GUARD_ALL16), STOCK, (16, 64, 256), 6.0),
        Case(CachedGuard(tl, "Q8_0", M.GUARD_QV8), ("loraguard", "limit"), (16, 64, 256), 6.0),
        Case(CachedGuard(qw, "Q4_K_M", M.GUARD_QV8), (*STOCK, "torch-fp32"), (16, 64, 256), 6.0, {16: 64}),
        Case(CachedGuard(qw, "Q4_K_M", M.GUARD_ALL16), ("loraguard", "limit"), (16, 64, 256), 5.0),
        Case(CachedGuard(qw, "Q8_0", M.GUARD_QV8), ("loraguard", "limit"), (16, 64, 256), 5.0),
    ]
    if smollm2_run is not None:
        # a real chat model guarding itself: the base type decides its speed more than anything else; the
        # guard was trained on the package's Q4_1 weights (dequantized), F16 holds them to F16 rounding
        for base_type in (None, "F16", "Q8_0", "Q4_0"):
            cases.append(Case(TrainedRun(smollm2_run, base_type), (*STOCK, "torch-fp32"), (16, 64, 256), 4.0))
    if minilm_run is not None:
        # BERT has 512 positions
        cases.append(Case(TrainedRun(minilm_run), ("loraguard", "loraguard-cli", "torch-fp32", *STOCK[1:]),
                          (16, 64, 256), 5.0, {16: 64}, n_ctx=512))
    return Plan(tuple(cases), M.LLAMA_GUARD, busy_reps=6, startup_reps=3, deadline_s=28 * 60)


def smoke_plan() -> Plan:
    # every contender but bf16 (fp32's code with another dtype); the base doubles as the generative guard,
    # which saves building a second model
    contenders = tuple(c for c in ALL if c != "torch-bf16")
    case = Case(CachedGuard(M.SMOKE_BASE, "Q8_0", M.GUARD_QV8), contenders, (16, 64), 0.5, {16: 8, 64: 8},
                primary=True)
    return Plan((case,), M.SMOKE_BASE, busy_reps=3, startup_reps=1, deadline_s=float("inf"))


# ---------------------------------------------------------------------------------------------------------------
# facts about the machine and the files


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [v for k, _, v in (line.partition(":") for line in cpuinfo.read_text().splitlines())
                 if k.strip() == "model name"]
        cpu = names[0].strip() if names else cpu
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "amx": cpu_has_amx(),
        "ram_gib": round(ram, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": version("llama-cpp-python"),
        "torch": version("torch"),
        "numpy": np.__version__,
        "loadavg_start": os.getloadavg(),
    }


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot, from /proc/stat (zeros where it is absent)."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return 0.0, 0.0
    fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu_seconds() -> float:
    """CPU seconds of this process and every child it has waited for (all of them, by the end of the run)."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def sgemm_peak(threads: Sequence[int], log: Path) -> dict[str, dict[str, float]]:
    peaks: dict[str, dict[str, float]] = {}
    for n in threads:
        out = subprocess.run([sys.executable, "-m", "bench.peak", str(n)], capture_output=True, text=True,
                             env=child_env(), cwd=CHILD_CWD, check=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(out.stderr)
        peaks[str(n)] = json.loads(out.stdout)
    return peaks


def compute_params(source: Path) -> int:
    """Weights one token is multiplied with in the layers: 2-D matrices but the token embeddings and the LM head,
    which the guard never runs (the limit runs the head for one token per text, a rounding error). `source` is
    an HF directory or a GGUF file."""
    if source.suffix == ".gguf":
        from gguf import GGUFReader

        return sum(int(np.prod(t.shape)) for t in GGUFReader(source).tensors
                   if t.name.startswith("blk.") and len(t.shape) == 2)
    from safetensors import safe_open

    total = 0
    for path in sorted(source.glob("*.safetensors")):
        with safe_open(str(path), "np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shape = f.get_slice(name).get_shape()
                if len(shape) == 2 and not any(k in name for k in ("embed_tokens", "embeddings.", "lm_head")):
                    total += int(np.prod(shape))
    return total


def mem_available_mib() -> float | None:
    """Memory the machine still has for page cache and processes; with every contender loaded, a low value
    means the models' mapped pages may be evicted and read again during timed calls."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**10
    return None


def mib(path: Path) -> float:
    return path.stat().st_size / 2**20


# ---------------------------------------------------------------------------------------------------------------
# measuring


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    a = np.asarray(samples, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": len(a)}


@dataclass(frozen=True)
class GuardFacts:
    template: str
    parse_special: bool
    pooling: str
    guard_params: int
    base_params: int


def contender_spec(name: str, files: CaseFiles, threads: int, n_ctx: int, facts: GuardFacts) -> dict[str, Any]:
    common = {"threads": threads, "n_ctx": n_ctx}
    if name == "loraguard":
        return {"kind": "loraguard", "base": str(files.base), "guard": str(files.guard), **common}
    if name.startswith("torch-"):
        dtype = {"torch-fp32": "float32", "torch-bf16": "bfloat16"}[name]
        return {"kind": "torch", "hf_dir": str(files.hf_dir), "ckpt": str(files.ckpt), "dtype": dtype, **common}
    if name in ("llama-cpp-python", "limit"):
        return {"kind": name, "base": str(files.base), "guard": str(files.guard), "template": facts.template,
                "parse_special": facts.parse_special, "pooling": facts.pooling, **common}
    if name == "generative":
        return {"kind": "generative", "model": str(files.generative), "base": str(files.base), **common}
    raise ValueError(name)


class Bench:
    def __init__(self, plan: Plan, cache: M.ModelCache, threads: int, log_dir: Path) -> None:
        self.plan = plan
        self.cache = cache
        self.threads = threads
        self.log_dir = log_dir
        self.bar = tqdm(total=0, unit="call", desc="bench", dynamic_ncols=True)

    def _generative(self, case: Case) -> M.Shape | None:
        return self.plan.generative if "generative" in case.contenders else None

    def prepare(self) -> None:
        """Build every model, quantization and guard the plan needs (cached; minutes on a first run), in a
        process of its own so that the GB it takes are returned before anything is measured."""
        steps: list[tuple[str, str, str]] = []
        for case in self.plan.cases:
            steps += case.model.build_steps()
            if isinstance(case.model, CachedGuard) and "generative" in case.contenders:
                steps.append((self.plan.generative.key, "base", case.model.qtype))
        subprocess.run([sys.executable, "-m", "bench.models", str(self.cache.root), json.dumps(steps)],
                       env=child_env(), cwd=CHILD_CWD, check=True)

    @staticmethod
    def inputs(files: CaseFiles, case: Case) -> tuple[dict[int, list[str]], GuardFacts]:
        """Texts of each length (as the guard tokenizes them, template included) and the guard's facts."""
        from loraguard_cpp import Guard

        with Guard(files.base, files.guard, n_ctx=case.n_ctx, n_threads=1) as g:
            texts = {n: [exact_length_text(lambda t: len(g.tokenize(t)), n, seed)
                         for seed in range(max(8, case.throughput.get(n, 0)))] for n in case.lengths}
            facts = GuardFacts(template=g.meta("template.prompt") or "{prompt}",
                               parse_special=g.meta("template.parse_special") == "true",
                               pooling=g.meta("pooling") or "last",
                               guard_params=g.n_params, base_params=g.model.n_params)
        return texts, facts

    def start(self, case: Case, files: CaseFiles, facts: GuardFacts) -> tuple[dict[str, Timed], dict[str, Any]]:
        running: dict[str, Timed] = {}
        results: dict[str, Any] = {}
        for name in case.contenders:
            self.bar.set_postfix_str(f"{case.name}: loading {name}")
            if name == "loraguard-cli":
                running[name] = CliContender(files.base, files.guard, case.n_ctx, self.threads, self.log_dir)
                results[name] = {}
                continue
            log = self.log_dir / f"{case.name.replace(' ', '-')}-{name}.log"
            try:
                worker = Worker(name, contender_spec(name, files, self.threads, case.n_ctx, facts), log)
            except ContenderFailed as e:
                results[name] = {"error": str(e)}
                continue
            running[name] = worker
            results[name] = {"load_s": worker.load_s, "ready_s": worker.ready_s}
        return running, results

    def _timed(self, c: Timed, texts: Sequence[str], batched: bool, running: dict[str, Timed],
               results: dict[str, Any]) -> float | None:
        """One call; a contender that fails leaves the rotation with its error recorded."""
        try:
            return c.time(texts, batched)
        except ContenderFailed as e:
            results[c.name] = {**results.get(c.name, {}), "error": str(e)}
            running.pop(c.name, None)
            c.close()
            return None

    def rounds(self, contenders: dict[str, Timed], texts: Sequence[str], reps: int,
               results: dict[str, Any]) -> dict[str, list[float]]:
        """reps rounds of one call per contender, text r of the list in round r, the order rotating each
        round so that drift of the machine cannot favour one contender."""
        self.bar.total += reps * len(contenders)
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(reps):
            order = list(contenders.values())
            for c in order[r % len(order):] + order[: r % len(order)]:
                t = self._timed(c, [texts[r % len(texts)]], False, contenders, results)
                if t is not None:
                    samples[c.name].append(t)
                self.bar.update()
        return {name: s for name, s in samples.items() if name in contenders and s}

    def latency(self, case: Case, texts: dict[int, list[str]], running: dict[str, Timed],
                results: dict[str, Any]) -> None:
        estimate, previous = 0.0, 0
        for n in case.lengths:
            self.bar.set_postfix_str(f"{case.name}: {n} tokens")
            here = {name: c for name, c in running.items() if name != "loraguard-cli" or n <= CLI_MAX_TOKENS}
            # a round's time grows at least linearly with the length
            estimate *= n / previous if previous else 1.0
            if estimate < WARMUP_ROUND_S:
                estimate = sum(self._timed(c, texts[n][-1:], False, running, results) or 0.0
                               for c in list(here.values()))
                here = {name: c for name, c in here.items() if name in running}
            floor = MIN_REPS_SLOW if estimate > SLOW_ROUND_S else MIN_REPS
            reps = int(np.clip(case.seconds_per_length / max(estimate, 1e-6), floor, MAX_REPS))
            samples = self.rounds(here, texts[n], reps, results)
            for name in [name for name in running if "error" in results[name]]:
                running.pop(name)
            for name, s in samples.items():
                results[name].setdefault("latency", {})[str(n)] = summary(s)
            estimate = sum(float(np.median(s)) for s in samples.values())
            previous = n

    def throughput(self, case: Case, texts: dict[int, list[str]], running: dict[str, Timed],
                   results: dict[str, Any]) -> None:
        """loraguard's texts/s with all texts in one call (packed decodes) against one call per text."""
        for n, count in case.throughput.items():
            guard = running.get("loraguard")
            if guard is None:
                return
            self.bar.set_postfix_str(f"{case.name}: {count} texts of {n} tokens")
            batch = texts[n][:count]
            # a measurement of many seconds is its own average: one round of each mode is enough there
            single_s = count * results["loraguard"].get("latency", {}).get(str(n), {}).get("p50_ms", 0.0) / 1e3
            reps = 1 if single_s > LONG_MEASUREMENT_S else THROUGHPUT_REPS
            self.bar.total += reps * 2
            timings: dict[bool, list[float]] = {True: [], False: []}
            for r in range(reps):
                for batched in (r % 2 == 0, r % 2 == 1):
                    t = self._timed(guard, batch, batched, running, results)
                    if t is not None:
                        timings[batched].append(t)
                    self.bar.update()
            if timings[True] and timings[False]:
                results["loraguard"].setdefault("throughput", {})[str(n)] = {
                    "n_texts": count,
                    "batched_texts_s": count / float(np.median(timings[True])),
                    "single_texts_s": count / float(np.median(timings[False])),
                }

    def run_case(self, case: Case) -> dict[str, Any]:
        files = case.model.files(self.cache, self._generative(case))
        texts, facts = self.inputs(files, case)
        running, results = self.start(case, files, facts)
        mem_available = mem_available_mib()
        try:
            self.latency(case, texts, running, results)
            self.throughput(case, texts, running, results)
            for name, c in running.items():
                results[name].update(c.stats())
        finally:
            for c in running.values():
                c.close()
        record: dict[str, Any] = {
            "name": case.name,
            "primary": case.primary,
            "description": files.description,
            "n_ctx": case.n_ctx,
            "mem_available_mib": mem_available,
            "model": {"file": files.base.name, "file_mib": mib(files.base), "params": facts.base_params,
                      "compute_params": compute_params(files.hf_dir)},
            "guard": {"file_mib": mib(files.guard), "params": facts.guard_params, "pooling": facts.pooling,
                      "params_vs_base": facts.guard_params / facts.base_params},
            "contenders": results,
        }
        if files.generative is not None:
            record["generative_model"] = {"shape": self.plan.generative.title, "file": files.generative.name,
                                          "file_mib": mib(files.generative)}
        if case.primary:
            record["startup"] = self.startup(case, files, facts, texts[min(case.lengths)][0])
            record["added_memory"] = self.added_memory(case, files, facts, texts)
            busy_length = 64 if 64 in texts else min(texts)
            record["busy"] = {"tokens": busy_length, "contenders": self.busy(case, files, facts, texts[busy_length])}
        return record

    def startup(self, case: Case, files: CaseFiles, facts: GuardFacts, text: str) -> dict[str, Any]:
        """Process start to first result: loraguard-cli against a fresh PyTorch process (same text)."""
        self.bar.set_postfix_str("start-up")
        cli = CliContender(files.base, files.guard, case.n_ctx, self.threads, self.log_dir)
        spec = {**contender_spec("torch-fp32", files, self.threads, case.n_ctx, facts), "oneshot": text}
        torch_argv = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
        cli_s: list[float] = []
        torch_s: list[float] = []
        self.bar.total += 2 * self.plan.startup_reps
        for _ in range(self.plan.startup_reps):
            cli_s.append(cli.time([text], False))
            self.bar.update()
            elapsed, code = run_process(torch_argv, self.log_dir / "torch-oneshot.log")
            if code == 0:
                torch_s.append(elapsed)
            self.bar.update()
        return {"loraguard-cli_s": float(np.median(cli_s)),
                "torch-fp32_s": float(np.median(torch_s)) if torch_s else None, "reps": self.plan.startup_reps}

    def added_memory(self, case: Case, files: CaseFiles, facts: GuardFacts,
                     texts: Mapping[int, Sequence[str]]) -> list[dict[str, Any]]:
        """Peak RSS a guard adds to an app that already runs the chat model, measured in fresh processes: with
        this benchmark's context on its longest text, and with loraguard's default context on a text it holds."""
        self.bar.set_postfix_str("added memory")
        fitting = max(n for n in case.lengths if n <= DEFAULT_N_CTX // 2)
        settings = [(case.n_ctx, max(case.lengths)), (DEFAULT_N_CTX, fitting)]
        out: list[dict[str, Any]] = []
        for n_ctx, n in settings:
            entry: dict[str, Any] = {"n_ctx": n_ctx, "tokens": n}
            for name in ("loraguard", "generative"):
                spec = {**contender_spec(name, files, self.threads, n_ctx, facts), "added": texts[n][0]}
                proc = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(spec)], capture_output=True,
                                      text=True, env=child_env(), cwd=CHILD_CWD, check=False)
                entry[name] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-1500:]}
            out.append(entry)
        return out

    def busy(self, case: Case, files: CaseFiles, facts: GuardFacts, texts: Sequence[str]) -> dict[str, Any]:
        """The default thread count against one thread while another process spins on one core."""
        self.bar.set_postfix_str("busy machine")
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        workers: dict[str, Timed] = {}
        results: dict[str, Any] = {}
        try:
            # the spinner must show in the load average the default thread count is derived from
            time.sleep(5.0)
            for label, n in (("default", 0), ("1 thread", 1), (f"{self.threads} threads", self.threads)):
                spec = contender_spec("loraguard", files, n, case.n_ctx, facts)
                try:
                    workers[label] = Worker(label, spec, self.log_dir / f"busy-{n}.log")
                except ContenderFailed as e:
                    results[label] = {"error": str(e)}
                    continue
                results[label] = {}
            for c in list(workers.values()):
                self._timed(c, texts[:1], False, workers, results)
            samples = self.rounds(workers, texts, self.plan.busy_reps, results)
            for name, c in workers.items():
                results[name].update({"latency": summary(samples[name]), **c.stats()})
        finally:
            for c in workers.values():
                c.close()
            spinner.kill()
            spinner.wait()
        return results

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------------------------------
# derived numbers and targets


def p50(case: Mapping[str, Any], name: str, n: int) -> float | None:
    lat = case["contenders"].get(name, {}).get("latency", {}).get(str(n))
    return None if lat is None else float(lat["p50_ms"])


def derive(case: dict[str, Any], peak_gflops: float) -> None:
    """Ratios of loraguard to each contender (p50 time, < 1: loraguard is faster) and achieved GFLOP/s."""
    flops_per_token = 2.0 * (case["model"]["compute_params"] + case["guard"]["params"])
    lengths = sorted({int(n) for c in case["contenders"].values() for n in c.get("latency", {})})
    for name, c in case["contenders"].items():
        if name != "loraguard":
            c["ratio_loraguard"] = {str(n): lg / other for n in lengths
                                    if (lg := p50(case, "loraguard", n)) and (other := p50(case, name, n))}
        c["gflops"] = {n: flops_per_token * int(n) / (lat["p50_ms"] / 1e3) / 1e9
                       for n, lat in c.get("latency", {}).items()}
    case["gflops_peak_fraction"] = {n: g / peak_gflops for n, g in case["contenders"]["loraguard"]["gflops"].items()}


def _target(name: str, want: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "wanted": want, "measured": measured, "met": met}


def targets(case: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on the primary case; met is None where a number is missing."""
    out: list[dict[str, Any]] = []
    lengths = sorted(int(n) for n in case["contenders"].get("loraguard", {}).get("latency", {}))

    def ratios(name: str, ns: Sequence[int]) -> dict[int, float]:
        return {n: lg / other for n in ns if (lg := p50(case, "loraguard", n)) and (other := p50(case, name, n))}

    def fmt(r: Mapping[int, float], unit: str = "") -> str:
        return ", ".join(f"{n} tok: {v:.2f}{unit}" for n, v in r.items()) or "not measured"

    long = [n for n in lengths if n >= 64]
    r = ratios("limit", long)
    out.append(_target("loraguard / limit (p50 time), >= 64 tokens", "<= 1.05", fmt(r),
                       all(v <= 1.05 for v in r.values()) if r and len(r) == len(long) else None))
    speed = {n: 1 / v for n, v in ratios("torch-fp32", [16, 64]).items()}
    for n, want in ((64, 1.5), (16, 3.0)):
        out.append(_target(f"speed-up over PyTorch+PEFT fp32 at {n} tokens", f">= {want}x",
                           f"{speed[n]:.2f}x" if n in speed else "not measured",
                           speed[n] >= want if n in speed else None))
    lg_rss = case["contenders"].get("loraguard", {}).get("peak_rss_mib")
    pt_rss = case["contenders"].get("torch-fp32", {}).get("peak_rss_mib")
    out.append(_target("peak RSS, loraguard / PyTorch+PEFT fp32", "<= 1/3 (0.33)",
                       f"{lg_rss / pt_rss:.2f} ({lg_rss:.0f} / {pt_rss:.0f} MiB)" if lg_rss and pt_rss
                       else "not measured", lg_rss / pt_rss <= 1 / 3 if lg_rss and pt_rss else None))
    startup = case.get("startup", {})
    cli_s, pt_s = startup.get("loraguard-cli_s"), startup.get("torch-fp32_s")
    out.append(_target("process start to first result, PyTorch / loraguard-cli", ">= 5x",
                       f"{pt_s / cli_s:.2f}x ({pt_s:.2f} s / {cli_s:.2f} s)" if cli_s and pt_s else "not measured",
                       pt_s / cli_s >= 5 if cli_s and pt_s else None))
    r = ratios("llama-cpp-python", lengths)
    out.append(_target("loraguard / llama-cpp-python, same guard (p50 time), every length", "< 1", fmt(r),
                       all(v < 1 for v in r.values()) if r and len(r) == len(lengths) else None))
    factors: list[float] = []
    parts: list[str] = []
    for entry in case.get("added_memory", []):
        lg_added = entry.get("loraguard", {}).get("added_mib")
        gen_added = entry.get("generative", {}).get("added_mib")
        if lg_added is None or gen_added is None:
            continue
        # a page is the least a guard can add; anything below is no measurement at all
        factors.append(gen_added / max(lg_added, PAGE_MIB))
        parts.append(f"n_ctx {entry['n_ctx']}, {entry['tokens']} tok: {factors[-1]:.0f}x ({gen_added:.0f} / "
                     f"{lg_added:.1f} MiB)")
    out.append(_target("memory added, generative guard / loraguard", ">= 100x", "; ".join(parts) or "not measured",
                       all(f >= 100 for f in factors) if factors else None))
    r = ratios("generative", lengths)
    out.append(_target("loraguard / generative guard (p50 time), every length", "< 1", fmt(r),
                       all(v < 1 for v in r.values()) if r and len(r) == len(lengths) else None))
    tp = case["contenders"].get("loraguard", {}).get("throughput", {})
    gains = {int(n): t["batched_texts_s"] / t["single_texts_s"] for n, t in tp.items()}
    out.append(_target("batched / one-by-one texts/s, every length", ">= 1 (>= 1.5 at <= 16 tokens)",
                       fmt(gains, "x"),
                       all(g >= (1.5 if n <= 16 else 1.0) for n, g in gains.items()) if gains else None))
    busy = case.get("busy", {}).get("contenders", {})
    default, one = (busy.get(k, {}).get("latency", {}).get("p50_ms") for k in ("default", "1 thread"))
    threads = busy.get("default", {}).get("n_threads")
    out.append(_target("busy machine: default threads vs 1 thread (p50 time)", "<= 1",
                       f"{default / one:.2f} (default resolved to {threads} thread(s))" if default and one
                       else "not measured", default <= one if default and one else None))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models and few calls: checks the whole pipeline in under 2 minutes (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    parser.add_argument("--cache", type=Path, default=None, help="model cache (default ~/.cache/loraguard/bench)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for every contender (default: all cores this process may use)")
    parser.add_argument("--minilm-run", type=Path, default=None,
                        help="a loraguard-train run directory of a trained MiniLM guard (default: the newest "
                             "runs/minilm-*; the case is skipped where there is none)")
    parser.add_argument("--smollm2-run", type=Path, default=None,
                        help="a loraguard-train run directory of a trained SmolLM2 guard (default: the newest "
                             "runs/smollm2-*; its cases are skipped where there is none)")
    args = parser.parse_args(argv)
    from bench import report

    minilm = None if args.smoke else (args.minilm_run or find_run("minilm"))
    smollm2 = None if args.smoke else (args.smollm2_run or find_run("smollm2"))
    plan = smoke_plan() if args.smoke else full_plan(minilm, smollm2)
    cache = M.ModelCache(args.cache or M.default_cache())
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    busy_start, steal_start = machine_cpu_seconds()
    own_start = own_cpu_seconds()
    result: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["bench/run", *(argv if argv is not None else sys.argv[1:])]),
        "smoke": args.smoke,
        "machine": machine(),
        "settings": {"threads": args.threads, "n_ctx": N_CTX, "llama_cpp_extra_buffer_types": not cpu_has_amx(),
                     "kv_cache": "F16 (llama.cpp default)", "flash_attn": "auto (llama.cpp default)",
                     "n_seq_max": 32, "n_ubatch": N_UBATCH, "min_reps": MIN_REPS_SLOW, "max_reps": MAX_REPS,
                     "throughput_reps": THROUGHPUT_REPS, "lengths": sorted({n for c in plan.cases for n in c.lengths})},
        "skipped": [] if args.smoke else [f"trained {kind} guard: no run directory (runs/{kind}-*)"
                                          for kind, run in (("minilm", minilm), ("smollm2", smollm2)) if run is None],
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="loraguard-bench-") as logs:
        bench = Bench(plan, cache, args.threads, Path(logs))
        try:
            bench.prepare()
            peaks = [sgemm_peak(sorted({1, args.threads}), Path(logs) / "peak.log")]
            for case in plan.cases:
                if not case.primary and time.perf_counter() - started > plan.deadline_s:
                    result["skipped"].append(f"{case.name}: out of time ({plan.deadline_s / 60:.0f} min)")
                    continue
                result["cases"].append(bench.run_case(case))
            if not args.smoke:
                peaks.append(sgemm_peak(sorted({1, args.threads}), Path(logs) / "peak.log"))
        finally:
            bench.close()
    # the best of the measurements before and after the cases: what the machine can do
    result["sgemm_peak_gflops"] = {n: {k: max(p[n][k] for p in peaks) for k in peaks[0][n]} for n in peaks[0]}
    peak_f32 = max(v for k, v in result["sgemm_peak_gflops"][str(args.threads)].items() if k.endswith("f32"))
    for case in result["cases"]:
        derive(case, peak_f32)
    primary = next(c for c in result["cases"] if c["primary"])
    result["targets"] = targets(primary)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - started
    busy_end, steal_end = machine_cpu_seconds()
    # the load average counts this run's own threads; CPU time the machine spent outside this run does not
    result["machine"]["foreign_cpu_cores"] = max(0.0, busy_end - busy_start - (own_cpu_seconds() - own_start)) / \
        result["wall_s"]
    result["machine"]["steal_cores"] = (steal_end - steal_start) / result["wall_s"]

    host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in socket.gethostname())
    stem = args.out / f"{datetime.date.today().isoformat()}-{host}"
    json_path = stem.parent / f"{stem.name}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plots = report.plots(result, stem)
    md_path = stem.parent / f"{stem.name}.md"
    md_path.write_text(report.markdown(result, plots), encoding="utf-8")
    print(f"wrote {json_path}, {md_path} and {len(plots)} plots ({result['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
