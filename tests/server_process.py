"""A real ``loraguard-cli serve`` process on a free loopback port, for the server tests."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from loraguard_cpp.server.process import STOP_GRACE_S, child_server, free_port


@dataclass(frozen=True)
class Server:
    url: str  # http://127.0.0.1:PORT
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS in /proc status")

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (user + system): a measure of its work that does not depend on
        how busy the machine is."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def request(self, method: str, path: str, body: bytes | dict[str, object] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, object]:
        """One raw HTTP request; the body is decoded as JSON where it is JSON, else returned as text."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            raw = response.read().decode("utf-8", errors="replace")
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except json.JSONDecodeError:
            return response.status, raw


@contextlib.contextmanager
def running_server(log_dir: Path, *args: str, startup_timeout: float = 300,
                   env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """Starts the server (with `env` added to this process's environment), waits until /health says ready, and
    stops it with SIGTERM afterwards, requiring a clean exit (the graceful shutdown path)."""
    port = free_port()
    # One thread per native call: the test's own client threads share the cores, and llama.cpp's worker threads
    # spin, which slows a two-thread call down many times over once a core is taken (8x measured here).
    cmd = [sys.executable, "-m", "loraguard_cpp.cli", "serve", "--port", str(port), "--threads", "1", *args]
    with child_server(cmd, port, log_dir / f"serve-{port}.log", startup_timeout=startup_timeout,
                      env={**os.environ, **(env or {})}) as child:
        yield Server(f"http://127.0.0.1:{port}", port, child.process, child.log)
    assert child.stopped_in_time, f"server did not stop within {STOP_GRACE_S} s of SIGTERM"
    # uvicorn re-raises the signal once it has shut down, so -SIGTERM is a clean exit when the app's shutdown ran.
    process = child.process
    clean = process.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in child.log_text()
    assert clean, f"server exited with {process.returncode}:\n{child.log_text()[-3000:]}"
