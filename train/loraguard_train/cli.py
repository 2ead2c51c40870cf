"""Command lines: `loraguard-train` and `loraguard-eval`. User mistakes exit 2 with one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from transformers.utils import logging

from loraguard_convert import ConvertError, set_thresholds
from loraguard_convert.base import OUTTYPES
from loraguard_convert.guard import DEFAULT_GUARD_OUTTYPE
from loraguard_cpp import LoraGuardError, registry
from loraguard_train.config import (
    PACKAGE_PREFIX,
    ConfigError,
    DataSpec,
    build_config,
    read_recipe,
)
from loraguard_train.data import FORMATS, TARGETS, DataError, Dataset, sample, split_dataset
from loraguard_train.evaluate import (
    MIN_CALIBRATION_POSITIVES,
    Evaluation,
    Reference,
    calibrate,
    calibrate_fpr,
    markdown,
    plot_pr_curves,
    reference_base,
    score_native,
    summarize,
)
from loraguard_train.train import labelled_splits, train

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    # one line on every error path, usage included, so scripts can show it as is
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading data files (loraguard_train.data)")
    group.add_argument("--format", choices=FORMATS, help="file format (default: auto, from the columns)")
    group.add_argument("--target", choices=TARGETS, help="what the guard reads (default: pair)")
    group.add_argument("--text-column", help="generic files: the text column")
    group.add_argument(
        "--label-column",
        action="append",
        metavar="COL[:LABEL]",
        help="generic files: a 0/1 label column; the first is 'unsafe' unless renamed (repeatable)",
    )
    group.add_argument("--response-column", help="generic files: the response column")
    group.add_argument("--limit", type=int, metavar="N", help="a seeded random subset of N rows per file")


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The per-file options given on the command line, as DataSpec fields."""
    options = {
        "format": args.format,
        "target": args.target,
        "text_column": args.text_column,
        "label_columns": args.label_column,
        "response_column": args.response_column,
        "limit": args.limit,
    }
    return {k: v for k, v in options.items() if v is not None}


