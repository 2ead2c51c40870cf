"""LORAGUARD_REQUIRE_SHARED=1 (set by .ci/run) turns a skip for missing ../shared files into a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, REQUIRE_SHARED

NEEDS_SHARED_FILE = '''
from conftest import DATA, require_shared


def test_reads_shared_data():
    require_shared(DATA / "loraguard-no-such-file.jsonl")
'''


def _pytest(tests: Path, required: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_SHARED}
    if required is not None:
        env[REQUIRE_SHARED] = required
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tests,
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """The project's conftest beside a test of a shared file that does not exist, in repo/tests; ../shared of
    that copy is tmp_path/shared, created per test as needed."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_needs_shared.py").write_text(NEEDS_SHARED_FILE)
    return tests


def test_missing_shared_file_skips_by_default_and_fails_when_required(suite: Path, tmp_path: Path) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    for unset in (None, "0"):
        default = _pytest(suite, unset)
        assert default.returncode == 0 and "1 skipped" in default.stdout, default.stdout + default.stderr
    required = _pytest(suite, "1")
    assert required.returncode == 1 and "1 failed" in required.stdout, required.stdout + required.stderr
    assert "loraguard-no-such-file.jsonl is absent" in required.stdout
    assert f"{REQUIRE_SHARED}=1" in required.stdout


def test_absent_shared_checkout_stops_a_required_run(suite: Path, tmp_path: Path) -> None:
    required = _pytest(suite, "1")
    assert required.returncode == pytest.ExitCode.USAGE_ERROR, required.stdout + required.stderr
    assert f"{tmp_path / 'shared'} is absent and {REQUIRE_SHARED}=1" in required.stderr
    assert _pytest(suite, None).returncode == 0


def test_ci_requires_shared() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert f"export {REQUIRE_SHARED}=1" in ci
