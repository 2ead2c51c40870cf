"""`loraguard-train`: LoRA + linear head on a frozen base, written as a checkpoint and a guard GGUF in one run.

Output directory:
    checkpoint/        the checkpoint of docs/guard-format.md
    guard.gguf         the guard, converted against the base GGUF below
    base-<type>.gguf   the base converted from an HF directory (absent when the base is already a GGUF)
    train.json         resolved config, labels, per-epoch dev AUPRC, final dev metrics
    state/state.pt     resumable training state (`--resume`)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from loraguard_convert import ConvertError, base_fingerprint, convert_base, convert_guard, describe_base
from loraguard_train.buried import buried_rows
from loraguard_train.config import ConfigError, TrainConfig, to_plain
from loraguard_train.data import DataError, Dataset, label_names, safe_rows_negative, split_dataset
from loraguard_train.inputs import collate, length_grouped_batches, logits_of, pad_id, tokenize
from loraguard_train.metrics import MIN_CALIBRATION_POSITIVES, best_f1_threshold, label_metrics, sigmoid
from loraguard_train.model import GuardModel, base_info_from_model, invocation_ids, load_tokenizer, save_checkpoint

STATE_FILE = Path("state") / "state.pt"
RUN_FILE = "train.json"
CHECKPOINT_DIR = "checkpoint"
GUARD_FILE = "guard.gguf"


@dataclass
class _Split:
    """A data set ready for the model: token ids and the [N, n_labels] targets (NaN = unknown)."""

    dataset: Dataset
    ids: list[list[int]]
    targets: npt.NDArray[np.float32]

    @property
    def weights(self) -> npt.NDArray[np.float32]:
        return np.full(len(self.ids), self.dataset.weight, dtype=np.float32)

    @property
    def name(self) -> str:
        return self.dataset.name


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"loraguard-train: {message}", file=sys.stderr, flush=True)


def load_splits(config: TrainConfig) -> tuple[list[Dataset], list[Dataset]]:
    """Training and dev sets: the [[dev]] files, or else a seeded split of each training file."""
    train_sets: list[Dataset] = []
    dev_sets = [spec.load(config.seed) for spec in config.dev]
    for spec in config.train:
        dataset = spec.load(config.seed)
        if config.dev:
            train_sets.append(dataset)
        else:
            train_part, dev_part = split_dataset(dataset, config.dev_fraction, config.seed)
            train_sets.append(train_part)
            dev_sets.append(dev_part)
    return train_sets, dev_sets


def labelled_splits(config: TrainConfig) -> tuple[list[Dataset], list[Dataset], list[str]]:
    """Training and dev sets with the labels the guard learns; training and `loraguard-eval --recipe` both read
    a recipe's data through this, so both see the same rows and labels."""
    train_sets, dev_sets = load_splits(config)
    labels = choose_labels(config, train_sets)
    if config.safe_rows_negative:
        train_sets = [safe_rows_negative(ds, labels) for ds in train_sets]
        dev_sets = [safe_rows_negative(ds, labels) for ds in dev_sets]
    return train_sets, dev_sets, labels


def choose_labels(config: TrainConfig, train_sets: list[Dataset]) -> list[str]:
    labels = config.labels or label_names(train_sets)
    if not labels or labels[0] != "unsafe":
        raise DataError(f"the training data has no 'unsafe' label (labels found: {labels})")
    merged = np.concatenate([ds.targets(labels) for ds in train_sets])
    unsafe = merged[:, 0]
    for j, label in enumerate(labels):
        known = merged[:, j][~np.isnan(merged[:, j])]
        # with safe_rows_negative, every safe row is a negative of the label
        has_negative = (known == 0).any() or (config.safe_rows_negative and (unsafe == 0).any())
        if known.size == 0 or not (known == 1).any() or not has_negative:
            raise DataError(
                f"label {label!r} needs positive and negative training examples (has {int(known.sum())} positive "
                f"of {known.size} known); drop it with labels = [...] in the config"
            )
    return labels


def resolve_base_gguf(config: TrainConfig, out: Path, resume: bool, quiet: bool) -> Path:
    """The base GGUF the guard is for: given, the base itself, or converted from the HF directory into `out`."""
    base = Path(config.base)
    if config.base_gguf is not None:
        return config.base_gguf
    if base.is_file():
        if base.suffix != ".gguf":
            raise ConfigError(f"base {base} is a file but not a .gguf; give a GGUF file or an HF model directory")
        return base
    target = out / f"base-{config.base_outtype}.gguf"
    if resume and target.is_file():
        return target
    _log(quiet, f"converting the base to {target} ({config.base_outtype})")
    return convert_base(base, target, config.base_outtype, quiet=True)


