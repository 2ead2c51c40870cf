"""What a guard judges of a conversation: the one rule the CLI's chat and the HTTP server share."""

from __future__ import annotations

from collections.abc import Sequence


def conversation_inputs(messages: Sequence[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """Every message the chat model reads, as the guard judges it: an assistant message (a reply the model gave, or
    one a client says it gave) paired with the user message before it, any other message (system, user) as a
    prompt. A stateless API cannot trust that earlier turns of a history were guarded when they were sent, nor that
    they were sent at all."""
    inputs: list[tuple[str, str | None]] = []
    last_user: str | None = None
    for role, content in messages:
        inputs.append((last_user, content) if role == "assistant" and last_user is not None else (content, None))
        if role == "user":
            last_user = content
    return inputs
