"""Guard input templates on the PyTorch side, tokenized exactly as the runtime's lg::guard_template does.

With `parse_special`, special-token text written in the template itself (``<|im_start|>``) becomes those tokens
and the user's text is always plain text, so a prompt spelling out ``<|im_end|>`` cannot forge a turn boundary.
The text between two of the template's special tokens is tokenized as one piece, as a tokenizer does with the
whole rendered string, so inputs without special-token text get the same ids either way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"(\{prompt\}|\{response\})")
# the runtime strips whitespace beside LSTRIP/RSTRIP tokens with C's isspace
_ASCII_SPACE = " \t\n\v\f\r"


def render(template: str, prompt: str, response: str | None) -> str:
    """Fill a guard template by plain replacement of {prompt} and {response}, exactly as the runtime does.

    One pass over the template: the inserted texts are never scanned again, so a prompt that itself contains
    "{response}" cannot pull the response (or anything else) into the rendered input.
    """
    values = {"{prompt}": prompt, "{response}": response}
    parts = []
    for piece in _PLACEHOLDER.split(template):
        if piece in values:
            value = values[piece]
            if value is None:
                raise ValueError(f"template {template!r} needs a response")
            parts.append(value)
        else:
            parts.append(piece)
    return "".join(parts)


def render_all(
    prompts: Sequence[str],
    responses: Sequence[str | None] | None,
    template_prompt: str,
    template_pair: str,
) -> list[str]:
    """Prompt-only items use the prompt template, items with a response the pair template."""
    if responses is None:
        return [render(template_prompt, p, None) for p in prompts]
    if len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [
        render(template_prompt, p, None) if r is None else render(template_pair, p, r)
        for p, r in zip(prompts, responses, strict=True)
    ]


@dataclass(frozen=True)
class _Special:
    id: int
    strip_space_before: bool
    strip_space_after: bool


# a template as a sequence of plain text, placeholders ("{prompt}", "{response}") and special tokens
_Part = str | _Special


def _split_template(tokenizer: Any, template: str) -> list[_Part]:
    """The template's own text split at the tokenizer's added tokens, longest first (as the tokenizers match them);
    placeholders stay whole."""
    parts: list[_Part] = [p for p in _PLACEHOLDER.split(template) if p]
    specials = sorted(
        ((token.content, i, token.lstrip, token.rstrip) for i, token in tokenizer.added_tokens_decoder.items()),
        key=lambda item: -len(item[0]),
    )
    for content, token_id, lstrip, rstrip in specials:
        if not content or not any(isinstance(p, str) and content in p for p in parts):
            continue
        split: list[_Part] = []
        for p in parts:
            if not isinstance(p, str) or _PLACEHOLDER.fullmatch(p):
                split.append(p)
                continue
            for k, piece in enumerate(p.split(content)):
                if k:
                    split.append(_Special(token_id, lstrip, rstrip))
                if piece:
                    split.append(piece)
        parts = split
    return parts


def _framing(tokenizer: Any) -> tuple[list[int], list[int]]:
    """What add_special_tokens puts before and after a text (BOS; CLS and SEP), read off the tokenizer itself."""
    framed: list[int] = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare: list[int] = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(framed) - len(bare) + 1):
        if framed[start : start + len(bare)] == bare:
            return framed[:start], framed[start + len(bare) :]
    raise ValueError("the tokenizer's framing tokens could not be told apart from its text tokens")


def _layout(parts: Sequence[_Part], prompt: str, response: str | None) -> list[str | _Special]:
    """One input as the template's special tokens and the plain-text runs between them (stripped where a token
    asks for it, empty runs dropped)."""
    layout: list[str | _Special] = []
    run = ""
    strip_start = False

    def close(strip_end: bool) -> None:
        text = run.lstrip(_ASCII_SPACE) if strip_start else run
        text = text.rstrip(_ASCII_SPACE) if strip_end else text
        if text:
            layout.append(text)

    for part in parts:
        if isinstance(part, _Special):
            close(part.strip_space_before)
            layout.append(part)
            run, strip_start = "", part.strip_space_after
        elif part == "{prompt}":
            run += prompt
        elif part == "{response}":
            if response is None:
                raise ValueError("a prompt template must not contain {response}")
            run += response
        else:
            run += part
    close(False)
    return layout


def token_ids(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str | None] | None,
    template_prompt: str,
    template_pair: str,
    parse_special: bool,
) -> list[list[int]]:
    """Guard inputs as the runtime tokenizes them (llama_tokenize framing: add_special on)."""
    if not parse_special:
        texts = render_all(prompts, responses, template_prompt, template_pair)
        return tokenizer(texts, add_special_tokens=True, split_special_tokens=True)["input_ids"] if texts else []
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    head, tail = _framing(tokenizer)
    templates = {t: _split_template(tokenizer, t) for t in (template_prompt, template_pair)}
    layouts = []
    for i, prompt in enumerate(prompts):
        response = None if responses is None else responses[i]
        layouts.append(_layout(templates[template_prompt if response is None else template_pair], prompt, response))
    # every plain-text run of every input in one batch: the fast tokenizer's batch path is much quicker
    runs = [item for layout in layouts for item in layout if isinstance(item, str)]
    run_ids = iter(tokenizer(runs, add_special_tokens=False, split_special_tokens=True)["input_ids"] if runs else [])
    out = []
    for layout in layouts:
        ids = list(head)
        for item in layout:
            ids.extend([item.id] if isinstance(item, _Special) else next(run_ids))
        ids.extend(tail)
        out.append(ids)
    return out


# one input as the runtime cuts it when it is too long: (token ids, whether they are the prompt's or response's)
Segment = tuple[list[int], bool]


def _run_pieces(parts: Sequence[_Part], prompt: str, response: str | None) -> list[_Special | list[tuple[str, bool]]]:
    """The layout of :func:`_layout` with each plain-text run kept as its pieces (template text or a value)."""
    layout: list[_Special | list[tuple[str, bool]]] = []
    run: list[tuple[str, bool]] = []
    strip_start = False

    def close(strip_end: bool) -> None:
        pieces = list(run)
        for k in range(len(pieces)) if strip_start else ():
            pieces[k] = (pieces[k][0].lstrip(_ASCII_SPACE), pieces[k][1])
            if pieces[k][0]:
                break
        for k in reversed(range(len(pieces))) if strip_end else ():
            pieces[k] = (pieces[k][0].rstrip(_ASCII_SPACE), pieces[k][1])
            if pieces[k][0]:
                break
        layout.append([p for p in pieces if p[0]])

    for part in parts:
        if isinstance(part, _Special):
            close(part.strip_space_before)
            layout.append(part)
            run, strip_start = [], part.strip_space_after
        elif part == "{prompt}":
            run.append((prompt, True))
        elif part == "{response}":
            if response is None:
                raise ValueError("a prompt template must not contain {response}")
            run.append((response, True))
        else:
            run.append((part, False))
    close(False)
    return layout


def segments(
    tokenizer: Any, prompt: str, response: str | None, template_prompt: str, template_pair: str, parse_special: bool
) -> list[Segment]:
    """One input with the prompt and response tokenized on their own, as the runtime's token_template::segments
    does to cut an input too long for its context inside the values while the template stays whole."""
    template = template_prompt if response is None else template_pair
    parts = _split_template(tokenizer, template) if parse_special else [p for p in _PLACEHOLDER.split(template) if p]
    head, tail = _framing(tokenizer)
    out: list[Segment] = [(list(head), False)] if head else []

    def add(ids: list[int], is_value: bool) -> None:
        if not ids:
            return
        if out and not is_value and not out[-1][1]:
            out[-1][0].extend(ids)
        else:
            out.append((list(ids), is_value))

    for item in _run_pieces(parts, prompt, response):
        if isinstance(item, _Special):
            add([item.id], False)
            continue
        for text, is_value in item:
            add(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"], is_value)
    add(list(tail), False)
    return out


def keep_end(pieces: Sequence[Segment], max_tokens: int) -> list[int]:
    """The runtime's keep_end overflow: the template's tokens whole and the last tokens of the values."""
    fixed = sum(len(ids) for ids, is_value in pieces if not is_value)
    content = sum(len(ids) for ids, is_value in pieces if is_value)
    if fixed >= max_tokens:
        raise ValueError(f"the guard's template alone is {fixed} tokens, more than max length {max_tokens}")
    width = min(max_tokens - fixed, content)
    begin = content - width
    window: list[int] = []
    at = 0
    for ids, is_value in pieces:
        if not is_value:
            window.extend(ids)
            continue
        lo = min(max(begin, at), at + len(ids)) - at
        hi = min(max(begin + width, at), at + len(ids)) - at
        window.extend(ids[lo:hi])
        at += len(ids)
    return window
