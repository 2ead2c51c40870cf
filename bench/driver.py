"""Contender processes seen from the driver: start, time calls, read peak RSS, stop."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """Children import bench/ from this checkout. They also run in the repo root (CHILD_CWD), because
    `python -m` puts the working directory first on sys.path, where any bench.py would shadow this package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


CHILD_CWD = REPO


class ContenderFailed(RuntimeError):
    """A contender could not load or run; the benchmark goes on without it and reports why."""


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


class Worker:
    """A bench/worker.py process holding one loaded contender."""

    def __init__(self, name: str, spec: dict[str, Any], log: Path) -> None:
        self.name = name
        self.log = log
        self._stderr: IO[bytes] = open(self.log, "wb")  # noqa: SIM115 (lives as long as the process)
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=child_env(),
            cwd=CHILD_CWD,
        )
        ready = self._read()
        self.load_s: float = ready["load_s"]
        # interpreter start and imports plus the load: what a fresh process pays before its first call
        self.ready_s = time.perf_counter() - start

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise ContenderFailed(f"{self.name} exited ({self.proc.returncode}): {_tail(self.log)}")
        return json.loads(line)

    def _call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise ContenderFailed(f"{self.name} is gone: {_tail(self.log)}") from e
        return self._read()

    def time(self, texts: Sequence[str], batched: bool) -> float:
        return float(self._call({"op": "run", "texts": list(texts), "batched": batched})["s"])

    def stats(self) -> dict[str, Any]:
        return self._call({"op": "stats"})

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ContenderFailed, BrokenPipeError, json.JSONDecodeError):
                self._call({"op": "quit"})
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def run_process(argv: Sequence[str], log: Path) -> tuple[float, int]:
    """Run a command to completion: (wall seconds, exit code). Its peak RSS is not taken: a child's ru_maxrss
    starts at the driver's own peak (it survives exec), so it would say more about the driver."""
    with open(log, "ab") as err:
        start = time.perf_counter()
        code = subprocess.call(argv, stdout=subprocess.DEVNULL, stderr=err, env=child_env(), cwd=CHILD_CWD)
        return time.perf_counter() - start, code


class CliContender:
    """Contender 2: loraguard-cli, one process per call, so each call pays interpreter start and model load."""

    def __init__(self, base: Path, guard: Path, n_ctx: int, threads: int, log_dir: Path) -> None:
        self.name = "loraguard-cli"
        self.argv = [sys.executable, "-m", "loraguard_cpp.cli", "classify", "--json", "-m", str(base), "-g",
                     str(guard), "--ctx", str(n_ctx), "--threads", str(threads)]
        self.log = log_dir / "loraguard-cli.log"

    def time(self, texts: Sequence[str], batched: bool) -> float:
        elapsed, code = run_process([*self.argv, *texts], self.log)
        # exit code 1 only says that something was flagged
        if code not in (0, 1):
            raise ContenderFailed(f"loraguard-cli exited {code}: {_tail(self.log)}")
        return elapsed

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
