"""Request bodies of the OpenAI endpoints, checked into plain values with errors that name the bad field."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError


class APIError(Exception):
    """An error answered as OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    # OpenAI's clients send fields this server does not use (user, metadata, ...): ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class ModerationRequest(_Request):
    input: Any = None
    model: StrictStr | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None


class ChatRequest(_Request):
    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    seed: StrictInt = 0
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = Field(default=1, ge=1, le=1)
    stream_options: dict[str, Any] | None = None


def parse_body(raw: bytes, model: type[_Request]) -> Any:
    """JSON bytes to a request model; malformed JSON or a wrong field is a 400 naming the field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e}): send a JSON object") from e
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from e


def check_text(text: object, param: str, max_chars: int) -> str:
    """One text the guard or the chat model will read: a non-empty str, valid Unicode, within the limit."""
    if not isinstance(text, str):
        raise APIError(400, f"{param} must be a string, got {type(text).__name__}", param=param)
    if not text.strip():
        raise APIError(400, f"{param} is empty: send text to score", param=param)
    if len(text) > max_chars:
        raise APIError(
            400, f"{param} has {len(text)} characters, the limit is {max_chars} (--max-input-chars)", param=param,
            code="input_too_large",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(400, f"{param} is not valid Unicode ({e.reason} at {e.start})", param=param) from e
    return text


def _text_part(part: object, where: str, max_chars: int) -> str:
    if not isinstance(part, dict) or part.get("type") != "text":
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        raise APIError(400, f"{where} is a {kind!r} part: this server reads text parts only", param=where)
    return check_text(part.get("text"), f"{where}.text", max_chars)


def text_of_parts(value: object, param: str, max_chars: int) -> str:
    """A message's content: a string, or OpenAI's content parts, of which only text is accepted (joined)."""
    if isinstance(value, str):
        return check_text(value, param, max_chars)
    if isinstance(value, list) and value:
        texts = [_text_part(part, f"{param}[{i}]", max_chars) for i, part in enumerate(value)]
        return check_text("\n".join(texts), param, max_chars)
    raise APIError(400, f"{param} must be a string or a non-empty array of text parts", param=param)


def moderation_inputs(value: object, max_chars: int, max_inputs: int) -> list[str]:
    """``input`` of /v1/moderations: a string, an array of strings, or an array of content parts (one input
    per text part)."""
    if isinstance(value, str):
        return [check_text(value, "input", max_chars)]
    if not isinstance(value, list) or not value:
        raise APIError(400, "input must be a string or a non-empty array of strings or text parts", param="input")
    if len(value) > max_inputs:
        raise APIError(
            400, f"input has {len(value)} items, the limit is {max_inputs} (--max-inputs)", param="input",
            code="too_many_inputs",
        )
    texts = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        is_str = isinstance(item, str)
        texts.append(check_text(item, where, max_chars) if is_str else _text_part(item, where, max_chars))
    return texts
