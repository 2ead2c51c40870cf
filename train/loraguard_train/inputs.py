"""Token ids for guard inputs, cut and batched the way the native runtime sees them.

Long inputs keep the whole template (framing, turn markers, the reply's opening) and the *last* tokens of the prompt and
response, as the runtime's default `keep_end` overflow policy does: the end decides a decoder's last hidden state, and
training on the same view the runtime scores keeps the two consistent. Texts are read as the runtime reads them by
default: folded (`loraguard_cpp.fold_text`). Training reads that one reading; the runtime also scores a text holding
base64, hex, Morse, a letter cipher or leetspeak as `loraguard_cpp.decoded_reading` gives it, and a prompt's lines alone
(`loraguard_cpp.text_lines`), and keeps the highest score; evaluation's torch reference does the same
(`second_readings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from loraguard_train.template import keep_end, segments, token_ids

if TYPE_CHECKING:
    from loraguard_train.model import GuardModel

IntArray = npt.NDArray[np.int64]


def read_text(text: str) -> str:
    """A prompt or response as the runtime's guard reads it (text_form "folded")."""
    from loraguard_cpp import fold_text

    return fold_text(text)


def second_readings(
    prompts: Sequence[str], responses: Sequence[str | None] | None, read_lines: bool = True
) -> tuple[list[int], list[str], list[str | None] | None]:
    """The runtime's other readings of rows, beside each row as written (folded): base64 and Morse decoded,
    letter ciphers read back and leetspeak read as letters (`loraguard_cpp.decoded_reading`), and with `read_lines`
    (the runtime's default) a prompt without a response line by line (`loraguard_cpp.text_lines`), each line in
    both readings. Returns the row index of each reading (a row can have several) and its prompt and response,
    already read (tokenize them with `read=None`)."""
    from loraguard_cpp import decoded_reading, text_lines

    rows: list[int] = []
    second_prompts: list[str] = []
    second_responses: list[str | None] = []
    for i, prompt in enumerate(prompts):
        response = None if responses is None else responses[i]
        decoded_prompt = decoded_reading(prompt)
        decoded_response = None if response is None else decoded_reading(response)
        if decoded_prompt is not None or decoded_response is not None:
            rows.append(i)
            second_prompts.append(read_text(prompt) if decoded_prompt is None else decoded_prompt)
            if response is not None and decoded_response is None:
                decoded_response = read_text(response)
            second_responses.append(decoded_response)
        if response is not None or not read_lines:
            continue
        for line in text_lines(prompt):
            # a line is folded already, and folding folded text changes nothing
            decoded_line = decoded_reading(line)
            for reading in (line,) if decoded_line is None else (line, decoded_line):
                rows.append(i)
                second_prompts.append(reading)
                second_responses.append(None)
    return rows, second_prompts, None if responses is None else second_responses


def tokenize(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str | None] | None,
    template_prompt: str,
    template_pair: str,
    parse_special: bool,
    max_tokens: int | None,
    invocation: Sequence[int] = (),
    read: Callable[[str], str] | None = read_text,
) -> list[list[int]]:
    """Guard inputs as the runtime tokenizes them (loraguard_train.template); an input longer than max_tokens is
    cut like the runtime's keep_end: the template whole, the last tokens of the prompt and response.

    An aLoRA guard's `invocation` ids are appended to every input after the cut (which leaves room for them), as
    ids: never tokenized together with the text before them. `read` is how each text is read (None: the texts
    are read already, as `second_readings` gives them).
    """
    if read is not None:
        prompts = [read(p) for p in prompts]
        if responses is not None:
            responses = [None if r is None else read(r) for r in responses]
    ids = token_ids(tokenizer, prompts, responses, template_prompt, template_pair, parse_special)
    if any(not row for row in ids):
        raise ValueError("a text tokenized to zero tokens; the guard has nothing to pool")
    if max_tokens is not None:
        budget = max_tokens - len(invocation)
        if budget < 1:
            raise ValueError(f"max length {max_tokens} leaves no room beside the {len(invocation)}-token invocation")
        for i, row in enumerate(ids):
            if len(row) > budget:
                response = None if responses is None else responses[i]
                pieces = segments(tokenizer, prompts[i], response, template_prompt, template_pair, parse_special)
                ids[i] = keep_end(pieces, budget)
    if invocation:
        ids = [[*row, *invocation] for row in ids]
    return ids


def collate(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask; the pad id never matters because padded positions are masked."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def length_grouped_batches(lengths: IntArray, batch_size: int, rng: np.random.Generator) -> list[IntArray]:
    """Shuffled batches of similar length: random mega-chunks sorted by length inside, then split and shuffled,
    so little compute goes into padding while batch composition stays random from epoch to epoch."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 32
    batches: list[IntArray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: IntArray, batch_size: int) -> Iterator[IntArray]:
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def logits_of(
    model: GuardModel,
    ids: Sequence[list[int]],
    pad: int,
    batch_size: int,
    *,
    amp_dtype: torch.dtype | None = None,
    desc: str | None = None,
) -> npt.NDArray[np.float32]:
    """Head logits [N, n_labels] in eval mode, batched by length; `amp_dtype` runs under autocast (bf16 on GPUs)."""
    out = np.zeros((len(ids), model.n_labels), dtype=np.float32)
    if not ids:
        return out
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
    batches = list(sorted_batches(lengths, batch_size))
    try:
        for idx in tqdm(batches, desc=desc, unit="batch", leave=False, disable=True if desc is None else None):
            input_ids, mask = collate([ids[i] for i in idx], pad)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(input_ids.to(device), mask.to(device))
            out[idx] = logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out
