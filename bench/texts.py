"""Inputs of exact token lengths: what a guard's cost depends on is how many tokens it runs, not what they say."""

from __future__ import annotations

import random
from collections.abc import Callable

# Plain English words: each is a token or two in every tokenizer used here, so lengths land exactly.
_PARAGRAPH = (
    "the people who live near the river say that water comes up every spring and the town has learned to move "
    "its market to the hill when rain starts early this year a group of students wrote to the council asking "
    "for a new bridge because the old one is closed for most of april while repairs go on children walk a long "
    "way round to school some parents drive them but traffic is bad near the station and buses are often late "
    "the council said it would look at costs next month and a report is due before summer many shops along the "
    "main road have closed since the flood last year owners hope new visitors will come back once the path "
    "along the water opens again with lights benches and a place to rent boats"
)
_WORDS = _PARAGRAPH.split()
_FILLER = " a"


def exact_length_text(count_tokens: Callable[[str], int], n_tokens: int, seed: int) -> str:
    """A text that the guard runs as exactly n_tokens tokens (template and special tokens included).

    Words are added from a seeded shuffle of a fixed word list; the largest prefix that fits is found by
    bisection, then one-token fillers close the gap. Raises if n_tokens cannot be hit exactly.
    """
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(2 * n_tokens + 8)]
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    while (n := count_tokens(text)) < n_tokens:
        text += _FILLER
    if n != n_tokens:
        raise ValueError(f"no text of exactly {n_tokens} tokens found (got {n})")
    return text
