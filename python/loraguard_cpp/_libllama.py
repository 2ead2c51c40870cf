"""Makes the native module share llama-cpp-python's libllama instead of loading a second copy.

Wheels cannot hold symlinks, so llama_cpp/lib carries libllama.so and libllama.so.0 as two separate files.
llama_cpp loads the first by path; our extension's dependency names the second (the library's SONAME). Loading
the first here, before the extension, lets the dynamic linker satisfy that dependency by SONAME with the
already-loaded copy, and a later `import llama_cpp` finds the same file already mapped: one libllama per
process.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

_FILE_NAMES = {"linux": "libllama.so", "darwin": "libllama.dylib"}


def preload() -> None:
    name = _FILE_NAMES.get(sys.platform)
    spec = importlib.util.find_spec("llama_cpp")
    if name is None or spec is None or not spec.submodule_search_locations:
        return
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / name
    if path.exists():
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
