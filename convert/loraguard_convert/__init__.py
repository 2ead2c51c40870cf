"""Convert Hugging Face models and guard checkpoints to GGUF with the llama.cpp pinned by loraguard.

The public names load their submodules on first use: the runtime imports ``loraguard_convert.cache`` on every
start to find the user cache, and must not pay for gguf, safetensors and the converters there.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ConverterFailed, ConvertError

if TYPE_CHECKING:
    from .base import convert_base
    from .fingerprint import base_fingerprint, describe_base
    from .guard import convert_guard
    from .inspect import guard_head, inspect_guard
    from .llama_cpp_source import LLAMA_CPP_PYTHON_VERSION
    from .metadata import set_measured_types, set_thresholds

_LAZY = {
    "LLAMA_CPP_PYTHON_VERSION": "llama_cpp_source",
    "convert_base": "base",
    "base_fingerprint": "fingerprint",
    "describe_base": "fingerprint",
    "convert_guard": "guard",
    "guard_head": "inspect",
    "inspect_guard": "inspect",
    "set_measured_types": "metadata",
    "set_thresholds": "metadata",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


__all__ = [
    "LLAMA_CPP_PYTHON_VERSION",
    "ConvertError",
    "ConverterFailed",
    "base_fingerprint",
    "convert_base",
    "convert_guard",
    "describe_base",
    "guard_head",
    "inspect_guard",
    "set_measured_types",
    "set_thresholds",
]
