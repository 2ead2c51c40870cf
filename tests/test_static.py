"""The static build for integrators: libloraguard.a + llama.cpp archives from the pinned source, a C program
and the C++ CLI linked with no libllama.so, giving the scores of the Python package."""

from __future__ import annotations

import json
import shutil
import subprocess
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


def test_static_cli(static_build: Path, stories_gguf: Path, stories_guard: Path) -> None:
    exe = static_build / "dist" / "bin" / "loraguard-cli"
    no_libllama(exe)
    out = subprocess.run([str(exe), "classify", "--json", "-m", str(stories_gguf), "-g", str(stories_guard), TEXT],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr
    row = json.loads(out.stdout)
    assert row["text"] == TEXT and set(row) == {"text", "flagged", "scores"}
    missing = subprocess.run([str(exe), "classify", "-m", str(stories_gguf), "-g", "/nonexistent.gguf", TEXT],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "guard file not found" in missing.stderr
    assert (static_build / "dist" / "lib" / "libloraguard.a").is_file()
    assert (static_build / "dist" / "include" / "loraguard.h").is_file()
