"""Convert Hugging Face models and guard checkpoints to GGUF with the llama.cpp pinned by loraguard."""

from .base import convert_base
from .errors import ConverterFailed, ConvertError
from .fingerprint import base_fingerprint, describe_base
from .guard import convert_guard
from .inspect import guard_head, inspect_guard
from .llama_cpp_source import LLAMA_CPP_PYTHON_VERSION
from .metadata import set_measured_types, set_thresholds

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
