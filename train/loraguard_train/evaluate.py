"""`loraguard-eval`: a guard GGUF on the native runtime over labelled data; metrics, plots, calibration.

Scores come from `loraguard_cpp.Guard` (what users run), optionally next to the PyTorch model of the same
checkpoint (`--reference`), which cuts long inputs the way the runtime does so both see the same tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from loraguard_train.data import UNSAFE, DataError, Dataset
from loraguard_train.inputs import logits_of, pad_id, read_text, second_readings, tokenize
from loraguard_train.metrics import (
    MIN_CALIBRATION_POSITIVES,
    best_f1_threshold,
    flag_thresholds,
    label_metrics,
    precision_recall_curve,
    sigmoid,
)
from loraguard_train.model import GuardModel, load_checkpoint, load_tokenizer
from loraguard_train.train import RUN_FILE

if TYPE_CHECKING:
    # the native runtime is needed to score, not to train: a GPU box without llama.cpp built still trains
    from loraguard_cpp import Guard

Probs = npt.NDArray[np.float64]


@dataclass
class Scored:
    """One data set's probabilities for the guard's labels, and how long scoring took."""

    dataset: Dataset
    probs: Probs
    seconds: float


@dataclass
class Evaluation:
    dataset: Dataset
    native: Scored
    reference: Scored | None = None
    labels: list[str] = field(default_factory=list)


def score_native(guard: Guard, dataset: Dataset, batch_size: int, quiet: bool = False) -> Scored:
    """Probabilities from the native runtime, in chunks of `batch_size` texts (one progress step each)."""
    prompts, responses = dataset.prompts, dataset.responses
    chunks: list[npt.NDArray[np.float32]] = []
    started = time.perf_counter()
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(
        starts, desc=f"native {dataset.name}", unit="batch", leave=False, disable=True if quiet else None
    ):
        end = start + batch_size
        chunks.append(guard.logits(prompts[start:end], None if responses is None else responses[start:end]))
    seconds = time.perf_counter() - started
    return Scored(dataset, sigmoid(np.concatenate(chunks)), seconds)


@dataclass
class Reference:
    """The PyTorch model of a checkpoint, scoring as the runtime does (same template, tokens and cut)."""

    model: GuardModel
    tokenizer: Any
    guard_config: dict[str, Any]
    max_tokens: int
    read_lines: bool = True  # as the runtime's Guard(read_lines=...)

    @classmethod
    def load(cls, ckpt: Path, base: Path, max_tokens: int, read_lines: bool = True) -> Reference:
        model, guard_config = load_checkpoint(ckpt, base)
        return cls(model, load_tokenizer(base), guard_config, max_tokens, read_lines)

    def score(self, dataset: Dataset, batch_size: int, quiet: bool = False) -> Scored:
        started = time.perf_counter()
        desc = None if quiet else f"torch {dataset.name}"
        logits = self._logits(dataset.prompts, dataset.responses, batch_size, desc)
        # The runtime's other readings (decoded, line by line), the max kept as there
        rows, prompts, responses = second_readings(dataset.prompts, dataset.responses, self.read_lines)
        if rows:
            second = self._logits(prompts, responses, batch_size, None if quiet else f"torch {dataset.name} (readings)",
                                  read=None)
            np.maximum.at(logits, np.asarray(rows), second)
        return Scored(dataset, sigmoid(logits), time.perf_counter() - started)

    def _logits(self, prompts: Sequence[str], responses: Sequence[str | None] | None, batch_size: int,
                desc: str | None, read: Callable[[str], str] | None = read_text) -> npt.NDArray[np.float32]:
        template = self.guard_config["template"]
        ids = tokenize(
            self.tokenizer,
            prompts,
            responses,
            template["prompt"],
            template["pair"],
            template["parse_special"],
            self.max_tokens,
            invocation=self.model.invocation or (),
            read=read,
        )
        return logits_of(self.model, ids, pad_id(self.tokenizer), batch_size, desc=desc)


def reference_base(ckpt: Path, given: Path | None) -> Path:
    """The base to load a checkpoint on: as given, or the one recorded by the loraguard-train run that wrote it."""
    if given is not None:
        return given
    run = ckpt.parent / RUN_FILE
    if run.is_file():
        return Path(json.loads(run.read_text(encoding="utf-8"))["base"])
    raise FileNotFoundError(f"{ckpt}: no {RUN_FILE} beside it to name its base; pass --reference-base")


def _metrics(
    dataset: Dataset,
    probs: Probs,
    labels: Sequence[str],
    guard_labels: Sequence[str],
    thresholds: npt.NDArray[np.float32],
) -> dict[str, dict[str, Any]]:
    targets = dataset.targets(labels)
    out = {}
    for j, label in enumerate(labels):
        g = guard_labels.index(label)
        out[label] = label_metrics(targets[:, j], probs[:, g], float(thresholds[g])).as_dict()
    return out


def _flag_rate(
    dataset: Dataset, probs: Probs, thresholds: npt.NDArray[np.float32], unsafe: int
) -> tuple[int, float | None]:
    """Rows whose `unsafe` label is `unsafe`, and the share of them the guard flags on any label: over-flagging
    for safe rows (e.g. XSTest's safe prompts), harmful rows caught for unsafe ones."""
    rows = dataset.targets([UNSAFE])[:, 0] == unsafe
    if not rows.any():
        return 0, None
    flagged = (probs[rows] >= thresholds[None, :]).any(axis=1)
    return int(rows.sum()), float(flagged.mean())


def summarize(
    evaluation: Evaluation, guard_labels: Sequence[str], thresholds: npt.NDArray[np.float32]
) -> dict[str, Any]:
    """The JSON record of one data set: per-label metrics (native, and reference if any), speed, over-flagging."""
    ds, native = evaluation.dataset, evaluation.native
    n_safe, safe_flagged = _flag_rate(ds, native.probs, thresholds, 0)
    n_unsafe, unsafe_caught = _flag_rate(ds, native.probs, thresholds, 1)
    record: dict[str, Any] = {
        "name": ds.name,
        "rows": len(ds),
        "seconds": round(native.seconds, 3),
        "texts_per_s": round(len(ds) / native.seconds, 2) if native.seconds > 0 else None,
        "safe_rows": n_safe,
        "safe_flag_rate": safe_flagged,
        "unsafe_rows": n_unsafe,
        "unsafe_caught": unsafe_caught,
        "labels": _metrics(ds, native.probs, evaluation.labels, guard_labels, thresholds),
    }
    if evaluation.reference is not None:
        ref = evaluation.reference
        record["reference"] = {
            "seconds": round(ref.seconds, 3),
            "texts_per_s": round(len(ds) / ref.seconds, 2) if ref.seconds > 0 else None,
            "max_abs_prob_diff": float(np.max(np.abs(ref.probs - native.probs))),
            "labels": _metrics(ds, ref.probs, evaluation.labels, guard_labels, thresholds),
        }
    return record


def _calibrated_labels(
    evaluations: Sequence[Evaluation], guard_labels: Sequence[str], min_positives: int
) -> dict[int, tuple[npt.NDArray[np.float32], Probs]]:
    """Guard label index -> (targets, scores) over every row (of all data sets) that knows the label, for the
    labels with at least min_positives positive rows."""
    out = {}
    for g, label in enumerate(guard_labels):
        parts = [(e.dataset.targets([label])[:, 0], e.native.probs[:, g]) for e in evaluations if label in e.labels]
        if parts:
            y = np.concatenate([y for y, _ in parts])
            if int(np.sum(y == 1)) >= min_positives:
                out[g] = (y, np.concatenate([p for _, p in parts]))
    return out


def calibrate(
    evaluations: Sequence[Evaluation],
    guard_labels: Sequence[str],
    thresholds: npt.NDArray[np.float32],
    min_positives: int = MIN_CALIBRATION_POSITIVES,
) -> tuple[list[float], dict[str, float]]:
    """Per guard label, the F1-maximising threshold over every row (of all data sets) that knows the label;
    labels with fewer than min_positives positive rows keep their threshold. Returns all thresholds and the F1 of
    each calibrated one."""
    new = [float(t) for t in thresholds]
    f1: dict[str, float] = {}
    for g, (y, scores) in _calibrated_labels(evaluations, guard_labels, min_positives).items():
        best = best_f1_threshold(y, scores, min_positives)
        if best is not None:
            new[g], f1[guard_labels[g]] = best
    return new, f1


def calibrate_fpr(
    evaluations: Sequence[Evaluation],
    guard_labels: Sequence[str],
    thresholds: npt.NDArray[np.float32],
    target_fpr: float,
    min_positives: int = MIN_CALIBRATION_POSITIVES,
) -> tuple[list[float], dict[str, float]]:
    """Thresholds at a benign false-positive rate: of the safe rows (unsafe = 0) of all data sets pooled, at most
    `target_fpr` are flagged by any label, the operating point of a filter in front of every message.

    The budget of safe rows is split between `unsafe` (which may flag k_u of them on its own) and the calibrated
    categories (each may flag k_c on its own), choosing the split whose union stays within the target and catches
    the most harmful rows (unsafe = 1) by any label: the categories mostly flag what `unsafe` flags already, so an
    equal share for each would spend the budget on rows counted twice. Labels with fewer than min_positives
    positives keep their threshold, and the safe rows they flag count against the target. Returns all thresholds
    and each calibrated label's recall (share of its positive rows flagged) at its new threshold.
    """
    if not 0.0 <= target_fpr < 1.0:
        raise DataError(f"--target-fpr must be in [0, 1), got {target_fpr}")
    is_safe = [e.dataset.targets([UNSAFE])[:, 0] for e in evaluations]
    safe_probs = _stack([e.native.probs[y == 0] for e, y in zip(evaluations, is_safe, strict=True)], guard_labels)
    harmful_probs = _stack([e.native.probs[y == 1] for e, y in zip(evaluations, is_safe, strict=True)], guard_labels)
    if len(safe_probs) == 0:
        raise DataError("--calibrate fpr needs rows labelled safe (unsafe = 0) to measure false positives on")
    labels = _calibrated_labels(evaluations, guard_labels, min_positives)
    unsafe_index = list(guard_labels).index(UNSAFE) if UNSAFE in guard_labels else None
    budget = int(np.floor(target_fpr * len(safe_probs)))
    # ladder[g][k]: label g's threshold that flags at most k safe rows on its own
    ladder = {g: flag_thresholds(safe_probs[:, g], range(budget + 1)) for g in labels}

    def thresholds_for(k_unsafe: int, k_category: int) -> npt.NDArray[np.float64]:
        new = np.asarray(thresholds, dtype=np.float64).copy()
        for g in labels:
            new[g] = ladder[g][k_unsafe if g == unsafe_index else k_category]
        return new

    def n_flagged(new: npt.NDArray[np.float64], probs: Probs) -> int:
        return int((probs >= new[None, :]).any(axis=1).sum())

    if n_flagged(thresholds_for(0, 0), safe_probs) > budget:
        kept = [label for g, label in enumerate(guard_labels) if g not in labels]
        raise DataError(
            f"--calibrate fpr: the labels kept at their thresholds ({', '.join(kept)}) alone flag "
            f"{n_flagged(thresholds_for(0, 0), safe_probs)} of {len(safe_probs)} safe rows, over the target "
            f"{target_fpr}; lower --min-positives so that they are calibrated too, or raise --target-fpr"
        )
    best: tuple[int, int, int] | None = None  # (harmful rows caught, k_unsafe, k_category)
    for k_unsafe in range(budget + 1):
        # the union only grows with k_category: binary search for the largest within the budget
        if n_flagged(thresholds_for(k_unsafe, 0), safe_probs) > budget:
            break
        low, high = 0, budget
        while low < high:
            mid = (low + high + 1) // 2
            if n_flagged(thresholds_for(k_unsafe, mid), safe_probs) <= budget:
                low = mid
            else:
                high = mid - 1
        caught = n_flagged(thresholds_for(k_unsafe, low), harmful_probs)
        if best is None or (caught, k_unsafe) > best[:2]:
            best = (caught, k_unsafe, low)
    assert best is not None  # k_unsafe = 0 is within the budget, checked above
    new = thresholds_for(best[1], best[2])
    recall = {guard_labels[g]: float(np.mean(scores[y == 1] >= new[g])) for g, (y, scores) in labels.items()}
    return new.tolist(), recall


def _stack(parts: Sequence[Probs], guard_labels: Sequence[str]) -> Probs:
    return np.concatenate(parts) if parts else np.zeros((0, len(guard_labels)))


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """One table: per data set, a row per label and an `any label` row (R: harmful rows caught, FPR: safe rows
    flagged, i.e. over-flagging; texts/s: native speed)."""
    has_ref = any("reference" in d for d in report["datasets"])
    head = ["data", "label", "n", "pos", "AUPRC", "ROC-AUC", "thr", "P", "R", "F1", "FPR", "texts/s"]
    if has_ref:
        head.append("torch AUPRC")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in report["datasets"]:
        for label, m in d["labels"].items():
            if label != UNSAFE and not m["n_pos"]:
                continue  # a category no row of this set has: its false positives are in the any-label row
            row = [
                d["name"],
                label,
                _fmt(m["n"]),
                _fmt(m["n_pos"]),
                _fmt(m["auprc"]),
                _fmt(m["roc_auc"]),
                _fmt(m["threshold"], 2),
                _fmt(m["precision"]),
                _fmt(m["recall"]),
                _fmt(m["f1"]),
                _fmt(m["fpr"]),
                "",
            ]
            if has_ref:
                ref = d.get("reference", {}).get("labels", {}).get(label)
                row.append(_fmt(ref["auprc"]) if ref else "-")
            lines.append("| " + " | ".join(row) + " |")
        n_rows = d["safe_rows"] + d["unsafe_rows"]
        row = [d["name"], "**any label**", _fmt(n_rows), _fmt(d["unsafe_rows"]), "", "", "", "",
               _fmt(d["unsafe_caught"]), "", _fmt(d["safe_flag_rate"]), _fmt(d["texts_per_s"], 1)]
        if has_ref:
            row.append("")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_pr_curves(evaluations: Sequence[Evaluation], guard_labels: Sequence[str], path: Path) -> Path:
    """Precision-recall curves, one panel per data set, one line per label (dashed: the torch reference)."""
    # matplotlib is needed for this output only, and slow to import
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in evaluations if any((e.dataset.targets([label])[:, 0] == 1).any() for label in e.labels)]
    if not shown:
        raise ValueError("no data set has a positive row: nothing to plot")
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4.2), squeeze=False)
    for ax, e in zip(axes[0], shown, strict=True):
        for label in e.labels:
            y = e.dataset.targets([label])[:, 0]
            g = guard_labels.index(label)
            recall, precision = precision_recall_curve(y, e.native.probs[:, g])
            if recall.size == 0:
                continue
            (line,) = ax.step(recall, precision, where="post", label=label)
            if e.reference is not None:
                r_recall, r_precision = precision_recall_curve(y, e.reference.probs[:, g])
                ax.step(r_recall, r_precision, where="post", linestyle="--", color=line.get_color(), alpha=0.6)
        ax.set(title=e.dataset.name, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
