"""Binary classification metrics per label, in numpy (definitions as scikit-learn's, which the tests check).

Labels come as float arrays with NaN for unknown; every function here drops unknown rows first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def sigmoid(logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Probabilities from head logits, in float64 so that ranking metrics see no float32 ties."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def _known(y: FloatArray, scores: FloatArray) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    mask = ~np.isnan(y)
    return y[mask] == 1, np.asarray(scores, dtype=np.float64)[mask]


def _curve(
    positive: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when flagging at each distinct score (descending), and those scores."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    hits = positive[order].astype(np.float64)
    # the last index of each run of equal scores: ties are flagged together
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
    tps = np.cumsum(hits)[last]
    fps = last + 1 - tps
    return tps, fps, sorted_scores[last]


def average_precision(y: FloatArray, scores: FloatArray) -> float | None:
    """Area under the precision-recall curve as a step sum (AUPRC); None without positives."""
    positive, s = _known(y, scores)
    if not positive.any():
        return None
    tps, fps, _ = _curve(positive, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y: FloatArray, scores: FloatArray) -> float | None:
    """Area under the ROC curve (ties count half); None unless both classes are present."""
    positive, s = _known(y, scores)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # average 1-based ranks over runs of equal scores
    starts = np.r_[0, np.nonzero(np.diff(sorted_scores))[0] + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_curve(y: FloatArray, scores: FloatArray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) points from the highest threshold down, starting at recall 0."""
    positive, s = _known(y, scores)
    if not positive.any():
        return np.zeros(0), np.zeros(0)
    tps, fps, _ = _curve(positive, s)
    precision = tps / (tps + fps)
    return np.r_[0.0, tps / tps[-1]], np.r_[precision[0], precision]


# An F1-maximising threshold found on a handful of positives lands on one of their scores, anywhere: measured on
# the smollm2 guard, 2 positives of violence/graphic put its threshold at 0.14, and "The capital of France is
# Paris." was flagged. Labels with fewer positives keep their threshold.
MIN_CALIBRATION_POSITIVES = 20


def best_f1_threshold(y: FloatArray, scores: FloatArray, min_positives: int = 1) -> tuple[float, float] | None:
    """The threshold (flag when score >= it) that maximises F1, and that F1; None with fewer than min_positives
    positive rows.

    The threshold sits halfway between the deciding score and the next lower one rather than on the score
    itself, so the small score differences between batched and one-at-a-time runs do not flip that row.
    """
    positive, s = _known(y, scores)
    if not positive.any() or int(positive.sum()) < min_positives:
        return None
    tps, fps, thresholds = _curve(positive, s)
    n_pos = tps[-1]
    f1 = 2 * tps / (tps + fps + n_pos)
    best = int(np.argmax(f1))
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else thresholds[best]
    return float(np.clip((thresholds[best] + lower) / 2.0, 0.0, 1.0)), float(f1[best])


def flag_threshold(negative_scores: FloatArray, max_flagged: int) -> float:
    """The lowest threshold (flag when score >= it) that flags at most `max_flagged` of these negative rows.

    Like best_f1_threshold it sits halfway between two scores (the highest unflagged negative and the next
    higher one, or 1.0), not on one, so the small differences between batched and one-at-a-time scores do not
    flip the deciding row; rows tied on a score are flagged together or not at all. Rows scored exactly 1.0 are
    flagged at any threshold a guard can hold.
    """
    return float(flag_thresholds(negative_scores, [max_flagged])[0])


def flag_thresholds(negative_scores: FloatArray, max_flagged: Sequence[int]) -> npt.NDArray[np.float64]:
    """flag_threshold for each count in `max_flagged`, sorting the scores once (a calibration search tries
    many counts on the same rows)."""
    scores = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    out = np.empty(len(max_flagged), dtype=np.float64)
    for i, wanted in enumerate(max_flagged):
        if wanted >= len(scores):
            out[i] = 0.0
            continue
        # scores[:k] flagged, scores[k] the highest unflagged: move k down past ties with scores[k]
        k = max(wanted, 0)
        while k > 0 and scores[k - 1] == scores[k]:
            k -= 1
        upper = scores[k - 1] if k > 0 else 1.0
        out[i] = (scores[k] + upper) / 2.0
    return out


@dataclass(frozen=True)
class LabelMetrics:
    n: int
    n_pos: int
    auprc: float | None
    roc_auc: float | None
    threshold: float
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def label_metrics(y: FloatArray, scores: FloatArray, threshold: float) -> LabelMetrics:
    """All per-label numbers: ranking metrics and the confusion counts at the guard's threshold."""
    positive, s = _known(y, scores)
    flagged = s >= threshold
    tp = int(np.sum(flagged & positive))
    fp = int(np.sum(flagged & ~positive))
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / n_pos if n_pos else None
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp)) if n_pos else None
    return LabelMetrics(
        n=len(positive),
        n_pos=n_pos,
        auprc=average_precision(y, scores),
        roc_auc=roc_auc(y, scores),
        threshold=float(threshold),
        precision=precision,
        recall=recall,
        f1=f1,
        fpr=fp / n_neg if n_neg else None,
    )
