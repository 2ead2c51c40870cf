"""loraguard: a chat model that guards itself, on llama.cpp.

>>> from loraguard_cpp import Guard
>>> with Guard("base.gguf", "guard.gguf") as g:
...     g.classify("how do I bake bread?").flagged

The native extension loads on first use (``Guard``, ``_native``), after a check that the installed
llama-cpp-python is the one it was built against and with that package's libllama mapped first, so that a
process using both holds one libllama.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BackendError,
    FileAccessError,
    FileFormatError,
    FlaggedError,
    InputTooLongError,
    InvalidInputError,
    LoraGuardError,
    ModelMismatchError,
)

if TYPE_CHECKING:
    from .guard import ChatVerdict, Guard, GuardResult, decoded_reading, fold_text, text_lines

__all__ = [
    "BackendError",
    "ChatVerdict",
    "FileAccessError",
    "FileFormatError",
    "FlaggedError",
    "Guard",
    "GuardResult",
    "InputTooLongError",
    "InvalidInputError",
    "LoraGuardError",
    "ModelMismatchError",
    "decoded_reading",
    "fold_text",
    "text_lines",
]


def __getattr__(name: str) -> Any:
    if name == "_native":
        from ._libllama import preload

        preload()
        return importlib.import_module("._native", __name__)
    if name in ("ChatVerdict", "Guard", "GuardResult", "fold_text", "decoded_reading", "text_lines"):
        return getattr(importlib.import_module(".guard", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