def _pos_weight(
    targets: npt.NDArray[np.float32], weights: npt.NDArray[np.float32], cap: float
) -> npt.NDArray[np.float32]:
    """Per label, the weighted count of negatives over that of positives, between 1 and `cap`."""
    w = weights[:, None]
    pos = np.sum(w * (targets == 1), axis=0)
    neg = np.sum(w * (targets == 0), axis=0)
    return np.clip(neg / np.maximum(pos, 1), 1.0, cap).astype(np.float32)


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None, row_weights: torch.Tensor
) -> torch.Tensor:
    """Weighted mean binary cross-entropy over the known (label, row) entries; unknown labels (NaN) add nothing."""
    known = (~torch.isnan(targets)) * row_weights[:, None]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.float(), torch.nan_to_num(targets, nan=0.0), pos_weight=pos_weight, reduction="none"
    )
    return (loss * known).sum() / known.sum().clamp(min=1e-12)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the device has fast bf16 (CUDA); CPUs train in fp32."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if config.precision == "bf16":
        if not cuda_bf16:
            raise ConfigError(f"precision bf16 needs a CUDA device with bf16 support, not {device}")
        return torch.bfloat16
    if config.precision == "auto" and cuda_bf16:
        return torch.bfloat16
    return None


def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(config.device)
    except RuntimeError as e:
        raise ConfigError(f"device {config.device!r}: {e}") from None


