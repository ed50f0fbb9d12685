"""What the OpenAI-compatible server reads and answers, typed once: the request body, the response
shapes (`slmflow.chat.response`'s models, which also build the answers) and the error shape.

The OpenAPI document is generated from these models; the strict parser in `slmflow.chat.request`
checks each body against the same bounds (`slmflow.policy`) and names the field that fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from slmflow.chat.request import ROLES
from slmflow.chat.response import ChatCompletion, ChatCompletionChunk, Usage
from slmflow.policy import (
    MAX_STOP_STRINGS,
    MaxTokens,
    MinTokens,
    Seed,
    Temperature,
    TopK,
    TopP,
)

__all__ = ["ApiError", "ChatCompletion", "ChatCompletionBody", "ChatCompletionChunk", "ModelList", "Usage"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class RequestMessage(_Body):
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str | list[TextPart]


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionBody(_Body):
    """A `/v1/chat/completions` body as this server takes it (OpenAI's fields it does not implement,
    such as `n`, are accepted with their default values only)."""

    model: str | None = None
    messages: list[RequestMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    seed: Seed | None = None
    min_tokens: MinTokens | None = None
    stop: str | list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}'
    )
    # Accepted and ignored, or accepted with OpenAI's default value only.
    user: str | None = None
    n: Literal[1] | None = None
    logprobs: Literal[False] | None = None
    presence_penalty: Literal[0] | None = None
    frequency_penalty: Literal[0] | None = None


class WebhookAnswer(BaseModel):
    status: Literal["accepted", "ignored"]
    routes: list[str] = Field(description="the routes that follow the alias the delivery names")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    """One route's loaded version. `id` is the version that answers (`<name>/<version>`, or the bare name of a
    model that is not registered) and is every answer's `model` field; `route` is the stable name a request can
    give to reach it whichever version serves (`<name>@<alias>` for a followed alias)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "slmflow"
    flavor: str
    streaming: Literal["tokens", "whole-answer"]
    context_length: int
    max_batch_size: int
    max_groups: int  # batches generating at once, stepped in turns (1: static batches)
    route: str
    version: str | None
    alias: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "bad request: the field is named in `param`",
        401: "missing or wrong API key",
        408: "the request's headers or body did not arrive in time",
        413: "request body too large",
        404: "no served model has the name given in `model` (code `model_not_found`)",
        415: "unsupported Content-Type",
        429: "the wait queue is full; retry after `Retry-After` seconds",
        503: "the model is still loading",
        504: "the request did not finish within the model's deadline",
    }.items()
}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = dict(headers) if headers else None


def _encodable(text: str | None) -> str | None:
    """Text a UTF-8 response can carry: a lone surrogate (JSON allows it in names and strings) becomes '?'."""
    return None if text is None else text.encode("utf-8", "replace").decode("utf-8")


def error_response(error: ApiError) -> JSONResponse:
    detail = ErrorDetail(
        message=_encodable(error.message) or "",
        type=error.type,
        param=_encodable(error.param),
        code=error.code,
    )
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=error.status, headers=error.headers)


def request_body_schema() -> dict[str, Any]:
    """The OpenAPI schema of a chat completions body, generated from `ChatCompletionBody`, with its
    definitions inlined (an operation's schema cannot point into its own `$defs`)."""
    schema = ChatCompletionBody.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)
