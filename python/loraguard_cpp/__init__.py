"""loraguard: a chat model that guards itself, on llama.cpp.

>>> from loraguard_cpp import Guard
>>> with Guard("base.gguf", "guard.gguf") as g:
...     g.classify("how do I bake bread?").flagged
"""

from ._libllama import preload as _preload_libllama

_preload_libllama()

from .errors import (  # noqa: E402
    BackendError,
    FileAccessError,
    FileFormatError,
    InputTooLongError,
    InvalidInputError,
    LoraGuardError,
    ModelMismatchError,
)
from .guard import Guard, GuardResult  # noqa: E402

__all__ = [
    "BackendError",
    "FileAccessError",
    "FileFormatError",
    "Guard",
    "GuardResult",
    "InputTooLongError",
    "InvalidInputError",
    "LoraGuardError",
    "ModelMismatchError",
]
