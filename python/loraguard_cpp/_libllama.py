"""Makes the native module share llama-cpp-python's libllama instead of loading a second copy.

Wheels cannot hold symlinks, so llama_cpp/lib carries libllama.so and libllama.so.0 as two separate files.
llama_cpp loads the first by path; our extension's dependency names the second (the library's SONAME). Loading
the first here, before the extension, lets the dynamic linker satisfy that dependency by SONAME with the
already-loaded copy, and a later `import llama_cpp` finds the same file already mapped: one libllama per
process.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

_FILE_NAMES = {"linux": "libllama.so", "darwin": "libllama.dylib"}


def check_version() -> None:
    """Refuse a llama-cpp-python other than the one the extension was compiled against, before loading it."""
    from ._build_info import LLAMA_CPP_PYTHON_VERSION as built

    try:
        installed = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != built:
        found = f"llama-cpp-python {installed} is installed" if installed else "llama-cpp-python is not installed"
        raise ImportError(
            f"loraguard_cpp was built against llama-cpp-python {built} (its libllama), but {found}: "
            f"pip install llama-cpp-python=={built}, or rebuild loraguard against the installed one "
            "(pip install --no-build-isolation --force-reinstall loraguard)"
        )


def preload() -> None:
    check_version()
    name = _FILE_NAMES.get(sys.platform)
    spec = importlib.util.find_spec("llama_cpp")
    if name is None or spec is None or not spec.submodule_search_locations:
        return
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / name
    if path.exists():
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
