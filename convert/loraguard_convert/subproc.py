"""Run one of llama.cpp's converter scripts as a child process of this Python."""

import codecs
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from .errors import ConverterFailed, ConvertError

_TAIL_BYTES = 64 * 1024
_TAIL_LINES = 20
# Imported by both convert_hf_to_gguf.py and convert_lora_to_gguf.py; without them they die with a traceback.
_CONVERTER_MODULES = ("torch", "transformers")


def run_converter(script: Path, args: list[str], *, echo: bool) -> None:
    """Run SCRIPT with ARGS; echo its output to stderr if asked, and raise ConverterFailed on a non-zero exit."""
    missing = [name for name in _CONVERTER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConvertError(
            f"llama.cpp's {script.name} needs {' and '.join(missing)} in this Python ({sys.executable}); "
            "install loraguard's [train] extra"
        )
    env = dict(os.environ)
    # The pinned script must import its own gguf-py, not the PyPI gguf installed next to us.
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONUNBUFFERED"] = "1"
    tail = bytearray()
    # Incremental, because a read can end in the middle of a multi-byte character.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        try:
            while chunk := os.read(proc.stdout.fileno(), _TAIL_BYTES):
                if echo:
                    sys.stderr.write(decoder.decode(chunk))
                    sys.stderr.flush()
                tail += chunk
                del tail[:-_TAIL_BYTES]
        except BaseException:
            proc.kill()
            raise
    if proc.returncode != 0:
        text = tail.decode("utf-8", errors="replace")
        # tqdm redraws with carriage returns, so both CR and LF end a line here.
        lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
        raise ConverterFailed(script.name, proc.returncode, lines[-_TAIL_LINES:])
