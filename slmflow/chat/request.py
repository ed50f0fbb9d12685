"""The one typed chat request model: messages, prompts, OpenAI fields and their validation.

Every entry point goes through it: the pyfunc model (`mlflow models serve`, Python, Spark) and the
OpenAI-compatible server. Settings and limits are the generation policy's (`slmflow.policy`).
Parsing is strict on purpose: a bad request fails with one `BadRequestError` naming the field, never
with a silently wrong answer. Error messages quote at most `QUOTE_CHARS` characters of the input.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from slmflow.errors import BadRequestError
from slmflow.policy import (
    DEFAULT_SETTINGS,
    SAMPLING_FIELDS,
    RequestLimits,
    ResponseFormat,
    SamplingSettings,
    Strict,
    plain,
    refuse_control_characters,
)

ROLES = ("system", "user", "assistant")
DEFAULT_LIMITS = RequestLimits()
QUOTE_CHARS = 200


def _at(where: str) -> str:
    return f"{where}: " if where else ""


_QUOTER = reprlib.Repr()
_QUOTER.maxstring = _QUOTER.maxother = QUOTE_CHARS


def quote(value: Any) -> str:
    """A short representation of user input for an error message (never the whole input)."""
    text = _QUOTER.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


class ChatRequest(Strict):
    """One row: either chat `messages` or a raw, already formatted `prompt`, with its settings."""

    settings: SamplingSettings = DEFAULT_SETTINGS
    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def chat_messages(self) -> tuple[dict[str, str], ...]:
        """The messages of a chat row; a prompt row has none, and asking for them is a bug."""
        if self.messages is None:
            raise TypeError("a prompt row has no chat messages")
        return self.messages

    def text_length(self) -> int:
        """Characters of user text: a cheap lower bound on the prompt's size, known before tokenizing."""
        if self.messages is None:
            return len(self.prompt or "")
        return sum(len(message["content"]) for message in self.messages)


# OpenAI fields this model does not implement: their default values pass, anything else is refused.
# `response_format` is allowed where the model has constrained decoding (`STRUCTURED_OUTPUTS`).
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "stream": (False,),
}
STRUCTURED_OUTPUTS = ("response_format",)
# Accepted and ignored: they do not change the answer.
IGNORED_FIELDS = ("model", "user", "metadata", "store", "service_tier", "parallel_tool_calls")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def _is_default(value: Any, defaults: tuple[Any, ...]) -> bool:
    value = plain(value)
    return any(value == default and isinstance(value, bool) == isinstance(default, bool) for default in defaults)


def refuse_unsupported(source: Mapping[str, Any], where: str, allow: tuple[str, ...] = ()) -> None:
    """Refuse OpenAI fields we cannot honour, unless they hold their default value."""
    for name, defaults in UNSUPPORTED_FIELDS.items():
        if name in allow or name not in source or _is_missing(plain(source[name])):
            continue
        if not _is_default(source[name], defaults):
            raise BadRequestError(
                f"{_at(where)}'{name}' is not supported by this model (got {quote(plain(source[name]))})",
                param=name,
                code="unsupported_parameter",
            )


def parse_messages(
    messages: Any, where: str = "", max_messages: int = DEFAULT_LIMITS.max_messages
) -> tuple[dict[str, str], ...]:
    """OpenAI chat messages as role/content pairs; content may be a string or a list of text parts.
    Their number is bounded first: each one costs template rendering and tokens, even empty."""
    messages = plain(messages)
    if not isinstance(messages, list | tuple):
        raise BadRequestError(f"{_at(where)}'messages' must be a list of messages, got {quote(messages)}", "messages")
    if not messages:
        raise BadRequestError(f"{_at(where)}'messages' is empty", "messages")
    if len(messages) > max_messages:
        raise BadRequestError(
            f"{_at(where)}'messages' holds {len(messages)} messages, more than the limit of {max_messages}",
            "messages",
            code="too_many_messages",
        )
    parsed = []
    for position, message in enumerate(messages):
        param = f"messages[{position}]"
        if not isinstance(message, Mapping):
            raise BadRequestError(f"{_at(where)}{param} must be an object with 'role' and 'content'", param)
        role = message.get("role")
        if role not in ROLES:
            raise BadRequestError(
                f"{_at(where)}{param}: unknown role {quote(role)} (expected one of {', '.join(ROLES)})", f"{param}.role"
            )
        for name in ("tool_calls", "function_call"):
            if not _is_missing(message.get(name)) and message.get(name) != []:
                raise BadRequestError(f"{_at(where)}{param}.{name} is not supported by this model", f"{param}.{name}")
        content = _content_text(message.get("content"), where, f"{param}.content")
        parsed.append({"role": role, "content": content})
    if parsed[-1]["role"] == "assistant":
        raise BadRequestError(f"{_at(where)}the last message must not be the assistant's", "messages")
    return tuple(parsed)