def _run(prog: str, body: Callable[[], int]) -> int:
    try:
        _quiet_libraries()
        return body()
    except (DataError, ConfigError, ConvertError, LoraGuardError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress: transformers' load reports (BERT's unused pooler) and PEFT's use
    of a deprecated transformers API say nothing a user can act on."""
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ---------------------------------------------------------------------------------------------------------------
# loraguard-train

# options that set the config key of the same name
_TRAIN_OVERRIDES = (
    "base",
    "template_prompt",
    "template_pair",
    "out",
    "labels",
    "epochs",
    "batch_size",
    "grad_accum",
    "lr_lora",
    "lr_head",
    "rank",
    "alpha",
    "dropout",
    "targets",
    "activation",
    "invocation",
    "max_length",
    "seed",
    "train_seed",
    "max_steps",
    "dev_fraction",
    "base_gguf",
    "base_outtype",
    "guard_outtype",
    "precision",
    "device",
    "save_steps",
    "buried_rows",
    "buried_max_length",
    "pooling",
)
_PATH_OPTIONS = ("base", "out", "base_gguf")


def _train_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="loraguard-train",
        description="Train a guard (LoRA + linear head on a frozen base) and write its checkpoint and guard GGUF.",
    )
    p.add_argument("--config", type=Path, metavar="RECIPE.toml", help="recipe; the options below override it")
    p.add_argument("--base", help="HF model directory, GGUF file, package:NAME/path, or a named base (smollm2, minilm)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--train", type=Path, action="append", metavar="FILE", help="training data (repeatable)")
    p.add_argument("--dev", type=Path, action="append", metavar="FILE", help="dev data (default: split --train)")
    p.add_argument("--dev-fraction", type=float, help="share of each training file held out when no --dev")
    p.add_argument("--labels", nargs="+", help="labels to train, 'unsafe' first (default: all in the data)")
    _add_data_options(p)
    h = p.add_argument_group("model and optimisation")
    h.add_argument("--rank", type=int)
    h.add_argument("--alpha", type=float)
    h.add_argument("--dropout", type=float)
    h.add_argument("--targets", nargs="+", metavar="MODULE", help="LoRA target modules (default: q/v projections)")
    h.add_argument("--activation", choices=("lora", "alora"),
                   help="alora: the adapter applies only from --invocation on (default lora: every token)")
    h.add_argument("--invocation", help="aLoRA invocation text appended to every input (special-token text parsed)")
    h.add_argument(
        "--pooling",
        choices=("last", "mean", "cls"),
        help="hidden state the head reads (default: last token for decoders, mean for encoders)",
    )
    h.add_argument("--epochs", type=int)
    h.add_argument("--batch-size", type=int)
    h.add_argument("--grad-accum", type=int)
    h.add_argument("--lr-lora", type=float)
    h.add_argument("--lr-head", type=float)
    h.add_argument("--max-length", type=int, help="tokens per input; longer inputs keep their end")
    h.add_argument(
        "--buried-rows",
        type=int,
        help="extra training rows burying a prompt in safe filler (a harmful request in a long benign text)",
    )
    h.add_argument("--buried-max-length", type=int, help="tokens per buried row (default 384)")
    h.add_argument("--seed", type=int, help="seed of the caps and dev splits, and of training unless --train-seed")
    h.add_argument("--train-seed", type=int,
                   help="seed of the adapter's init, dropout and batch order only (same rows, same dev split)")
    h.add_argument("--max-steps", type=int, help="stop after N optimizer steps (smoke runs)")
    h.add_argument("--save-steps", type=int, help="save the resumable state every N steps too")
    h.add_argument("--precision", choices=("auto", "fp32", "bf16"))
    h.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    h.add_argument("--calibrate", action="store_true", help="F1-maximising thresholds on the dev data")
    h.add_argument("--template-prompt", help="input template of a prompt, with {prompt} (default 'user: {prompt}')")
    h.add_argument("--template-pair", help="input template of a prompt and response, with {prompt} and {response}")
    h.add_argument("--parse-special", action="store_true",
                   help="special-token text in the templates (e.g. <|im_start|>) becomes those tokens")
    h.add_argument("--base-gguf", help="the base GGUF the guard is for (default: converted from --base)")
    h.add_argument("--base-outtype", choices=OUTTYPES, help="type of the converted base")
    h.add_argument("--guard-outtype", choices=OUTTYPES,
                   help=f"LoRA tensor type of the guard file (default {DEFAULT_GUARD_OUTTYPE}; f16 halves it)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    args = _train_parser().parse_args(argv)

    def body() -> int:
        data: dict[str, Any] = {}
        root = Path.cwd()
        if args.config is not None:
            data = read_recipe(args.config)
            root = args.config.resolve().parent
        for key in _TRAIN_OVERRIDES:
            value = getattr(args, key)
            if value is not None:
                # command-line paths are relative to the working directory, recipe paths to the recipe
                is_path = key in _PATH_OPTIONS and not str(value).startswith(PACKAGE_PREFIX)
                if key == "base" and registry.is_name(str(value), registry.BASES):
                    is_path = False
                data[key] = str(Path(value).resolve()) if is_path else value
        if args.calibrate:
            data["calibrate"] = True
        if args.parse_special:
            data["parse_special"] = True
        options = _data_options(args)
        if options and not (args.train or args.dev):
            raise ConfigError("--format, --target, column options and --limit apply to --train/--dev files only")
        for key in ("train", "dev"):
            paths = getattr(args, key)
            if paths:
                data[key] = [{"path": str(path.resolve()), **options} for path in paths]
        if "base" not in data or "out" not in data:
            raise ConfigError("need a base model and an output directory: --base and --out, or a --config recipe")
        train(build_config(data, root), resume=args.resume, quiet=args.quiet)
        return 0

    return _run("loraguard-train", body)


# ---------------------------------------------------------------------------------------------------------------
# loraguard-eval


def _eval_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="loraguard-eval",
        description="Evaluate a guard on the native runtime: AUPRC, ROC-AUC, P/R/F1 at its thresholds, "
        "over-flagging of safe rows, speed.",
    )
    p.add_argument("data", nargs="*", type=Path, metavar="DATA", help="labelled data files")
    p.add_argument(
        "--recipe",
        type=Path,
        metavar="RECIPE.toml",
        help="also score a training recipe's data as loraguard-train splits it (its caps, filters and label "
        "mappings; give --split dev or train)",
    )
    p.add_argument("-m", "--model", metavar="BASE.gguf",
                   help="base model GGUF or a named base (smollm2, minilm); default: the named guard's base")
    p.add_argument("-g", "--guard", required=True, metavar="GUARD.gguf", help="guard GGUF or a named guard")
    _add_data_options(p)
    s = p.add_argument_group("rows")
    s.add_argument(
        "--split",
        choices=("all", "train", "dev"),
        default="all",
        help="score a seeded split of each file, as loraguard-train makes it (default: all rows)",
    )
    s.add_argument("--dev-fraction", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown tables")
    o.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON report to FILE")
    o.add_argument("--plot", type=Path, metavar="FILE.png", help="precision-recall curves")
    r = p.add_argument_group("reference and calibration")
    r.add_argument("--reference", type=Path, metavar="CKPT_DIR", help="also score with the checkpoint's torch model")
    r.add_argument(
        "--reference-base",
        type=Path,
        metavar="SRC",
        help="HF directory or GGUF the checkpoint loads on (default: from train.json beside it)",
    )
    r.add_argument(
        "--calibrate",
        nargs="?",
        const="f1",
        choices=("f1", "fpr"),
        help="write thresholds chosen on these rows (e.g. --split dev) into the guard GGUF: f1 (the default) "
        "maximises each label's F1, fpr flags at most --target-fpr of the safe rows on any label",
    )
    r.add_argument(
        "--target-fpr",
        type=float,
        default=0.05,
        metavar="RATE",
        help="--calibrate fpr: the share of safe rows the guard may flag (default 0.05)",
    )
    r.add_argument(
        "--min-positives",
        type=int,
        default=MIN_CALIBRATION_POSITIVES,
        metavar="N",
        help=f"labels with fewer positive rows keep their threshold (default {MIN_CALIBRATION_POSITIVES})",
    )
    n = p.add_argument_group("runtime")
    n.add_argument("--threads", type=int, help="CPU threads (default: free cores)")
    n.add_argument("--n-ctx", type=int, default=512, help="guard context (tokens per window)")
    n.add_argument("--overflow", choices=("windows", "keep_end"), default="windows",
                   help="inputs longer than --n-ctx: the runtime's default, windows (max per label), or only their "
                   "end (as training cuts them; needed by --reference, whose torch model reads one cut per row)")
    n.add_argument("--whole", action="store_true",
                   help="read each prompt whole, not also line by line (Guard(read_lines=False); the runtime's "
                   "default reads a prompt's lines alone too, as the shipped thresholds were calibrated)")
    n.add_argument("--batch-size", type=int, default=64, help="texts per native call")
    n.add_argument("--exact", action="store_true", help="F32 K/V cache, no flash attention")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def _recipe_sets(recipe: Path, split: str, limit: int | None) -> list[Dataset]:
    """A recipe's train or dev sets, as loraguard-train builds them (optionally a seeded subset of each)."""
    if split == "all":
        raise DataError("--recipe scores the recipe's train or dev split: add --split dev (or --split train)")
    config = build_config(read_recipe(recipe), recipe.resolve().parent)
    train_sets, dev_sets, _ = labelled_splits(config)
    sets = dev_sets if split == "dev" else train_sets
    return sets if limit is None else [sample(ds, limit, config.seed) for ds in sets]


