"""Training an aLoRA guard: a step that reads the text before the invocation once without autograd and then the
invocation on its cache (`GuardModel.features`, what `loraguard-train` runs) against the one-pass step that runs
the whole input with the adapter masked by offsets (`GuardModel.hidden`, PEFT's own way and the reference).

    .venv/bin/python -m bench.alora_train [--recipe recipes/smollm2-alora.toml] [--batches 12] [--threads 2]
                                          [--out bench/results]

Real batches of the recipe's training rows (its data, template, invocation, cut and length grouping, seed 0) on its
base, the adapter its recipe builds with random non-zero B (speed does not depend on the values). Each batch is
one training step's forward, loss and backward, run both ways back to back in alternating order. Writes
OUT/<date>-<host>-alora-train.{json,md}. Run it on a quiet machine: the report records the load average.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.alora_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", type=Path, default=REPO / "recipes" / "smollm2-alora.toml")
    p.add_argument("--batches", type=int, default=12, help="training batches timed (each both ways)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from loraguard_train.config import build_config, read_recipe
    from loraguard_train.inputs import collate, length_grouped_batches, pad_id, tokenize
    from loraguard_train.train import labelled_splits, load_model

    torch.set_num_threads(args.threads)
    config = build_config(read_recipe(args.recipe), args.recipe.resolve().parent)
    if config.activation != "alora":
        raise SystemExit(f"{args.recipe} is not an aLoRA recipe (activation = 'alora')")
    train_sets, _, labels = labelled_splits(config)
    torch.manual_seed(0)
    model, tokenizer = load_model(config, len(labels))
    invocation = model.invocation
    assert invocation is not None
    with torch.no_grad():
        for name, param in model.peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    model.train()
    ids: list[list[int]] = []
    targets: list[Any] = []
    for ds in train_sets:
        ids += tokenize(tokenizer, ds.prompts, ds.responses, config.template_prompt, config.template_pair,
                        config.parse_special, config.max_length, invocation=invocation)
        targets.append(ds.targets(labels))
    target = np.nan_to_num(np.concatenate(targets)).astype(np.float32)
    lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
    batches = length_grouped_batches(lengths, config.batch_size, np.random.default_rng(0))[: args.batches]

    def one_pass(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.head(model.pool(model.hidden(input_ids, mask), mask))

    ways: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"two-pass": model, "one-pass": one_pass}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    tokens = 0
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    for k, idx in enumerate(batches):
        input_ids, mask = collate([ids[i] for i in idx], pad_id(tokenizer))
        tokens += int(mask.sum())
        y = torch.from_numpy(target[idx])
        for name in list(ways)[:: 1 if k % 2 else -1]:
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            F.binary_cross_entropy_with_logits(ways[name](input_ids, mask), y).backward()
            seconds[name].append(time.perf_counter() - t)
    steps_per_epoch = -(-len(ids) // config.batch_size)
    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0],
                    "torch": torch.__version__},
        "recipe": str(args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe),
        "settings": {"threads": args.threads, "batches": len(batches), "batch_size": config.batch_size,
                     "max_length": config.max_length, "rank": config.rank,
                     "targets": sorted(model.peft.peft_config[model.peft.active_adapter].target_modules),
                     "invocation_tokens": len(invocation), "mean_tokens_per_row": tokens / sum(map(len, batches))},
        "ways": {
            name: {"median_step_s": statistics.median(s), "total_s": sum(s),
                   "epoch_estimate_min": statistics.mean(s) * steps_per_epoch / 60}
            for name, s in seconds.items()
        },
        "wall_s": time.perf_counter() - started,
    }
    result["two_pass_over_one_pass"] = result["ways"]["two-pass"]["total_s"] / result["ways"]["one-pass"]["total_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{datetime.date.today().isoformat()}-{platform.node()}-alora-train"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = "\n".join(
        f"| {name} | {w['median_step_s']:.2f} | {w['total_s']:.1f} | {w['epoch_estimate_min']:.0f} |"
        for name, w in result["ways"].items()
    )
    s = result["settings"]
    stem.with_suffix(".md").write_text(
        f"# aLoRA training step, two-pass against one-pass ({result['date']})\n\n"
        f"`{result['recipe']}`: {s['batches']} batches of {s['batch_size']} rows, {s['mean_tokens_per_row']:.0f} "
        f"tokens a row on average, rank {s['rank']}, {len(s['targets'])} target modules, {args.threads} torch "
        f"threads; load average {load_start:.2f} at the start, {result['machine']['loadavg_end']:.2f} at the end.\n\n"
        "| way | median step (s) | total (s) | one epoch (min, estimated) |\n| --- | --- | --- | --- |\n"
        f"{rows}\n\ntwo-pass / one-pass time: {result['two_pass_over_one_pass']:.2f}\n",
        encoding="utf-8",
    )
    print(stem.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