def _content_text(content: Any, where: str, param: str) -> str:
    label = f"{_at(where)}{param}"
    content = plain(content)
    if content is None:
        raise BadRequestError(f"{label}: missing", param)
    if isinstance(content, list):  # OpenAI content parts: only text parts can be read by this model
        texts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise BadRequestError(f"{label}: only text parts are supported, got {quote(part)}", param)
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise BadRequestError(f"{label} must be a string, got {type(content).__name__} {quote(content)}", param)
    try:
        return refuse_control_characters(content)
    except ValueError as error:
        raise BadRequestError(f"{label} {error}", param) from None


def _settings(base: SamplingSettings, source: Mapping[str, Any], where: str) -> SamplingSettings:
    """`base` with the sampling fields that `source` gives; a field that fails is named."""
    changes: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        if name in source and not _is_missing(plain(source[name])):
            changes[name] = source[name]
    if "max_completion_tokens" in source and not _is_missing(plain(source["max_completion_tokens"])):
        changes.setdefault("max_tokens", source["max_completion_tokens"])  # OpenAI's newer name
    if "response_format" in source and not _is_missing(plain(source["response_format"])):
        changes["response_format"] = parse_response_format(source["response_format"], where)
    if not changes:
        return base
    if "max_tokens" in changes:
        changes["max_tokens_explicit"] = True
    try:
        return SamplingSettings.model_validate({**base.model_dump(), **changes})
    except ValidationError as error:
        raise _bad_request(error, where) from None


JSON_OBJECT_SCHEMA = {"type": "object"}
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # as OpenAI


