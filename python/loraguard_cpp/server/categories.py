"""Guard verdicts in OpenAI's moderation shape and in Azure OpenAI's content-filter shape.

Both are views of one :class:`~loraguard_cpp.guard.GuardResult`: which labels are flagged is decided once, by
``Guard.classify_many``; nothing here compares a score with a threshold.
"""

from __future__ import annotations

from ..guard import GuardResult

# Every key of OpenAI's current moderation model (omni-moderation), in its order. A guard label with the same
# name fills a key; a key the guard has no label for is reported as not flagged with score 0.0 and no applied
# input types, so a client can tell "not covered" from "scored low".
OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

# The guard's overall label: not an OpenAI category, reported in its own field.
OVERALL_LABEL = "unsafe"

# Azure's content filter reports four harm families; a guard label joins a family by its name or its
# "name/..." subcategories. Labels outside the families (the overall label, a custom guard's own labels)
# are reported under their own names.
AZURE_FAMILIES: dict[str, tuple[str, ...]] = {
    "hate": ("hate", "harassment"),
    "self_harm": ("self-harm",),
    "sexual": ("sexual",),
    "violence": ("violence",),
}


def uncovered_categories(labels: list[str]) -> list[str]:
    """The OpenAI keys a guard with these labels cannot score."""
    return [key for key in OPENAI_CATEGORIES if key not in labels]


def moderation_result(result: GuardResult) -> dict[str, object]:
    """One entry of ``results`` in a /v1/moderations response."""
    return {
        "flagged": result.flagged,
        "categories": {key: key in result.flagged_labels for key in OPENAI_CATEGORIES},
        "category_scores": {key: result.scores.get(key, 0.0) for key in OPENAI_CATEGORIES},
        "category_applied_input_types": {key: ["text"] if key in result.scores else [] for key in OPENAI_CATEGORIES},
        # Extensions, named so that no future OpenAI field collides with them.
        "loraguard_unsafe_score": result.scores.get(OVERALL_LABEL),
        "loraguard_flagged_labels": list(result.flagged_labels),
        "loraguard_scores": dict(result.scores),
    }


def _family(label: str) -> str:
    for family, roots in AZURE_FAMILIES.items():
        if any(label == root or label.startswith(root + "/") for root in roots):
            return family
    return label


def content_filter_results(result: GuardResult) -> dict[str, dict[str, object]]:
    """Azure's ``content_filter_results``: per family, ``filtered`` when any of its labels is flagged.

    Azure grades severity in four levels; the guard has a threshold per label instead, so ``severity`` is
    ``"high"`` for a filtered family and ``"safe"`` otherwise, and ``score`` carries the family's highest
    probability."""
    out: dict[str, dict[str, object]] = {}
    for label, score in result.scores.items():
        entry = out.setdefault(_family(label), {"filtered": False, "severity": "safe", "score": 0.0})
        if label in result.flagged_labels:
            entry["filtered"] = True
            entry["severity"] = "high"
        entry["score"] = max(float(entry["score"]), score)  # type: ignore[arg-type]
    return out


def moderation_results(model: str, results: list[GuardResult]) -> dict[str, object]:
    """OpenAI's ``moderation_results`` object, as its moderated chat completions carry for input and output."""
    return {
        "type": "moderation_results",
        "model": model,
        "results": [{**moderation_result(r), "model": model, "type": "moderation_result"} for r in results],
    }
