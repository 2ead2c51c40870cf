"""Exceptions raised by loraguard_cpp; each carries the native library's message."""

from __future__ import annotations


class LoraGuardError(RuntimeError):
    """Base class: a call into the native runtime failed. ``status`` is the C API's lg_status code."""

    status: int = 8

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidInputError(LoraGuardError, ValueError):
    """Bad arguments or text: empty, NUL bytes, invalid UTF-8, a closed handle."""

    status = 1


class FileAccessError(LoraGuardError, OSError):
    """A model or guard file is missing or unreadable."""

    status = 2


class FileFormatError(LoraGuardError):
    """A file is not a valid GGUF model or guard (truncated, corrupt, a plain LoRA without a head)."""

    status = 3


class ModelMismatchError(LoraGuardError):
    """The guard was built for another base model."""

    status = 4


class InputTooLongError(InvalidInputError):
    """Input longer than the guard context under the 'error' overflow policy."""

    status = 5


class BackendError(LoraGuardError):
    """llama.cpp failed to allocate or compute."""

    status = 6


class FlaggedError(LoraGuardError):
    """A guarded generation stopped because its guard flagged the conversation (C API: LG_FLAGGED). ``text`` is
    the reply released before the verdict, ``verdict`` the flagged verdict (set by ``Guard.chat`` / ``stream``)."""

    status = 9

    def __init__(self, message: str, text: bytes | str = "", verdict: object | None = None) -> None:
        super().__init__(message)
        self.text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        self.verdict = verdict


_BY_STATUS: dict[int, type[LoraGuardError]] = {
    cls.status: cls
    for cls in (
        InvalidInputError, FileAccessError, FileFormatError, ModelMismatchError, InputTooLongError, BackendError
    )
}


def from_status(status: int, message: str) -> LoraGuardError:
    """The exception for a C API status (used by the native module)."""
    return _BY_STATUS.get(status, LoraGuardError)(message, status)
