"""Shared fixtures: the ../shared data and models beside the repo (skipped with a reason when absent)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
STORIES = SHARED / "models" / "stories260K"


# CI sets it (.ci/run): a suite that silently skipped its real-model tests must not pass there.
REQUIRE_SHARED = "LORAGUARD_REQUIRE_SHARED"


def shared_required() -> bool:
    return os.environ.get(REQUIRE_SHARED, "") not in ("", "0")


def require_shared(path: Path) -> Path:
    """PATH under ../shared; the test skips where it is absent, and fails instead under LORAGUARD_REQUIRE_SHARED=1."""
    if not path.exists():
        why = f"{path} is absent: these tests need the shared data/models checkout beside the repo"
        if shared_required():
            pytest.fail(f"{why} ({REQUIRE_SHARED}=1: missing shared files fail the run)", pytrace=False)
        pytest.skip(why)
    return path


def pytest_configure(config: pytest.Config) -> None:
    # Some modules decide at import whether they have data to run on; without ../shared at all, stop first.
    if shared_required() and not SHARED.is_dir():
        raise pytest.UsageError(f"{SHARED} is absent and {REQUIRE_SHARED}=1: check out the shared data/models there")


def load_real_texts(n: int, *, min_special: int = 6) -> list[str]:
    """n real moderation texts: plain ones plus at least min_special non-ASCII, emoji or long (> 2000 chars)."""
    rows: list[str] = []
    sets = ("toxicchat0124_train_human_annotated.jsonl", "openai_moderation_test.jsonl", "aegis_safety_test.jsonl")
    for name in sets:
        with open(require_shared(DATA / name), encoding="utf-8") as f:
            rows.extend(json.loads(line)["text"] for line in f if line.strip())
    non_ascii = [t for t in rows if any(ord(c) > 127 for c in t) and len(t) < 400]
    emoji = [t for t in rows if any(ord(c) >= 0x1F300 for c in t) and len(t) < 400]
    long = [t for t in rows if len(t) > 2000]
    special = (emoji[: min_special // 3] + non_ascii[: min_special // 3] + long[:1])[:min_special]
    plain = [t for t in rows if t.isascii() and 10 < len(t) < 300]
    texts = special + plain[: max(0, n - len(special))]
    assert len(texts) == n and emoji and non_ascii and long, "shared data lacks the text variety tests rely on"
    return texts


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    return load_real_texts(24)


@pytest.fixture(scope="session")
def stories_gguf() -> Path:
    return require_shared(STORIES / "gguf" / "stories260K-F32.gguf")


@pytest.fixture(scope="session")
def stories_hf() -> Path:
    return require_shared(STORIES / "hf")


@pytest.fixture(scope="session")
def stories_guard(tmp_path_factory: pytest.TempPathFactory, stories_hf: Path, stories_gguf: Path) -> Path:
    """A guard on real weights: non-zero random LoRA on every linear projection of stories260K, random head."""
    from loraguard_convert.guard import convert_guard
    from tiny_models import build_tiny_guard_checkpoint

    out = tmp_path_factory.mktemp("stories-guard")
    ckpt = build_tiny_guard_checkpoint(stories_hf, out / "ckpt", targets="all", seed=0)
    return convert_guard(ckpt, out / "guard.gguf", base_gguf=stories_gguf)


class TinyBase(NamedTuple):
    """A tiny random-init HF model of one architecture (real tokenizer) and its F32 GGUF."""

    arch: str
    hf_dir: Path
    gguf: Path


@pytest.fixture(scope="session")
def tiny_base() -> Callable[[str], TinyBase]:
    """Builds each architecture once per process (tiny_models caches it for every test module)."""
    pytest.importorskip("transformers")
    from tiny_models import cached_tiny_gguf, cached_tiny_model

    return lambda arch: TinyBase(arch, cached_tiny_model(arch), cached_tiny_gguf(arch))
