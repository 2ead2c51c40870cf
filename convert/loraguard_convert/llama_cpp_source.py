"""Locate (or fetch once) the llama.cpp source tree pinned through llama-cpp-python's sdist.

Guards must be converted by the same llama.cpp that runs them, so the converter scripts come from the
llama-cpp-python release the runtime is built on, never from whatever llama.cpp happens to be around.

The sdist is fetched as a plain file from the package index and checked against a pinned sha256. Nothing is
built: `pip download` would prepare the sdist's metadata, which runs its build backend (and, under build
isolation with --no-binary, compiles CMake from source for 20 minutes) just to fetch a tarball.
"""

import hashlib
import http.client
import importlib.metadata
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

from .cache import cache_dir
from .errors import ConvertError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
# From PyPI's simple index for llama-cpp-python 0.3.36; a file with any other digest is refused.
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ENV_VAR = "LORAGUARD_LLAMA_CPP_SRC"
# The index pip itself would use when configured by environment (a mirror), else PyPI.
INDEX_ENV_VAR = "PIP_INDEX_URL"
DEFAULT_INDEX = "https://pypi.org/simple/"
_TIMEOUT_S = 60
_CHUNK = 1 << 20

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
        sdist = Path(tmp) / SDIST_NAME
        _download_pinned_sdist(sdist)
        staging = Path(tmp) / "staging"
        _extract_vendor_tree(sdist, staging)
        lacking = missing_files(staging / Path(*_VENDOR_SUBDIR))
        if lacking:
            raise ConvertError(f"{sdist.name} lacks {', '.join(lacking)}")
        try:
            staging.rename(release_dir)
        except OSError:
            # Another process finished the same fetch first; its copy is as good as ours.
            if missing_files(tree):
                raise
    return tree


class _Anchors(HTMLParser):
    """(href, text) of every link on a PEP 503 simple-index page, whose link texts are file names."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def _open(url: str) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "loraguard-convert", "Accept": "text/html"})
    try:
        return urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except (urllib.error.URLError, OSError) as e:
        raise ConvertError(
            f"could not fetch {url} ({e}); check the network or ${INDEX_ENV_VAR}, or set {ENV_VAR} to a "
            f"llama.cpp source tree of llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}"
        ) from e


def sdist_url(index: str) -> str:
    """The pinned sdist's URL, read from the index's simple page for llama-cpp-python."""
    page = urllib.parse.urljoin(index.rstrip("/") + "/", "llama-cpp-python/")
    with _open(page) as response:
        parser = _Anchors()
        parser.feed(response.read().decode("utf-8", errors="replace"))
    for href, text in parser.links:
        if text == SDIST_NAME:
            return urllib.parse.urldefrag(urllib.parse.urljoin(page, href)).url
    raise ConvertError(f"{page} lists no {SDIST_NAME}; set {ENV_VAR} to a llama.cpp source tree instead")


def _download_pinned_sdist(dest: Path) -> None:
    """Download the sdist to DEST, refusing (and deleting) it unless its sha256 is the pinned one."""
    url = sdist_url(os.environ.get(INDEX_ENV_VAR) or DEFAULT_INDEX)
    digest = hashlib.sha256()
    with _open(url) as response, open(dest, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=size, unit="B", unit_scale=True, desc=SDIST_NAME, file=sys.stderr, disable=None) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise ConvertError(f"download of {url} broke off ({e!r}); retry, or set {ENV_VAR}") from e
    # DEST lies in the caller's staging directory, which goes away with a refused file in it.
    if digest.hexdigest() != SDIST_SHA256:
        raise ConvertError(
            f"refusing {url}: its sha256 is {digest.hexdigest()}, but llama-cpp-python "
            f"{LLAMA_CPP_PYTHON_VERSION}'s sdist is pinned to {SDIST_SHA256} (a wrong or tampered file); "
            f"check ${INDEX_ENV_VAR}, or set {ENV_VAR} to a llama.cpp source tree you trust"
        )


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
