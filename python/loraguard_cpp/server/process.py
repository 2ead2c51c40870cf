"""A server run as a child process on loopback: a free port, waiting until it answers, stopping it with SIGTERM.

The test suite and ``bench/run serve`` start real server processes (``loraguard-cli serve`` and its peers)
through this one implementation; it needs only the standard library (no ``serve`` extra).
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# How long a server gets to shut down gracefully after SIGTERM before it is killed.
STOP_GRACE_S = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ChildServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    # after the context: whether the process exited within STOP_GRACE_S of SIGTERM (False: it was killed)
    stopped_in_time: bool | None = None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _answers(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):  # not listening yet, or a half-started server
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def child_server(
    argv: Sequence[str],
    port: int,
    log: Path,
    ready_path: str = "/health",
    startup_timeout: float = 300,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[ChildServer]:
    """Starts argv (which must listen on `port`) with its output in `log`, yields once GET ready_path answers 200,
    and stops it with SIGTERM afterwards (killed after STOP_GRACE_S). Raises RuntimeError, with the log's end,
    when the process exits or is not ready within startup_timeout."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            list(argv), stdout=sink, stderr=subprocess.STDOUT, env=None if env is None else dict(env), cwd=cwd
        )
    server = ChildServer(process, port, log)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _answers(port, ready_path):
            if process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode}:\n{server.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} not ready after {startup_timeout} s:\n{server.log_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        server.stopped_in_time = True
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                server.stopped_in_time = False
