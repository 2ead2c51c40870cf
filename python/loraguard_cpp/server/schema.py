"""Request bodies of the OpenAI endpoints, checked into plain values with errors that name the bad field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..guard import DEFAULT_SEED, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P


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
    # OpenAI's clients send fields that do not change the answer (user, metadata, store, ...): ignored, not refused.
    # Chat parameters that would change the reply, and which this server does not implement, are refused unless
    # at their neutral value (ChatRequest).
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """An explicit null in an optional field is the field left out (its default), as OpenAI reads it: clients
        serialize None so. A required field stays required."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or (k in fields and fields[k].is_required())}


class ModerationRequest(_Request):
    input: Any = None
    model: StrictStr | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None


def _number(test: Callable[[float], bool]) -> Callable[[Any], bool]:
    """A neutral-value test for a number: a JSON number (not a boolean) that passes ``test``."""
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and test(v)


def _never(_v: Any) -> bool:
    return False


# Chat parameters this server does not implement, each with the test for its neutral value (what a client sends
# when it wants none of it); null (left out) is neutral for all of them. Any other value would change the reply.
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    # OpenAI's
    "tools": lambda v: v == [],
    "functions": lambda v: v == [],
    "tool_choice": lambda v: v in ("none", "auto"),  # with no tools, "auto" calls none
    "function_call": lambda v: v in ("none", "auto"),
    "logit_bias": lambda v: v == {},
    "logprobs": lambda v: v is False,
    "top_logprobs": _number(lambda v: v == 0),
    "presence_penalty": _number(lambda v: v == 0),
    "frequency_penalty": _number(lambda v: v == 0),
    "response_format": lambda v: v == {"type": "text"},
    "modalities": lambda v: v == ["text"],
    "audio": _never,
    "reasoning_effort": _never,
    "verbosity": _never,
    "web_search_options": _never,
    # llama.cpp server's samplers and output options beyond top_k, at the value that switches each off. Those that
    # only tune one of these samplers (repeat_last_n, mirostat_tau, mirostat_eta, dry_base, xtc_threshold, ...)
    # change nothing while it is off, and are ignored like `user`.
    "min_p": _number(lambda v: v == 0),
    "typical_p": _number(lambda v: v == 1),
    "tfs_z": _number(lambda v: v == 1),
    "top_n_sigma": _number(lambda v: v <= 0),
    "repeat_penalty": _number(lambda v: v == 1),
    "mirostat": _number(lambda v: v == 0),
    "dynatemp_range": _number(lambda v: v == 0),
    "dry_multiplier": _number(lambda v: v == 0),
    "xtc_probability": _number(lambda v: v == 0),
    "adaptive_target": _number(lambda v: v < 0),
    "min_keep": _number(lambda v: v in (0, 1)),  # the native top-p keeps at least one token
    "ignore_eos": lambda v: v is False,
    "n_probs": _number(lambda v: v == 0),
    "grammar": lambda v: v == "",
    "json_schema": _never,  # {} is any JSON value to llama.cpp, not free text
    # llama.cpp's sampler order; this server's is fixed (top_k, top_p, temperature). No list is known to mean that
    # order: llama.cpp's default differs between its versions (its README and its code disagree) and a llama.cpp
    # server started with --samplers has another, so even a client echoing "the default" may mean something else.
    "samplers": _never,
}

# One token limit under three names: OpenAI's max_tokens, its successor max_completion_tokens, and llama.cpp
# server's n_predict. A client may send several (an SDK that fills in both OpenAI names): they must agree.
_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "n_predict")