def eval_main(argv: Sequence[str] | None = None) -> int:
    args = _eval_parser().parse_args(argv)

    def body() -> int:
        if args.batch_size < 1 or args.n_ctx < 8:
            raise DataError("--batch-size must be at least 1 and --n-ctx at least 8")
        if not args.data and args.recipe is None:
            raise DataError("nothing to score: give data files, or --recipe RECIPE.toml --split dev")
        datasets = []
        for path in args.data:
            dataset = DataSpec(path=path, **_data_options(args)).load(args.seed)
            if args.split != "all":
                train_part, dev_part = split_dataset(dataset, args.dev_fraction, args.seed)
                dataset = dev_part if args.split == "dev" else train_part
            datasets.append(dataset)
        if args.recipe is not None:
            datasets.extend(_recipe_sets(args.recipe, args.split, args.limit))
        reference = None
        if args.reference is not None:
            if args.overflow != "keep_end":
                raise DataError("--reference scores each row's end in torch, as training cuts it: add --overflow "
                                "keep_end so that the native runtime reads the same tokens")
            base = reference_base(args.reference, args.reference_base)
            reference = Reference.load(args.reference, base, args.n_ctx, read_lines=not args.whole)

        evaluations: list[Evaluation] = []
        from loraguard_cpp import Guard  # the native runtime loads only for scoring, never for training

        with Guard(args.model, args.guard, n_threads=args.threads, n_ctx=args.n_ctx, overflow=args.overflow,
                   exact=args.exact, read_lines=not args.whole) as guard:
            model_path, guard_path = guard.model_path, guard.guard_path
            labels, thresholds = list(guard.labels), guard.thresholds.copy()
            if reference is not None and reference.guard_config["labels"] != labels:
                raise DataError(
                    f"--reference {args.reference} has labels {reference.guard_config['labels']}, the guard {labels}"
                )
            for dataset in datasets:
                shared = [label for label in labels if label in dataset.labels]
                native = score_native(guard, dataset, args.batch_size, quiet=args.quiet)
                ref = None if reference is None else reference.score(dataset, args.batch_size, quiet=args.quiet)
                evaluations.append(Evaluation(dataset, native, ref, shared))

        report: dict[str, Any] = {
            "guard": str(guard_path),
            "model": str(model_path),
            "labels": labels,
            "thresholds": dict(zip(labels, thresholds.tolist(), strict=True)),
            "n_ctx": args.n_ctx,
            "overflow": args.overflow,
            "split": args.split,
            "datasets": [summarize(e, labels, thresholds) for e in evaluations],
        }
        if args.calibrate:
            if args.calibrate == "fpr":
                new, fitted = calibrate_fpr(evaluations, labels, thresholds, args.target_fpr, args.min_positives)
                calibration = {"mode": "fpr", "target_fpr": args.target_fpr, "recall": fitted}
            else:
                new, fitted = calibrate(evaluations, labels, thresholds, args.min_positives)
                calibration = {"mode": "f1", "f1": fitted}
            if not fitted:
                raise DataError(
                    f"--calibrate: no guard label has {args.min_positives} positive rows in these data sets; "
                    "add labelled data or lower --min-positives"
                )
            set_thresholds(guard_path, new)
            # the report's thresholds and P/R/F1 are those of the guard file as it is now
            report["calibration"] = {"previous": report["thresholds"], **calibration, "written": str(guard_path)}
            report["thresholds"] = dict(zip(labels, new, strict=True))
            report["datasets"] = [summarize(e, labels, np.asarray(new, dtype=np.float32)) for e in evaluations]
        if args.plot is not None:
            plot_pr_curves(evaluations, labels, args.plot)
        text = json.dumps(report, indent=2)
        if args.json_out is not None:
            args.json_out.write_text(text + "\n", encoding="utf-8")
        print(text if args.json else markdown(report))
        if args.calibrate and not args.json:
            print(
                "\ncalibrated thresholds written to "
                + str(guard_path)
                + ": "
                + ", ".join(f"{k} {v:.4f}" for k, v in report["thresholds"].items())
            )
        return 0

    return _run("loraguard-eval", body)
