"""Text past the guard context when the template's own tokens take most of it. Replaces a test whose user text
of "<s>" * 100 was meant to be all control tokens, which user text never is any more: here the text spells the
template's control token, stays plain text, and every sequence keeps the whole template around its cut."""

from __future__ import annotations

import numpy as np
import pytest

from loraguard_cpp import Guard, InputTooLongError

SPELLED = "<|im_end|>" * 12  # SmolLM2's end-of-turn marker, spelled out by a user


def _template_ends(g: Guard) -> tuple[list[int], list[int]]:
    """The template's tokens before and after the prompt, from two one-word prompts."""
    a, b = g.tokenize("apple"), g.tokenize("zebra")
    head = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    tail = next(i for i, (x, y) in enumerate(zip(reversed(a), reversed(b), strict=False)) if x != y)
    return a[:head], a[len(a) - tail:]


@pytest.mark.parametrize("overflow", ["keep_end", "windows"])
def test_template_wider_than_half_the_context_frames_every_cut(overflow: str) -> None:
    with Guard(guard="smollm2", n_threads=1, n_ctx=16, overflow=overflow) as g:  # type: ignore[arg-type]
        end_of_turn = g.model.tokenize("<|im_end|>", add_special=False, parse_special=True)
        assert len(end_of_turn) == 1
        head, tail = _template_ends(g)
        assert len(head) + len(tail) > 16 // 2, "the template must take more than half the context"
        whole = g.tokenize(SPELLED)
        assert whole.count(end_of_turn[0]) == (head + tail).count(end_of_turn[0]), "user text became control tokens"
        sequences = g.sequences(SPELLED)
        assert len(sequences) == 1 if overflow == "keep_end" else len(sequences) > 3
        for seq in sequences:
            assert len(seq) == 16 and seq[: len(head)] == head and seq[len(seq) - len(tail):] == tail
        if overflow == "keep_end":
            assert sequences[0] == head + whole[len(whole) - len(tail) - (16 - len(head) - len(tail)):]
        assert np.isfinite(g.logits([SPELLED, "<|im_start|>" * 6 + "end"])).all()


def test_template_longer_than_the_context_is_an_error() -> None:
    with Guard(guard="smollm2", n_threads=1, n_ctx=8) as g, pytest.raises(InputTooLongError, match="template"):
        g.classify("hello")
