"""Write an output file so that it either appears complete or not at all."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConvertError


def check_output_path(out_path: Path) -> Path:
    """Fail early, before any slow work, when OUT cannot be written."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ConvertError(f"output {out_path} is a directory, expected a file name")
    if not out_path.parent.is_dir():
        raise ConvertError(f"output directory {out_path.parent} does not exist")
    return out_path


@contextmanager
def atomic_output(out_path: Path) -> Iterator[Path]:
    """Yield a temporary path next to OUT; rename it onto OUT only if the block succeeds.

    The temporary file lives in OUT's directory so that os.replace is a same-filesystem rename. Its name is
    not created here (unlike mkstemp) so that whoever writes it gets normal umask permissions, and it
    carries no part of OUT's name because llama.cpp's converters expand `{ftype}` in output names.
    """
    out_path = check_output_path(out_path)
    tmp = out_path.parent / f".loraguard-convert-{secrets.token_hex(8)}.tmp"
    try:
        yield tmp
        if not tmp.is_file():
            raise ConvertError(f"internal error: {tmp} was not written")
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
