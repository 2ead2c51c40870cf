"""Compare guards trained on differently capped data recipes on rows none of them trained on.

A recipe's per-file `limit` is a seeded subset taken before the dev split, so raising a cap moves rows between
the train and dev sides: the new recipe's dev split holds rows the old recipe trained on. This scores every guard
on the NEW recipe's dev rows minus the OLD recipe's training rows (rows unseen by both), and reports the unsafe
AUPRC per file with both classes and the share of harmful rows caught when 5 % of the benign ones are flagged.
With --bootstrap N, each later guard's AUPRC also carries the 90 % interval of its difference to the first guard
over N paired resamples of the file's rows: a difference whose interval spans 0 is within the dev rows' noise.

    .venv/bin/python scripts/compare_unseen.py recipes/minilm-permissive.toml recipes/minilm-wide.toml \
        -m minilm python/loraguard_cpp/guards/minilm.gguf runs/minilm-wide/guard.gguf
"""

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from loraguard_cpp import Guard
from loraguard_train.config import build_config, read_recipe
from loraguard_train.data import Dataset, Record
from loraguard_train.metrics import average_precision, flag_threshold
from loraguard_train.train import labelled_splits


def _splits(recipe: Path) -> dict[str, tuple[Dataset, Dataset]]:
    """Each file's (train, dev) sets, by file, exactly as loraguard-train and `loraguard-eval --recipe` read them."""
    train_sets, dev_sets, _ = labelled_splits(build_config(read_recipe(recipe), recipe.resolve().parent))
    return {train.name: (train, dev) for train, dev in zip(train_sets, dev_sets, strict=True)}


def _unseen_rows(old_recipe: Path, new_recipe: Path) -> dict[str, list[Record]]:
    old, new = _splits(old_recipe), _splits(new_recipe)
    rows = {}
    for name, (_, dev) in new.items():
        seen = {(r.prompt, r.response) for r in old[name][0].records} if name in old else set()
        rows[name] = [r for r in dev.records if (r.prompt, r.response) not in seen]
    return rows


def _difference_interval(
    y: npt.NDArray[np.float64], first: npt.NDArray[np.float32], other: npt.NDArray[np.float32], n: int
) -> tuple[float, float]:
    """The 5th and 95th percentiles of AUPRC(other) - AUPRC(first) over n paired resamples of the rows (each
    resample redrawn within each class, so every one has both)."""
    rng = np.random.default_rng(0)
    by_class = [np.flatnonzero(y == c) for c in (0.0, 1.0)]
    differences = []
    for _ in range(n):
        pick = np.concatenate([rng.choice(rows, len(rows)) for rows in by_class])
        a, b = average_precision(y[pick], other[pick]), average_precision(y[pick], first[pick])
        assert a is not None and b is not None
        differences.append(a - b)
    low, high = np.percentile(differences, [5, 95])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_recipe", type=Path)
    parser.add_argument("new_recipe", type=Path)
    parser.add_argument("guards", nargs="+", metavar="GUARD.gguf")
    parser.add_argument("-m", "--model", required=True, help="base model (name or GGUF) the guards run on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="90 %% interval of each guard's AUPRC difference to the first over N paired resamples")
    args = parser.parse_args()

    rows = {name: rs for name, rs in _unseen_rows(args.old_recipe, args.new_recipe).items() if rs}
    labels = {name: np.array([r.labels.get("unsafe") for r in rs], dtype=float) for name, rs in rows.items()}
    scores: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for guard_path in args.guards:
        with Guard(args.model, guard_path, n_threads=args.threads) as guard:
            scores[guard_path] = {
                name: guard.classify_batch([r.prompt for r in rs], [r.response for r in rs])[:, 0]
                for name, rs in rows.items()
            }

    print("| file | rows | harmful | " + " | ".join(args.guards) + " |")
    print("| --- | --- | --- |" + " --- |" * len(args.guards))
    aps: dict[str, list[float]] = {g: [] for g in args.guards}
    for name, y in labels.items():
        if np.nanmin(y) == np.nanmax(y):
            continue
        known = ~np.isnan(y)
        row = []
        for g in args.guards:
            ap = average_precision(y, scores[g][name])
            assert ap is not None
            aps[g].append(ap)
            row.append(f"{ap:.3f}")
            if args.bootstrap and g != args.guards[0]:
                low, high = _difference_interval(
                    y[known], scores[args.guards[0]][name][known], scores[g][name][known], args.bootstrap
                )
                row[-1] += f" ({low:+.3f} to {high:+.3f})"
        print(f"| {name} | {len(y)} | {int(np.nansum(y))} | " + " | ".join(row) + " |")
    print("| mean AUPRC | | | " + " | ".join(f"{np.mean(aps[g]):.3f}" for g in args.guards) + " |")
    y_all = np.concatenate(list(labels.values()))
    caught = []
    for g in args.guards:
        s = np.concatenate([scores[g][name] for name in labels])
        benign = s[y_all == 0]
        # the operating point loraguard-eval --calibrate fpr sets: at most floor(5 % of them) benign rows flagged
        threshold = flag_threshold(benign, int(np.floor(0.05 * len(benign))))
        caught.append(f"{100 * np.mean(s[y_all == 1] >= threshold):.1f} %")
    n_benign, n_harmful = int((y_all == 0).sum()), int((y_all == 1).sum())
    print(f"| harmful caught at 5 % of benign flagged (`unsafe`; {n_benign} benign, {n_harmful} harmful) | | | "
          + " | ".join(caught) + " |")


if __name__ == "__main__":
    main()
