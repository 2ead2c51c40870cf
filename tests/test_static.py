"""The static build for integrators: libloraguard.a + llama.cpp archives from the pinned source, a C program
and the C++ CLI linked with no libllama.so, giving the scores of the Python package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from loraguard_cpp import Guard

TEXT = "How do I bake bread?"


@pytest.fixture(scope="session")
def static_build() -> Path:
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("cmake and a C++ compiler are needed for the static build")
    out = subprocess.run(["bash", "scripts/build-static"], cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return REPO / "build" / "static"


def no_libllama(exe: Path) -> None:
    if shutil.which("ldd"):
        deps = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
        assert "libllama" not in deps and "libggml" not in deps, deps


def test_c_example_classifies_without_libllama(static_build: Path, stories_gguf: Path, stories_guard: Path) -> None:
    exe = static_build / "tests" / "c" / "classify_example"
    no_libllama(exe)
    out = subprocess.run([str(exe), str(stories_gguf), str(stories_guard), TEXT], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode in (0, 1), out.stderr
    for check in ("missing model", "NULL path", "model given as guard", "invalid UTF-8", "NUL byte", "empty text"):
        assert f"ok {check}:" in out.stderr, out.stderr
    row = json.loads(out.stdout)
    with Guard(stories_gguf, stories_guard, n_threads=1) as g:
        ref = g.logits([TEXT])[0]
        assert list(row["scores"]) == g.labels
    np.testing.assert_allclose(row["logits"], ref, atol=1e-4)
    assert out.returncode == (1 if row["flagged"] else 0)


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=300)


def _python_cli() -> list[str]:
    return [sys.executable, "-m", "loraguard_cpp.cli"]


def _same_json(static: object, python: object, path: str = "") -> None:
    """One JSON contract: the same keys and value types everywhere, equal values (numbers within the two
    builds' kernel differences)."""
    if isinstance(python, dict):
        assert isinstance(static, dict) and list(static) == list(python), (path, static, python)
        for key in python:
            _same_json(static[key], python[key], f"{path}.{key}")
    elif isinstance(python, list):
        assert isinstance(static, list) and len(static) == len(python), (path, static, python)
        for i, (a, b) in enumerate(zip(static, python, strict=True)):
            _same_json(a, b, f"{path}[{i}]")
    elif isinstance(python, float) and not isinstance(python, bool):
        assert isinstance(static, (int, float)) and abs(static - python) <= 1e-4 * max(1.0, abs(python)), path
    else:
        assert type(static) is type(python) and static == python, (path, static, python)


def test_static_cli(static_build: Path, stories_gguf: Path, stories_guard: Path) -> None:
    exe = static_build / "dist" / "bin" / "loraguard-cli"
    no_libllama(exe)
    files = ["-m", str(stories_gguf), "-g", str(stories_guard)]
    missing = _run([str(exe), "classify", "-m", str(stories_gguf), "-g", "/nonexistent.gguf", TEXT])
    assert missing.returncode == 2 and "guard file not found" in missing.stderr
    assert (static_build / "dist" / "lib" / "libloraguard.a").is_file()
    assert (static_build / "dist" / "include" / "loraguard.h").is_file()
    for bad in (["--jsn"], ["-x"], ["--threads", "two"], ["--overflow", "truncate"], ["--threads"]):
        out = _run([str(exe), "classify", *files, *bad, TEXT])
        assert out.returncode == 2 and out.stdout == "", (bad, out.stdout)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("loraguard-cli: error: "), (bad, out.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["classify", "--json", TEXT, "I will find you and hurt you", "caf\u00e9 \U0001f600 \"quoted\"\ttab"],
        ["classify", "--json", "--response", "Knead the dough.", TEXT],
        ["classify", "--json", "--ctx", "16", "--overflow", "windows", "--isolated", TEXT * 4],
        ["info", "--json"],
    ],
)
def test_static_and_python_cli_print_the_same_json(
    static_build: Path, stories_gguf: Path, stories_guard: Path, args: list[str]
) -> None:
    files = ["-m", str(stories_gguf), "-g", str(stories_guard), "--threads", "1"]
    static = _run([str(static_build / "dist" / "bin" / "loraguard-cli"), *args, *files])
    python = _run([*_python_cli(), *args, *files])
    assert static.returncode == python.returncode and python.returncode in (0, 1), static.stderr + python.stderr
    if args[0] == "info":
        _same_json(json.loads(static.stdout), json.loads(python.stdout))
    else:
        rows = [[json.loads(line) for line in out.stdout.splitlines()] for out in (static, python)]
        _same_json(rows[0], rows[1])


def test_static_cli_reads_stdin_lines_as_python_does(static_build: Path, stories_gguf: Path,
                                                     stories_guard: Path) -> None:
    args = ["classify", "--json", "-m", str(stories_gguf), "-g", str(stories_guard), "--threads", "1", "-"]
    stdin = "one\n\ntwo\n"
    static = _run([str(static_build / "dist" / "bin" / "loraguard-cli"), *args], stdin)
    python = _run([*_python_cli(), *args], stdin)
    assert static.returncode == python.returncode, static.stderr + python.stderr
    _same_json([json.loads(x) for x in static.stdout.splitlines()], [json.loads(x) for x in python.stdout.splitlines()])
