"""Training rows that bury a prompt in benign filler, so a guard learns to weigh a harmful request it reads
inside a long benign text instead of averaging it away.

A guard trained only on short rows scores a harmful sentence followed by a few hundred tokens of benign text as
safe (docs/guard-cards.md, "Every guard: long inputs and filler"): the runtime reads every token, but a verdict
comes from one window's mean (encoders) or last token (decoders). A buried row is one prompt-level training row
(the centre) with safe prompt-level training rows around it, at a random place, up to a token budget; it keeps
the centre's labels, because the filler is safe for every label. Half the centres are harmful and half safe, so
length and filler say nothing about the label. Only training rows are used: the dev splits stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from loraguard_train.data import UNSAFE, DataError, Dataset, Record

# how text pieces are joined: a paste into a paragraph, a new line, a new paragraph
SEPARATORS = (" ", "\n", "\n\n")
# tokens kept free for the guard's template and the separators' own tokens
TEMPLATE_MARGIN = 16
NAME = "buried"
# the extra field holding the buried prompt, for measuring how much the filler moved its score
CENTRE = "centre"


def buried_rows(
    datasets: Sequence[Dataset],
    n: int,
    max_tokens: int,
    count_tokens: Callable[[str], int],
    seed: int,
) -> Dataset:
    """`n` buried rows drawn from the prompt-level rows of `datasets`, each at most about `max_tokens` tokens
    (`count_tokens` counts a text's tokens without the template); seeded: the same data, n and seed give the
    same rows."""
    if n < 1:
        raise DataError(f"buried_rows must be positive, got {n}")
    budget = max_tokens - TEMPLATE_MARGIN
    prompts = [r for ds in datasets for r in ds.records if r.response is None and r.labels.get(UNSAFE) is not None]
    safe = [r for r in prompts if r.labels[UNSAFE] == 0]
    harmful = [r for r in prompts if r.labels[UNSAFE] == 1]
    if not safe or not harmful:
        raise DataError("buried rows need safe and harmful prompt-level training rows (target = 'prompt')")
    safe_tokens, harmful_tokens = (
        np.fromiter((count_tokens(r.prompt) for r in rows), dtype=np.int64, count=len(rows)) for rows in (safe, harmful)
    )
    # filler comes in pieces short enough to leave room for a centre
    fillers = np.flatnonzero(safe_tokens <= budget // 2)
    if fillers.size == 0:
        raise DataError(
            f"no safe prompt is short enough to be filler within {max_tokens} tokens; raise buried_max_length"
        )
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    for _ in range(100 * n):
        if len(records) == n:
            break
        pool, pool_tokens = (harmful, harmful_tokens) if len(records) % 2 == 0 else (safe, safe_tokens)
        pick = int(rng.integers(len(pool)))
        centre, used = pool[pick], int(pool_tokens[pick])
        if used > budget // 2:
            continue  # a centre that fills the budget alone teaches nothing about filler
        target = int(rng.integers(min(budget, 2 * used + 32), budget + 1))
        before: list[str] = []
        after: list[str] = []
        for index in rng.permutation(fillers):
            piece = int(safe_tokens[index])
            if used + piece + 1 > target:
                continue
            (before if rng.random() < 0.5 else after).append(safe[index].prompt)
            used += piece + 1
            if target - used < 8:
                break
        if not before and not after:
            continue
        sep = SEPARATORS[int(rng.integers(len(SEPARATORS)))]
        text = sep.join([*before, centre.prompt, *after])
        records.append(Record(text, None, centre.labels, {CENTRE: centre.prompt}))
    if len(records) < n:
        raise DataError(
            f"only {len(records)} of {n} buried rows fit within {max_tokens} tokens; raise buried_max_length"
        )
    return Dataset(NAME, records)
