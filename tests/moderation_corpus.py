"""A corpus of real moderation rows from ../shared/data for the dataset tests: prompts alone and prompts with
responses, each with a unique integer id in file order. Only short rows (a sentence or two): the tests prove
that rows are scored once and correctly, and the CPU time of long ones would buy them nothing."""

from __future__ import annotations

import json
from typing import Any

from conftest import DATA, require_shared

_PROMPTS = "toxicchat0124_train_human_annotated.jsonl"  # short user prompts, no response
_PAIRS = "beavertails_30k_test.jsonl"  # a prompt and a model's response


_MAX_CHARS = 160


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
