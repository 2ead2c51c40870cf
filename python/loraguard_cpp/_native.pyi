from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

FORMAT_VERSION: int

def fold_text(text: bytes | str) -> str: ...
def decoded_reading(text: bytes | str) -> str | None: ...
def text_lines(text: bytes | str) -> list[str]: ...

# on_token(token_id, piece_bytes, logits_or_None) -> keep going (None counts as True)
TokenCallback = Callable[[int, bytes, npt.NDArray[np.float32] | None], bool | None]
Messages = Sequence[tuple[str | bytes, str | bytes]]
# on_verdict(n_tokens, n_reply_tokens, logits, probs, flagged) -> keep going (None counts as True)
VerdictCallback = Callable[
    [int, int, npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]], bool | None
]

class Model:
    def __init__(
        self,
        path: str,
        n_gpu_layers: int = 0,
        cpu_repack: int = -1,
        use_mmap: bool = True,
        verbose: bool = False,
        n_threads: int = 0,
    ) -> None: ...
    @property
    def n_threads(self) -> int: ...
    @staticmethod
    def default_n_threads() -> int: ...
    @property
    def architecture(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def file_type(self) -> str: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def n_layer(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def n_params(self) -> int: ...
    @property
    def is_encoder(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]: ...
    def close(self) -> None: ...
    @staticmethod
    def quantize(input: str, output: str, type: str, n_threads: int = 0) -> None: ...

class GuardPath:
    def __init__(
        self,
        model: Model,
        path: str,
        n_ctx: int = 512,
        n_seq_max: int = 32,
        n_threads: int = 0,
        overflow: int = 1,
        isolated: bool = False,
        f32_kv_cache: bool = False,
        flash_attn: int = -1,
        n_ubatch: int = 0,
        max_text_bytes: int = 0,
        text_form: int = 0,
        read_lines: bool = True,
    ) -> None: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def thresholds(self) -> list[float]: ...
    @property
    def lora_rank(self) -> int: ...
    @property
    def is_alora(self) -> bool: ...
    @property
    def invocation(self) -> list[int]: ...
    @property
    def n_params(self) -> int: ...
    @property
    def warning(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def meta(self, key: str) -> str | None: ...
    def classify(
        self, prompts: Sequence[str | bytes], responses: Sequence[str | bytes | None] | None = None
    ) -> npt.NDArray[np.float32]: ...
    def score(
        self, prompts: Sequence[str | bytes], responses: Sequence[str | bytes | None] | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]]: ...
    def tokenize(self, prompt: str | bytes, response: str | bytes | None = None) -> list[int]: ...
    def sequences(self, prompt: str | bytes, response: str | bytes | None = None) -> list[list[int]]: ...
    def close(self) -> None: ...

class ChatPath:
    def __init__(
        self,
        model: Model,
        n_ctx: int = 2048,
        n_batch: int = 0,
        n_ubatch: int = 0,
        n_threads: int = 0,
        flash_attn: int = -1,
        f32_kv_cache: bool = False,
    ) -> None: ...
    def format(self, messages: Messages) -> str: ...
    def tokenize(self, messages: Messages) -> list[int]: ...
    def generate(
        self,
        prompt: str | bytes,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
        stop: Sequence[str | bytes] = (),
        on_token: TokenCallback | None = None,
        with_logits: bool = False,
        guard: GuardPath | None = None,
        guard_every: int = 16,
        on_verdict: VerdictCallback | None = None,
    ) -> bytes: ...
    def generate_messages(
        self,
        messages: Messages,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
        stop: Sequence[str | bytes] = (),
        on_token: TokenCallback | None = None,
        with_logits: bool = False,
        guard: GuardPath | None = None,
        guard_every: int = 16,
        on_verdict: VerdictCallback | None = None,
    ) -> bytes: ...
    def cancel(self) -> None: ...
    def decode(self, tokens: Sequence[int], clear: bool = True) -> npt.NDArray[np.float32]: ...
    def classify(
        self, guard: GuardPath
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]]: ...
    def memory(self) -> tuple[int, int, int, int]: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
