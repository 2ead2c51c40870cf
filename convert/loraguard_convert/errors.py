"""Exceptions that the CLI reports as one line instead of a traceback."""


class ConvertError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConverterFailed(ConvertError):
    """One of llama.cpp's converter scripts exited with an error."""

    def __init__(self, script: str, returncode: int, output_tail: list[str]) -> None:
        self.script = script
        self.returncode = returncode
        # The full tail stays available to Python callers; the message keeps only what fits on one line.
        self.output_tail = output_tail
        detail = " | ".join(output_tail[-3:]) or "no output"
        super().__init__(f"{script} failed with exit code {returncode}: {detail}")
