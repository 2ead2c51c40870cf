"""The dual-path promise, checked against stock llama-cpp-python: the chat path is the base model, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loraguard_cpp import Guard


def assert_chat_bit_identical(model: Path, guard_path: Path, prompt: str, texts: list[str], flash_attn: bool) -> None:
    """Greedy chat through our chat path, with guard calls interleaved after every token, gives the very
    token ids and logits of stock llama-cpp-python with no adapter on the same model and prompt."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=512, n_batch=512, n_ubatch=512, n_threads=1,
                          n_threads_batch=1, flash_attn=flash_attn, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.eval(tokens)
    stock_ids: list[int] = []
    stock_logits: list[np.ndarray] = []
    for _ in range(24):
        # llama-cpp-python keeps no logits without logits_all: read llama.cpp's buffer for the last output
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
        token = int(np.argmax(logits))
        stock_logits.append(logits)
        stock_ids.append(token)
        llm.eval([token])

    with Guard(model, guard_path, n_threads=1, chat_n_ctx=512, chat_flash_attn=flash_attn) as g:
        ours_ids: list[int] = []
        ours_logits: list[np.ndarray] = []
        guard_scores = g.logits(texts)

        def on_token(token: int, _piece: bytes, logits: np.ndarray | None) -> bool:
            ours_ids.append(token)
            ours_logits.append(logits)
            assert np.array_equal(g.logits(texts), guard_scores)  # the guard, interleaved
            return True

        g._chat_path().generate(prompt, 24, 0.0, 40, 0.95, 0, [], on_token, True)
        assert np.array_equal(g.chat_logits(tokens), stock_logits[0])
    assert ours_ids == stock_ids[: len(ours_ids)] and ours_ids
    for ours, stock in zip(ours_logits, stock_logits, strict=False):
        assert np.array_equal(ours, stock)
