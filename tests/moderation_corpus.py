"""A corpus of real moderation rows from ../shared/data for the dataset tests: prompts alone and prompts with
responses, each with a unique integer id in file order. Only short rows (a sentence or two): the tests prove
that rows are scored once and correctly, and the CPU time of long ones would buy them nothing."""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import numpy.typing as npt

from conftest import DATA, require_shared
from loraguard_cpp import Guard
from loraguard_cpp.batch import FLAGGED_COLUMN, score_column

_PROMPTS = "toxicchat0124_train_human_annotated.jsonl"  # short user prompts, no response
_PAIRS = "beavertails_30k_test.jsonl"  # a prompt and a model's response


_MAX_CHARS = 160

# A prompt that passes alone and a response to it that must be flagged: a row whose harm only its response holds.
PROMPT = "Tell me about my neighbour."
HARMFUL_RESPONSE = ("Sure. Kill him with a knife while he sleeps, then hide the body in the woods. I hate those filthy "
                    "people, they should all die.")


def _read(name: str) -> list[dict[str, Any]]:
    with open(require_shared(DATA / name), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if len(r["text"]) <= _MAX_CHARS and len(r.get("response") or "") <= _MAX_CHARS]


def moderation_corpus(n: int) -> list[dict[str, Any]]:
    """n rows {id, text, response, source}: every fourth a (prompt, response) pair, the rest prompts alone."""
    prompts, pairs = iter(_read(_PROMPTS)), iter(_read(_PAIRS))
    rows = []
    for i in range(n):
        source = next(pairs) if i % 4 == 3 else next(prompts)
        rows.append({"id": i, "text": source["text"], "response": source.get("response"), "source": source["source"]})
    return rows


BATCH_TOLERANCE = 0.01  # scores of different batch compositions agree this well (README: Batching)


def score_matrix(table: Any, labels: list[str]) -> npt.NDArray[np.float32]:
    """The score_<label> columns of a scored table (pyarrow, pandas or a dict of arrays) as an (N, labels) array."""
    return np.stack([np.asarray(table[score_column(label)], dtype=np.float32) for label in labels], axis=1)


class Reference:
    """Rows scored in one process by Guard.classify_batch: what every parallel run must reproduce."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        with Guard() as guard:
            self.labels = guard.labels
            self.thresholds = guard.thresholds
            self.scores = guard.classify_batch([r["text"] for r in rows], [r["response"] for r in rows])

    def check(self, table: Any, n_rows: int | None = None) -> None:
        """The scored table holds the first n_rows (default: all) exactly once each, in order, with their scores
        and the flags those scores give."""
        n_rows = len(self.scores) if n_rows is None else n_rows
        assert [int(i) for i in table["id"]] == list(range(n_rows)), "every row exactly once, in input order"
        scores = score_matrix(table, self.labels)
        assert np.abs(scores - self.scores[:n_rows]).max() <= BATCH_TOLERANCE
        # Flags follow the output's own scores by the package's rule (a label at or above its threshold).
        flagged = np.asarray(table[FLAGGED_COLUMN], dtype=bool)
        np.testing.assert_array_equal(flagged, (scores >= self.thresholds).any(axis=1))
        assert flagged.any() and not flagged.all(), "the corpus has both verdicts"


REFERENCE_ROWS = 2000


@functools.cache
def corpus_reference() -> Reference:
    """The corpus's first REFERENCE_ROWS rows scored once per test session, shared by every dataset test (each
    checks a prefix of it)."""
    return Reference(moderation_corpus(REFERENCE_ROWS))
