"""Locate (or fetch once) the llama.cpp source tree pinned through llama-cpp-python's sdist.

Guards must be converted by the same llama.cpp that runs them, so the converter scripts come from the
llama-cpp-python release the runtime is built on, never from whatever llama.cpp happens to be around.
"""

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from loraguard_cpp.registry import cache_dir

from .errors import ConvertError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
ENV_VAR = "LORAGUARD_LLAMA_CPP_SRC"

REQUIRED_FILES = (
    "convert_hf_to_gguf.py",
    "convert_lora_to_gguf.py",
    "conversion/__init__.py",
    "gguf-py/gguf/__init__.py",
)
_VENDOR_SUBDIR = ("vendor", "llama.cpp")


def cached_tree() -> Path:
    return cache_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}" / Path(*_VENDOR_SUBDIR)


def check_installed_version() -> None:
    try:
        installed = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return
    if installed != LLAMA_CPP_PYTHON_VERSION:
        raise ConvertError(
            f"llama-cpp-python {installed} is installed but loraguard-convert is pinned to "
            f"{LLAMA_CPP_PYTHON_VERSION}; install llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} so converted files "
            "match the llama.cpp that loads them"
        )


def missing_files(tree: Path) -> list[str]:
    return [rel for rel in REQUIRED_FILES if not (tree / rel).is_file()]


def llama_cpp_source(*, fetch: bool = True) -> Path:
    """The pinned llama.cpp directory: $LORAGUARD_LLAMA_CPP_SRC, else the user cache, else fetched into it."""
    check_installed_version()
    override = os.environ.get(ENV_VAR)
    if override:
        tree = Path(override).expanduser()
        missing = missing_files(tree)
        if missing:
            raise ConvertError(f"{ENV_VAR}={override} is not a llama.cpp source tree (missing {', '.join(missing)})")
        return tree
    tree = cached_tree()
    if not missing_files(tree):
        return tree
    if not fetch:
        raise ConvertError(f"no llama.cpp source at {tree}; set {ENV_VAR} or allow fetching it")
    return _fetch_into_cache(tree)


def converter_script(name: str) -> Path:
    return llama_cpp_source() / name


def _fetch_into_cache(tree: Path) -> Path:
    release_dir = tree.parents[len(_VENDOR_SUBDIR) - 1]
    if release_dir.exists():
        if not missing_files(tree):  # another process fetched it a moment ago
            return tree
        missing = ", ".join(missing_files(tree))
        raise ConvertError(f"{release_dir} exists but is incomplete (missing {missing}); delete it and retry")
    release_dir.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"loraguard-convert: fetching llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source (llama.cpp converters) "
        f"into {release_dir}",
        file=sys.stderr,
    )
    # Staging inside the cache directory keeps the final rename on one filesystem, hence atomic.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=release_dir.parent) as tmp:
        download_dir = Path(tmp) / "download"
        pip_download = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        what = [f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(download_dir)]
        proc = subprocess.run([*pip_download, *what], capture_output=True, text=True)
        sdists = sorted(download_dir.glob("llama_cpp_python-*.tar.gz")) if proc.returncode == 0 else []
        if not sdists:
            last = (proc.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise ConvertError(
                f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} source ({last}); "
                f"set {ENV_VAR} to a llama.cpp source tree instead"
            )
        staging = Path(tmp) / "staging"
        _extract_vendor_tree(sdists[0], staging)
        lacking = missing_files(staging / Path(*_VENDOR_SUBDIR))
        if lacking:
            raise ConvertError(f"{sdists[0].name} lacks {', '.join(lacking)}")
        try:
            staging.rename(release_dir)
        except OSError:
            # Another process finished the same fetch first; its copy is as good as ours.
            if missing_files(tree):
                raise
    return tree


def _extract_vendor_tree(sdist: Path, dest: Path) -> None:
    """Extract only vendor/llama.cpp (the converters and gguf-py) of the sdist, without its top directory."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if parts[1 : 1 + len(_VENDOR_SUBDIR)] == _VENDOR_SUBDIR:
                member.name = str(Path(*parts[1:]))
                members.append(member)
        # The "data" filter refuses absolute paths, links out of dest and device files.
        tar.extractall(dest, members=members, filter="data")
