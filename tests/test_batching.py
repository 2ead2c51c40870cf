"""Batched scores against one-at-a-time scores under the default settings (F16 K/V cache, llama.cpp's flash
attention choice): the README promises agreement within 0.01 in probability, not only under exact=True."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loraguard_cpp import Guard

TOLERANCE = 0.01  # README, "Batching"


def _batch_and_single(guard: Guard, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    batched = guard.classify_batch(texts)
    single = np.stack([guard.classify_batch([text])[0] for text in texts])
    return batched, single


def test_batch_matches_single_under_defaults(stories_gguf: Path, stories_guard: Path, real_texts: list[str]) -> None:
    with Guard(stories_gguf, stories_guard, n_threads=1) as guard:
        batched, single = _batch_and_single(guard, real_texts)
    assert np.abs(batched - single).max() <= TOLERANCE


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_named_guard_batch_matches_single_under_defaults(name: str, real_texts: list[str]) -> None:
    """The shipped guards, as users run them: probabilities spread over (0, 1), so the tolerance means something."""
    with Guard(guard=name, n_threads=1) as guard:
        batched, single = _batch_and_single(guard, real_texts)
    assert np.abs(batched - single).max() <= TOLERANCE
    unsafe = single[:, 0]
    assert unsafe.min() < 0.2 and unsafe.max() > 0.8, "texts too alike for this comparison to mean anything"
    flips = (batched >= guard.thresholds) != (single >= guard.thresholds)
    assert not flips[np.abs(single - guard.thresholds) >= TOLERANCE].any()
