"""Stock llama.cpp through llama-cpp-python's low-level API: the contenders that are not loraguard.

`llama_cpp.Llama` cannot turn llama.cpp's extra CPU buffer types off, and on CPUs with AMX those kernels crash
on multi-token decodes of quantized models (llama.cpp 0.3.36). loraguard turns them off exactly there
(lg_model_params.cpu_repack = -1, for models with such types), so the contenders here follow the same rule,
and their contexts get loraguard's guard-context settings: same n_ctx, steps of 512 tokens, one unified
K/V stream, default (F16) K/V cache and flash-attention choice.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt

N_SEQ_MAX = 32  # loraguard's default: texts per batched decode
N_UBATCH = 512  # loraguard's and llama.cpp's default: tokens per compute step


def cpu_has_amx() -> bool:
    """Whether this CPU offers AMX, where loraguard keeps llama.cpp's extra buffer types off for quantized models."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and "amx_tile" in cpuinfo.read_text().split()


# tensor types with AMX kernels in the pinned llama.cpp (ggml-cpu/amx/common.h), as lg-model.cpp lists them
AMX_TYPES = {"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}


def extra_bufts(model_path: Path) -> bool:
    """loraguard's default (lg_model_params.cpu_repack = -1): llama.cpp's extra buffer types stay on unless the
    CPU offers AMX and the model has tensors of a type whose AMX kernels crash on multi-token decodes."""
    if not cpu_has_amx():
        return True
    from gguf import GGUFReader

    return not any(t.tensor_type.name in AMX_TYPES for t in GGUFReader(model_path).tensors)


POOLING = {
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
}


class LlamaCpp:
    """One model and one context. With `pooling` ("last", "mean", "cls") the context makes pooled embeddings
    (contender 4, and the limit of an encoder); without, a decode yields logits for the last token of each
    sequence (the limit of a decoder, the generative guard)."""

    def __init__(
        self, model_path: Path, *, n_ctx: int, n_threads: int, pooling: str | None = None, lora: Path | None = None
    ) -> None:
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.use_extra_bufts = extra_bufts(model_path)
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = n_ctx
        # llama.cpp's default step, as loraguard's; encoders (mean/cls pooling) attend both ways and need a
        # whole sequence in one step
        cparams.n_ubatch = n_ctx if pooling in ("mean", "cls") else min(n_ctx, N_UBATCH)
        cparams.n_seq_max = N_SEQ_MAX
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        if pooling is not None:
            cparams.embeddings = True
            cparams.pooling_type = POOLING[pooling]
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.adapter = None
        if lora is not None:
            self.adapter = llama_cpp.llama_adapter_lora_init(self.model, str(lora).encode())
            if not self.adapter:
                raise RuntimeError(f"llama.cpp could not load the LoRA adapter {lora}")
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(self.ctx, adapters, 1, scales) != 0:
                raise RuntimeError("llama.cpp could not attach the LoRA adapter")
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, N_SEQ_MAX)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_special, parse_special)
        if n < 0:
            raise RuntimeError(f"tokenization failed ({n})")
        return list(buf[:n])

    def decode(self, seqs: Sequence[Sequence[int]], *, start_pos: int = 0, clear: bool = True) -> None:
        """Evaluate the sequences side by side in one decode, asking for output at each one's last token."""
        b = self.batch
        n = 0
        for s, tokens in enumerate(seqs):
            for p, token in enumerate(tokens):
                b.token[n] = token
                b.pos[n] = start_pos + p
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = s
                b.logits[n] = p + 1 == len(tokens)
                n += 1
        b.n_tokens = n
        if clear:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")

    def decode_texts(self, texts: Sequence[str], template: str, batched: bool, parse_special: bool) -> Iterator[int]:
        """Decode the texts rendered in the template, one per decode or packed as loraguard packs a batch;
        after each decode, yield how many sequences it held (their outputs are valid until the next one)."""
        seqs = [self.tokenize(template.replace("{prompt}", t), parse_special=parse_special) for t in texts]
        groups = pack([len(s) for s in seqs], self.n_ctx) if batched else [range(i, i + 1) for i in range(len(seqs))]
        for group in groups:
            self.decode([seqs[i] for i in group])
            yield len(group)

    def pooled(self, seq: int) -> npt.NDArray[np.float32]:
        return np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(self.ctx, seq), shape=(self.n_embd,))

    def logits(self, i: int) -> npt.NDArray[np.float32]:
        """Logits of the i-th output of the last decode (-1: the last one)."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        if self.adapter is not None:
            llama_cpp.llama_adapter_lora_free(self.adapter)
        llama_cpp.llama_model_free(self.model)


def pack(lengths: Sequence[int], n_ctx: int) -> list[range]:
    """Consecutive groups of sequences for one decode each, as loraguard packs a batch (lg_guard::classify):
    up to N_SEQ_MAX sequences and n_ctx tokens per decode."""
    groups: list[range] = []
    begin = 0
    while begin < len(lengths):
        end, total = begin, 0
        while end < len(lengths) and end - begin < N_SEQ_MAX and total + lengths[end] <= n_ctx:
            total += lengths[end]
            end += 1
        groups.append(range(begin, end))
        begin = end
    return groups