class ChatRequest(_Request):
    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    # _TOKEN_LIMITS, in that order: _one_token_limit compares each with those validated before it
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    n_predict: StrictInt | None = None  # llama.cpp server's (_n_predict)
    temperature: StrictFloat = Field(default=DEFAULT_TEMPERATURE, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: StrictFloat = Field(default=DEFAULT_TOP_P, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: StrictInt = Field(default=DEFAULT_SEED, ge=0, le=2**32 - 1)  # the native sampler's seed is unsigned 32-bit
    stop: list[StrictStr] = Field(default_factory=list)
    n: StrictInt = Field(default=1, ge=1, le=1)
    stream_options: dict[str, Any] | None = None
    # llama.cpp server's, not OpenAI's: 0 is off (llama.cpp's <= 0, a negative one refused); int32 natively
    top_k: StrictInt = Field(default=DEFAULT_TOP_K, ge=0, le=2**31 - 1)
    # _NEUTRAL's parameters: refused unless left out or at their neutral value (_unsupported)
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    logit_bias: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    min_p: Any = None
    typical_p: Any = None
    tfs_z: Any = None
    top_n_sigma: Any = None
    repeat_penalty: Any = None
    mirostat: Any = None
    dynatemp_range: Any = None
    dry_multiplier: Any = None
    xtc_probability: Any = None
    adaptive_target: Any = None
    min_keep: Any = None
    ignore_eos: Any = None
    n_probs: Any = None
    grammar: Any = None
    json_schema: Any = None
    samplers: Any = None

    @field_validator("n_predict")
    @classmethod
    def _n_predict(cls, limit: int) -> int | None:
        """llama.cpp's -1 is its default (no limit but the context's): here, as null, this server's default limit.
        0 (llama.cpp: read the prompt, generate nothing) would answer with no reply at all."""
        if limit == -1:
            return None
        if limit < 1:
            raise PydanticCustomError(
                "value_error", "must be a positive token limit, or -1 for the server's default (got {limit})",
                {"limit": limit},
            )
        return limit

    @field_validator(*_TOKEN_LIMITS)
    @classmethod
    def _one_token_limit(cls, limit: int | None, info: ValidationInfo) -> int | None:
        # Runs after _n_predict (validators of a field run in the order defined): an n_predict of -1 is None here
        for earlier in _TOKEN_LIMITS:
            other = info.data.get(earlier)  # info.data holds only the fields before this one
            if limit is not None and other is not None and other != limit:
                raise PydanticCustomError(
                    "value_error", "{limit} disagrees with {earlier} {other}: both name the reply's token limit; "
                    "send one of them", {"limit": limit, "earlier": earlier, "other": other},
                )
        return limit

    def token_limit(self) -> tuple[str, int] | None:
        """(the field it was sent in, the reply's token limit), or None where none was sent (the server's
        default). Sent in several fields, the values agree (_one_token_limit): the first is named."""
        for name in _TOKEN_LIMITS:
            limit = getattr(self, name)
            if limit is not None:
                return name, limit
        return None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        """OpenAI's ``stop``: one string or an array of them (null is left out: _null_is_default)."""
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stops: list[str]) -> list[str]:
        for i, stop in enumerate(stops):
            problem = "is empty" if not stop else _native_text_problem(stop)
            if problem:
                raise PydanticCustomError("value_error", "stop[{i}] {problem}", {"i": i, "problem": problem})
        return stops

    @field_validator(*_NEUTRAL)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if value is not None and name is not None and not _NEUTRAL[name](value):
            raise PydanticCustomError(
                "unsupported_parameter", "this server does not support {name} (got {value}): leave it out",
                {"name": name, "value": json.dumps(value)[:100]},
            )
        return value


def parse_body(raw: bytes, model: type[_Request]) -> Any:
    """JSON bytes to a request model; malformed JSON or a wrong field is a 400 naming the field."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, a number past int's digit limit, deep nesting
        raise APIError(400, f"the request body is not valid JSON ({e}): send a JSON object") from e
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        code = first["type"] if first["type"] == "unsupported_parameter" else None
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code=code) from e


def _native_text_problem(text: str) -> str | None:
    """Why the native runtime cannot take a text, if it cannot: a NUL character, or a lone surrogate."""
    nul = text.find("\0")
    if nul >= 0:
        return f"contains a NUL character (at {nul})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode ({e.reason} at {e.start})"
    return None


def check_text(text: object, param: str, max_chars: int) -> str:
    """One text the guard or the chat model will read: a non-empty str, valid Unicode without NUL, within the limit."""
    if not isinstance(text, str):
        raise APIError(400, f"{param} must be a string, got {type(text).__name__}", param=param)
    if not text.strip():
        raise APIError(400, f"{param} is empty: send text to score", param=param)
    if len(text) > max_chars:
        raise APIError(
            400, f"{param} has {len(text)} characters, the limit is {max_chars} (--max-input-chars)", param=param,
            code="input_too_large",
        )
    problem = _native_text_problem(text)
    if problem:
        raise APIError(400, f"{param} {problem}", param=param)
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
