"""bench/run --smoke: the benchmark's whole pipeline on its smallest config, and the artifacts it documents.

Nothing here asserts a speed: CI machines are shared and timings vary; the full run's report says how fast.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# bench/README.md documents these fields
TOP_FIELDS = {"schema", "date", "command", "smoke", "machine", "settings", "skipped", "cases", "sgemm_peak_gflops",
              "targets", "wall_s"}
CASE_FIELDS = {"name", "primary", "description", "n_ctx", "mem_available_mib", "model", "guard", "contenders",
               "gflops_peak_fraction"}
PRIMARY_FIELDS = {"startup", "added_memory", "busy", "generative_model"}
CONTENDERS = {"loraguard", "loraguard-cli", "torch-fp32", "llama-cpp-python", "generative", "limit"}
LATENCY_FIELDS = {"p50_ms", "p95_ms", "n"}
TARGET_FIELDS = {"target", "wanted", "measured", "met"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("matplotlib")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("bench")
    # run from elsewhere than the repo root, as a user would, with the documented command
    proc = subprocess.run([str(REPO / "bench" / "run"), "--smoke", "--out", str(out)], cwd=out, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_artifacts_exist(smoke: Path) -> None:
    (json_file,) = smoke.glob("*.json")
    (md_file,) = smoke.glob("*.md")
    assert json_file.stem == md_file.stem
    plots = sorted(smoke.glob("*.png"))
    assert {p.name.removeprefix(json_file.stem + "-") for p in plots} >= {"latency.png", "ratios.png", "vs-limit.png"}
    report = md_file.read_text(encoding="utf-8")
    assert "## Targets" in report and "| loraguard |" in report
    assert all(f"]({p.name})" in report for p in plots)


def test_json_has_documented_fields(smoke: Path) -> None:
    (json_file,) = smoke.glob("*.json")
    result = json.loads(json_file.read_text(encoding="utf-8"))
    assert set(result) >= TOP_FIELDS and result["smoke"] is True
    assert result["machine"]["cores"] >= 1
    (case,) = result["cases"]
    assert set(case) >= CASE_FIELDS | PRIMARY_FIELDS and case["primary"]
    assert set(case["contenders"]) == CONTENDERS
    for name, contender in case["contenders"].items():
        assert "error" not in contender, f"{name}: {contender.get('error')}"
        for lat in contender["latency"].values():
            assert set(lat) >= LATENCY_FIELDS and lat["n"] >= 1
    assert set(case["contenders"]["loraguard"]["latency"]) == {"16", "64"}
    assert set(case["contenders"]["limit"]["ratio_loraguard"]) == {"16", "64"}
    assert {"batched_texts_s", "single_texts_s", "n_texts"} <= set(case["contenders"]["loraguard"]["throughput"]["16"])
    for entry in case["added_memory"]:
        assert {"added_mib", "chat_peak_rss_mib"} <= set(entry["loraguard"]) and entry["n_ctx"] > entry["tokens"]
    assert {"default", "1 thread"} <= set(case["busy"]["contenders"])
    assert case["guard"]["params"] > 0 and 0 < case["guard"]["params_vs_base"] < 1
    assert result["targets"] and all(set(t) == TARGET_FIELDS for t in result["targets"])