def _schedule(total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def evaluate_splits(
    model: GuardModel, splits: list[_Split], labels: list[str], pad: int, batch_size: int, amp: torch.dtype | None
) -> dict[str, npt.NDArray[np.float64]]:
    """Dev probabilities per split."""
    return {
        s.name: sigmoid(logits_of(model, s.ids, pad, batch_size, amp_dtype=amp, desc=f"eval {s.name}")) for s in splits
    }


def _auprc_table(
    splits: list[_Split], probs: dict[str, npt.NDArray[np.float64]], labels: list[str], thresholds: list[float]
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in splits:
        per_label = {}
        for j, label in enumerate(labels):
            if np.isnan(s.targets[:, j]).all():
                continue
            per_label[label] = label_metrics(s.targets[:, j], probs[s.name][:, j], thresholds[j]).as_dict()
        out[s.name] = per_label
    return out


def calibrated_thresholds(
    splits: list[_Split], probs: dict[str, npt.NDArray[np.float64]], labels: list[str], default: float
) -> list[float]:
    """Per label, the threshold that maximises F1 over all dev rows that know the label (labels with too few
    positives keep the default)."""
    targets = np.concatenate([s.targets for s in splits])
    scores = np.concatenate([probs[s.name] for s in splits])
    out = []
    for j in range(len(labels)):
        best = best_f1_threshold(targets[:, j], scores[:, j], MIN_CALIBRATION_POSITIVES)
        out.append(default if best is None else best[0])
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _Trainer:
    """One run's optimisation: the model, AdamW (one learning rate for the adapter, one for the head), the linear
    schedule, and where in the epochs the run stands, all of which a resumed run restores."""

    def __init__(
        self,
        config: TrainConfig,
        model: GuardModel,
        splits: list[_Split],
        pad: int,
        device: torch.device,
        amp: torch.dtype | None,
    ) -> None:
        self.config, self.model, self.pad, self.device, self.amp = config, model, pad, device, amp
        self.ids = [row for s in splits for row in s.ids]
        self.targets = np.concatenate([s.targets for s in splits])
        self.row_weights = np.concatenate([s.weights for s in splits])
        self.lengths = np.fromiter((len(r) for r in self.ids), dtype=np.int64, count=len(self.ids))
        pos_weight = _pos_weight(self.targets, self.row_weights, config.max_pos_weight)
        self.pos_weight = torch.from_numpy(pos_weight).to(device)
        lora = [p for p in model.peft.parameters() if p.requires_grad]
        head = list(model.head.parameters())
        self.params = [*lora, *head]
        self.optimizer = torch.optim.AdamW(
            [{"params": lora, "lr": config.lr_lora}, {"params": head, "lr": config.lr_head}],
            weight_decay=config.weight_decay,
        )
        # the number of batches does not depend on the shuffle
        n_batches = len(length_grouped_batches(self.lengths, config.batch_size, np.random.default_rng(0)))
        self.total_steps = math.ceil(n_batches / config.grad_accum) * config.epochs
        warmup = int(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(self.total_steps, warmup))
        self.step, self.epoch, self.batch = 0, 0, 0
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.resumable_view(),
            "trainable": {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.history = state["history"]

    def run_epoch(self, stop: int, save: Callable[[], None], quiet: bool) -> float | None:
        """Train on the rest of the current epoch, or until `stop` steps are done; the epoch's mean training
        loss, or None when it stopped mid-epoch. Batch order depends only on the run seed and the epoch, so a
        resumed epoch skips exactly the batches already done."""
        config, model = self.config, self.model
        batches = length_grouped_batches(
            self.lengths, config.batch_size, np.random.default_rng([config.run_seed, self.epoch])
        )
        running, seen = 0.0, 0
        bar = tqdm(
            total=len(batches),
            initial=self.batch,
            desc=f"epoch {self.epoch + 1}/{config.epochs}",
            unit="batch",
            disable=True if quiet else None,
        )
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        while self.batch < len(batches) and self.step < stop:
            idx = batches[self.batch]
            input_ids, mask = collate([self.ids[i] for i in idx], self.pad)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = model(input_ids.to(self.device), mask.to(self.device))
            weight = self.pos_weight if config.class_weights else None
            targets = torch.from_numpy(self.targets[idx]).to(self.device)
            loss = masked_bce(logits, targets, weight, torch.from_numpy(self.row_weights[idx]).to(self.device))
            (loss / config.grad_accum).backward()
            running, seen = running + float(loss.detach()), seen + 1
            self.batch += 1
            bar.update()
            if self.batch % config.grad_accum == 0 or self.batch == len(batches):
                torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                bar.set_postfix(loss=f"{running / seen:.4f}")
                if config.save_steps and self.step % config.save_steps == 0:
                    save()
        bar.close()
        if self.batch < len(batches):
            return None
        self.epoch, self.batch = self.epoch + 1, 0
        return running / max(seen, 1)


def _open_out(config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Check the output directory against --resume; the saved state when resuming."""
    state_path = config.out / STATE_FILE
    if state_path.exists() and not resume:
        raise ConfigError(
            f"{config.out} holds a training run already: pass --resume to continue it, or use another --out"
        )
    if not resume:
        config.out.mkdir(parents=True, exist_ok=True)
        return None
    if not state_path.is_file():
        raise ConfigError(f"nothing to resume: {state_path} does not exist")
    state: dict[str, Any] = torch.load(state_path, map_location="cpu", weights_only=True)
    # a run saved before a setting existed (activation, invocation) ran with that setting's default
    defaults = {f.name: to_plain(f.default) for f in dataclasses.fields(TrainConfig) if f.default is not MISSING}
    saved = {**defaults, **state["config"]}
    changed = sorted(k for k, v in config.resumable_view().items() if saved.get(k) != v)
    if changed:
        raise ConfigError(f"cannot resume {config.out}: the config differs from the saved run in {', '.join(changed)}")
    return state


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_model(config: TrainConfig, n_labels: int) -> tuple[GuardModel, Any]:
    """The fresh guard a config trains (adapter, activation, invocation) on its base, and the base's tokenizer."""
    # the base's own loading errors (missing weights, unsupported GGUF architecture) are user errors here
    try:
        tokenizer = load_tokenizer(config.base)
        invocation = None
        if config.activation == "alora":
            assert config.invocation is not None
            invocation = invocation_ids(tokenizer, config.invocation)
        model = GuardModel.from_pretrained(
            config.base,
            n_labels=n_labels,
            pooling=config.pooling,
            r=config.rank,
            alpha=config.alpha,
            dropout=config.dropout,
            target_modules=config.targets,
            invocation=invocation,
        )
        return model, tokenizer
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load base {config.base}: {e}") from e


def train(config: TrainConfig, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run training as configured; returns what train.json records."""
    started = time.monotonic()
    previous = _open_out(config, resume)
    train_sets, dev_sets, labels = labelled_splits(config)
    base_gguf = resolve_base_gguf(config, config.out, resume, quiet)
    fingerprint = base_fingerprint(base_gguf)
    device = _device(config)
    amp = _amp_dtype(config, device)

    torch.manual_seed(config.run_seed)
    _log(quiet, f"loading {config.base}")
    model, tokenizer = load_model(config, len(labels))
    model.to(device)
    pad = pad_id(tokenizer)

    def prepare(ds: Dataset, max_length: int = config.max_length) -> _Split:
        ids = tokenize(
            tokenizer,
            ds.prompts,
            ds.responses,
            config.template_prompt,
            config.template_pair,
            config.parse_special,
            max_length,
            invocation=model.invocation or (),
        )
        return _Split(ds, ids, ds.targets(labels))

    train_splits = [prepare(ds) for ds in train_sets]
    if config.buried_rows:
        buried = buried_rows(
            train_sets,
            config.buried_rows,
            config.buried_max_length,
            lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            config.seed,
        )
        train_splits.append(prepare(buried, config.buried_max_length))
    dev_splits = [prepare(ds) for ds in dev_sets]
    trainer = _Trainer(config, model, train_splits, pad, device, amp)
    weights = [round(float(w), 2) for w in trainer.pos_weight]
    _log(
        quiet,
        f"{len(trainer.ids)} training rows, {sum(len(s.ids) for s in dev_splits)} dev rows, labels {labels}"
        + (f", positive-class weights {weights}" if config.class_weights else ""),
    )
    if previous is not None:
        trainer.load_state_dict(previous)
        _log(quiet, f"resuming at epoch {trainer.epoch + 1}, step {trainer.step} of {trainer.total_steps}")

    def save() -> None:
        _save_state(config.out / STATE_FILE, trainer.state_dict())

    def dev_probs() -> dict[str, npt.NDArray[np.float64]]:
        return evaluate_splits(model, dev_splits, labels, pad, config.eval_batch_size, amp)

    stop = config.max_steps if config.max_steps is not None else trainer.total_steps
    probs: dict[str, npt.NDArray[np.float64]] | None = None
    while trainer.epoch < config.epochs and trainer.step < stop:
        loss = trainer.run_epoch(stop, save, quiet)
        if loss is None:
            break  # max_steps reached mid-epoch
        probs = dev_probs()
        table = _auprc_table(dev_splits, probs, labels, [config.threshold] * len(labels))
        auprc = {name: {label: m["auprc"] for label, m in per.items()} for name, per in table.items()}
        trainer.history.append({"epoch": trainer.epoch, "step": trainer.step, "train_loss": loss, "dev_auprc": auprc})
        _log(quiet, f"epoch {trainer.epoch}: train loss {loss:.4f}, dev AUPRC {_brief(auprc)}")
        save()
    if probs is None or trainer.batch != 0:
        save()
        probs = dev_probs()

    thresholds = [config.threshold] * len(labels)
    if config.calibrate:
        thresholds = calibrated_thresholds(dev_splits, probs, labels, config.threshold)
    final = _auprc_table(dev_splits, probs, labels, thresholds)

    model.eval()
    model.float()
    base_name = config.base_name or describe_base(base_gguf)["name"] or None
    ckpt = save_checkpoint(
        model,
        config.out / CHECKPOINT_DIR,
        labels=labels,
        thresholds=thresholds,
        template_prompt=config.template_prompt,
        template_pair=config.template_pair,
        parse_special=config.parse_special,
        pooling=model.pooling,
        base_info=base_info_from_model(model, name=base_name, fingerprint=fingerprint),
        invocation=config.invocation,
    )
    guard_path = config.out / GUARD_FILE
    try:
        guard = convert_guard(ckpt, guard_path, base_gguf, outtype=config.guard_outtype, quiet=True)
    except ConvertError as e:
        # the hours of training are in the checkpoint and the state: say so, and how to finish without retraining
        raise ConvertError(
            f"training finished and its checkpoint is saved in {ckpt}, but writing {guard_path} failed: {e}\n"
            "Once that is fixed, run the same command with --resume (it re-scores the dev data and writes the guard "
            f"without training again), or convert the checkpoint alone: loraguard-convert guard {ckpt} {guard_path} "
            f"--base {base_gguf} --outtype {config.guard_outtype}"
        ) from e
    record = {
        "config": to_plain(config),
        "base": str(Path(config.base).resolve()),
        "base_gguf": str(Path(base_gguf).resolve()),
        "fingerprint": fingerprint,
        "checkpoint": str(ckpt),
        "guard": str(guard),
        "labels": labels,
        "thresholds": dict(zip(labels, thresholds, strict=True)),
        "train_rows": len(trainer.ids),
        "dev_rows": {s.name: len(s.ids) for s in dev_splits},
        "steps": trainer.step,
        "trainable_params": sum(p.numel() for p in trainer.params),
        "history": trainer.history,
        "dev": final,
        "seconds": round(time.monotonic() - started, 1),
    }
    _write_json(config.out / RUN_FILE, record)
    final_auprc = {name: {label: m["auprc"] for label, m in per.items()} for name, per in final.items()}
    _log(quiet, f"wrote {ckpt} and {guard}; dev AUPRC {_brief(final_auprc)}")
    return record


def _brief(auprc: dict[str, dict[str, float | None]]) -> str:
    parts = []
    for name, per in auprc.items():
        values = " ".join(f"{label} {'-' if v is None else f'{v:.3f}'}" for label, v in per.items())
        parts.append(f"[{name}] {values}")
    return "; ".join(parts) or "(no dev data)"
