"""How far a guarded reply may be shown: the one rule the CLI's chat and the HTTP server share."""

from __future__ import annotations

from .guard import ChatVerdict, GuardResult


class ReplyGate:
    """A reply's generated pieces, released only once a passing verdict has read them.

    Pieces wait in ``pending`` until a verdict that read every one of them passes, and are then released; a
    flagged verdict cuts the reply there, and nothing pending then or added after it is released. A plain guard is
    asked every ``window`` pieces (0: only once generation ends) to judge ``candidate``; an aLoRA guard judges the
    chat in place, its verdicts coming among the pieces, each covering those before it.

    The gate decides nothing about how a verdict is obtained or how released text is shown: each method that
    releases returns the newly released text, for the caller to write to a terminal or stream to a client."""

    def __init__(self, window: int = 0) -> None:
        self.window = window
        self.pending: list[str] = []
        self.released = ""
        self.verdict: GuardResult | None = None  # the last verdict applied
        self.in_place = False  # an aLoRA guard's verdicts come among the pieces: no windows of our own

    def add(self, piece: str) -> None:
        self.pending.append(piece)

    @property
    def candidate(self) -> str:
        """What a verdict must read to release the pending pieces: the whole reply so far, released or not, since
        a guard judges a reply in its context, not a window of it alone."""
        return self.released + "".join(self.pending)

    @property
    def flagged(self) -> bool:
        return self.verdict is not None and self.verdict.flagged

    @property
    def window_due(self) -> bool:
        """A plain guard's window of pieces is full: judge ``candidate`` now, so harm is cut off before it is all
        generated."""
        return not self.in_place and self.window > 0 and len(self.pending) >= self.window

    @property
    def needs_verdict(self) -> bool:
        """Pending pieces a verdict must read before they are released: with nothing pending, or a reply that is
        all whitespace so far, there is nothing to judge and :meth:`release` lets them through."""
        return bool(self.pending) and bool(self.candidate.strip())

    def apply(self, verdict: GuardResult) -> str:
        """VERDICT read ``candidate``, every pending piece included: a pass releases them (returned joined), a
        flag cuts the reply before them (returns "")."""
        self.verdict = verdict
        return self.release()

    def apply_in_place(self, verdict: ChatVerdict) -> str:
        """:meth:`apply` for an aLoRA guard's verdict, which read every piece generated before it."""
        self.in_place = True
        return self.apply(verdict)

    def release(self) -> str:
        """Releases the pending pieces (returned joined) with no new verdict: for pieces that do not need one
        (:attr:`needs_verdict`) or, in place, those the last verdict read though they come after it (a character
        split across its last token, a stop string's possible beginning). A cut reply stays cut: ""."""
        if self.flagged:
            return ""
        released = "".join(self.pending)
        self.pending.clear()
        self.released += released
        return released
