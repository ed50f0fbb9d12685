"""OpenAI chat request parsing and response shapes, shared by the ONNX model and the evaluation.

Parsing is strict on purpose: a bad request must fail with a message that names the field,
never generate a silently wrong answer.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

ROLES = ("system", "user", "assistant")
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "min_tokens")


class BadRequestError(ValueError):
    """A request the model refuses; served as HTTP 400 with this message."""


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    max_tokens_explicit: bool = field(default=False, compare=False)

    def batch_key(self) -> tuple:
        """Rows with equal keys can share one generator (stop strings and max_tokens are handled per row;
        min_tokens is not: it holds back EOS for the whole batch)."""
        return (self.temperature, self.top_p, self.top_k, self.seed, self.min_tokens)


@dataclass(frozen=True)
class ChatRequest:
    """One row: either chat `messages` or a raw, already formatted `prompt`."""

    settings: SamplingSettings
    messages: tuple[Mapping[str, str], ...] | None = None
    prompt: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def parse_requests(model_input: Any, params: Mapping[str, Any] | None, defaults: SamplingSettings) -> list[ChatRequest]:
    """Turn whatever pyfunc hands us (DataFrame, dict, list of dicts, strings) into validated rows."""
    rows = _rows(model_input)
    if not rows:
        raise BadRequestError("the request holds no rows")
    base = _apply_fields(defaults, params or {}, where="params")
    return [_parse_row(row, base, index) for index, row in enumerate(rows)]


def _rows(model_input: Any) -> list[Mapping[str, Any]]:
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        return [
            {k: v for k, v in record.items() if not _is_missing(v)} for record in model_input.to_dict(orient="records")
        ]
    if isinstance(model_input, Mapping):
        return [model_input]
    if isinstance(model_input, str):
        return [{"prompt": model_input}]
    if isinstance(model_input, Sequence):
        return [{"prompt": item} if isinstance(item, str) else item for item in model_input]
    raise BadRequestError(f"unsupported input type {type(model_input).__name__}")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def _parse_row(row: Any, base: SamplingSettings, index: int) -> ChatRequest:
    if not isinstance(row, Mapping):
        raise BadRequestError(f"row {index}: expected an object, got {type(row).__name__}")
    where = f"row {index}"
    has_messages, has_prompt = "messages" in row, "prompt" in row
    if has_messages == has_prompt:
        raise BadRequestError(f"{where}: give exactly one of 'messages' or 'prompt'")
    settings = _apply_fields(base, row, where=where)
    if has_prompt:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise BadRequestError(f"{where}: 'prompt' must be a non-empty string")
        return ChatRequest(settings=settings, prompt=row["prompt"])
    return ChatRequest(settings=settings, messages=parse_messages(row["messages"], where))


def parse_messages(messages: Any, where: str = "request") -> tuple[Mapping[str, str], ...]:
    if hasattr(messages, "tolist"):
        messages = messages.tolist()
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise BadRequestError(f"{where}: 'messages' must be a list of messages")
    if not messages:
        raise BadRequestError(f"{where}: 'messages' is empty")
    parsed = []
    for position, message in enumerate(messages):
        label = f"{where}: messages[{position}]"
        if not isinstance(message, Mapping):
            raise BadRequestError(f"{label} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequestError(f"{label}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if "content" not in message or message["content"] is None:
            raise BadRequestError(f"{label}: missing 'content'")
        if not isinstance(message["content"], str):
            raise BadRequestError(f"{label}: 'content' must be a string, got {type(message['content']).__name__}")
        parsed.append({"role": role, "content": message["content"]})
    if parsed[-1]["role"] == "assistant":
        raise BadRequestError(f"{where}: the last message must not be the assistant's")
    return tuple(parsed)


def _apply_fields(settings: SamplingSettings, source: Mapping[str, Any], where: str) -> SamplingSettings:
    changes: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        if name not in source or _is_missing(source[name]):
            continue
        value = source[name]
        label = f"{where}: '{name}'"
        if name == "stop":
            changes["stop"] = _stop_strings(value, label)
        elif name in ("max_tokens", "top_k", "seed", "min_tokens"):
            number = _integer(value, label)
            if name == "max_tokens" and number <= 0:
                raise BadRequestError(f"{label} must be > 0, got {number}")
            if name == "top_k" and number < 1:
                raise BadRequestError(f"{label} must be >= 1, got {number}")
            if name == "min_tokens" and number < 0:
                raise BadRequestError(f"{label} must be >= 0, got {number}")
            changes[name] = number
            if name == "max_tokens":
                changes["max_tokens_explicit"] = True
        else:
            number = _real(value, label)
            if name == "temperature" and number < 0:
                raise BadRequestError(f"{label} must be >= 0, got {number}")
            if name == "top_p" and not 0 < number <= 1:
                raise BadRequestError(f"{label} must be in (0, 1], got {number}")
            changes[name] = number
    return replace(settings, **changes) if changes else settings


def _integer(value: Any, label: str) -> int:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value // 1:
        raise BadRequestError(f"{label} must be an integer, got {value!r}")
    return int(value)


def _real(value: Any, label: str) -> float:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise BadRequestError(f"{label} must be a number, got {value!r}")
    return float(value)


def _stop_strings(value: Any, label: str) -> tuple[str, ...]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(s, str) and s for s in value):
        raise BadRequestError(f"{label} must be a non-empty string or a list of them")
    return tuple(value)


def chat_completion(
    content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, model: str
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chat_completion_chunk(
    completion_id: str, delta: dict[str, str], finish_reason: str | None, model: str
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def single_prediction(prediction: Any) -> Any:
    """One request's prediction, whether a flavor returns it alone or as a list of one."""
    if isinstance(prediction, list | tuple):
        if len(prediction) != 1:
            raise ValueError(f"expected one prediction, got {len(prediction)}")
        return prediction[0]
    return prediction


def answer_text(prediction: Any) -> str:
    """The assistant's text from any flavor's prediction (a completion dict, a list of them, a string)."""
    prediction = single_prediction(prediction)
    if isinstance(prediction, str):
        return prediction
    if isinstance(prediction, Mapping) and "choices" in prediction:
        return prediction["choices"][0]["message"]["content"] or ""
    raise ValueError(f"unrecognised prediction shape: {type(prediction).__name__}")