def parse_response_format(value: Any, where: str = "") -> ResponseFormat | None:
    """OpenAI's `response_format` (an object, or its JSON text as a text column holds it); None for text.

    Only its shape is checked here; whether the runtime can compile the schema, the engine checks."""
    label, param = f"{_at(where)}'response_format'", "response_format"
    value = _json_value(value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise BadRequestError(f"{label} is not valid JSON ({error})", param) from None
    kinds = {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"}}
    if not isinstance(value, Mapping) or value.get("type") not in kinds:
        raise BadRequestError(
            f"{label} must be an object whose 'type' is one of {', '.join(kinds)}, got {quote(value)}", param
        )
    kind = value["type"]
    extra = sorted(set(value) - kinds[kind])
    if extra:
        raise BadRequestError(f"{label}: unknown field {quote(extra[0])} for type {kind}", param)
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(json_schema=json.dumps(JSON_OBJECT_SCHEMA))
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping) or set(spec) - {"name", "description", "schema", "strict"}:
        raise BadRequestError(
            f"{label}: 'json_schema' must be an object with 'name' and 'schema' (and optionally 'description', "
            f"'strict'), got {quote(spec)}",
            param,
        )
    name, schema = spec.get("name"), spec.get("schema", {})
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise BadRequestError(f"{label}: 'json_schema.name' must be 1 to 64 of a-z, A-Z, 0-9, _ and -", param)
    if not isinstance(schema, Mapping):
        raise BadRequestError(f"{label}: 'json_schema.schema' must be a JSON Schema object, got {quote(schema)}", param)
    if not isinstance(spec.get("strict", False), bool):
        raise BadRequestError(f"{label}: 'json_schema.strict' must be a boolean", param)
    return ResponseFormat(json_schema=json.dumps(schema, sort_keys=True))


def _json_value(value: Any) -> Any:
    """Nested numpy values (what a DataFrame or Spark row holds) as plain JSON values."""
    value = plain(value)
    if isinstance(value, Mapping):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return value


def _bad_request(error: ValidationError, where: str) -> BadRequestError:
    problem = error.errors()[0]
    field = ".".join(str(part) for part in problem["loc"])
    message = problem["msg"].removeprefix("Value error, ")
    if field:
        return BadRequestError(f"{_at(where)}'{field}': {message}, got {quote(problem['input'])}", param=field)
    param = next((name for name in ("min_tokens", "max_tokens") if name in message), None)
    return BadRequestError(f"{_at(where)}{message}", param=param)


def parse_requests(
    model_input: Any,
    params: Mapping[str, Any] | None,
    defaults: SamplingSettings = DEFAULT_SETTINGS,
    limits: RequestLimits | None = None,
) -> list[ChatRequest]:
    """Rows from whatever pyfunc hands over (DataFrame, dict, list of dicts, strings), validated.

    Request fields may come per row or as `params` (a row's own value wins)."""
    limits = limits or DEFAULT_LIMITS
    rows = _rows(model_input)
    if not rows:
        raise BadRequestError("the request holds no rows")
    if len(rows) > limits.max_rows:
        raise BadRequestError(
            f"the request holds {len(rows)} rows, more than the limit of {limits.max_rows}", code="too_many_rows"
        )
    params = dict(params or {})
    refuse_unsupported(params, "params", allow=STRUCTURED_OUTPUTS)
    base = _settings(defaults, params, where="params")
    requests = [_parse_row(row, base, index, limits.max_messages) for index, row in enumerate(rows)]
    _check_characters(requests, limits)
    return requests


def _check_characters(requests: Sequence[ChatRequest], limits: RequestLimits) -> None:
    characters = sum(request.text_length() for request in requests)
    if characters > limits.max_request_chars:
        raise BadRequestError(
            f"the request's 'messages' and 'prompt' hold {characters} characters, more than the limit of "
            f"{limits.max_request_chars}",
            param="messages",
            code="request_too_large",
        )


def _rows(model_input: Any) -> list[Any]:
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        return [
            {k: v for k, v in record.items() if not _is_missing(plain(v))}
            for record in model_input.to_dict(orient="records")
        ]
    if isinstance(model_input, Mapping):
        return [model_input]
    if isinstance(model_input, str):
        return [{"prompt": model_input}]
    if isinstance(model_input, Sequence):
        return [{"prompt": item} if isinstance(item, str) else item for item in model_input]
    raise BadRequestError(f"unsupported input type {type(model_input).__name__}")


def _parse_row(row: Any, base: SamplingSettings, index: int, max_messages: int) -> ChatRequest:
    where = f"row {index}"
    if not isinstance(row, Mapping):
        raise BadRequestError(f"{_at(where)}expected an object, got {type(row).__name__}")
    refuse_unsupported(row, where, allow=STRUCTURED_OUTPUTS)
    has_messages, has_prompt = "messages" in row, "prompt" in row
    if has_messages == has_prompt:
        raise BadRequestError(f"{_at(where)}give exactly one of 'messages' or 'prompt'", "messages")
    settings = _settings(base, row, where)
    if has_prompt:
        prompt = plain(row["prompt"])
        if not isinstance(prompt, str) or not prompt:
            raise BadRequestError(f"{_at(where)}'prompt' must be a non-empty string, got {quote(prompt)}", "prompt")
        try:
            refuse_control_characters(prompt)
        except ValueError as error:
            raise BadRequestError(f"{_at(where)}'prompt' {error}", "prompt") from None
        return ChatRequest(settings=settings, prompt=prompt)
    return ChatRequest(settings=settings, messages=parse_messages(row["messages"], where, max_messages))


class ChatCompletionRequest(Strict):
    """A parsed OpenAI `/v1/chat/completions` body: the row to generate and how to answer it."""

    request: ChatRequest
    model: str | None = None
    stream: bool = False
    include_usage: bool = False


def parse_chat_completion(
    body: Any,
    defaults: SamplingSettings = DEFAULT_SETTINGS,
    limits: RequestLimits | None = None,
    structured_outputs: bool = False,
) -> ChatCompletionRequest:
    """An OpenAI chat completions JSON body, validated; raises BadRequestError naming the field.

    `response_format` (other than text) is refused unless the served model has constrained decoding
    (`structured_outputs`): onnx-chat has, transformers-chat has not."""
    if not isinstance(body, Mapping):
        raise BadRequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    known = {"messages", "stream_options", *SAMPLING_FIELDS, "max_completion_tokens", *UNSUPPORTED_FIELDS}
    unknown = sorted(set(body) - known - set(IGNORED_FIELDS))
    if unknown:
        raise BadRequestError(f"unknown field {quote(unknown[0])}", param=str(unknown[0])[:QUOTE_CHARS])
    refuse_unsupported(body, "", allow=("stream", *STRUCTURED_OUTPUTS) if structured_outputs else ("stream",))
    if "messages" not in body:
        raise BadRequestError("'messages' is required", "messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequestError(f"'stream' must be a boolean, got {quote(stream)}", "stream")
    include_usage = _include_usage(body.get("stream_options"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequestError(f"'model' must be a string, got {quote(model)}", "model")
    limits = limits or DEFAULT_LIMITS
    messages = parse_messages(body["messages"], max_messages=limits.max_messages)
    request = ChatRequest(settings=_settings(defaults, body, ""), messages=messages)
    _check_characters([request], limits)
    return ChatCompletionRequest(request=request, model=model, stream=bool(stream), include_usage=include_usage)


def _include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, Mapping) or set(options) - {"include_usage"}:
        raise BadRequestError(
            f"'stream_options' must be {{\"include_usage\": bool}}, got {quote(options)}", "stream_options"
        )
    value = options.get("include_usage", False)
    if not isinstance(value, bool):
        raise BadRequestError(
            f"'stream_options.include_usage' must be a boolean, got {quote(value)}", "stream_options.include_usage"
        )
    return value
