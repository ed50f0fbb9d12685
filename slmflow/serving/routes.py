"""The routes' work, apart from the app's wiring: reading a body, waiting for an answer or a disconnect,
and streaming server-sent events.

A client that leaves (while sending its body, or while waiting for a plain answer) is a 499, as
nginx counts it, logged in one calm line; its row, queued or generating, is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from slmflow.chat.onnx.rows import Completion
from slmflow.chat.response import ChatCompletionChunk, ChunkChoice, ChunkDelta, FinishReason, Usage
from slmflow.errors import BadRequestError, DeadlineExceededError
from slmflow.serving.batcher import Accepted, Delta, Failed, Finished, Ticket
from slmflow.serving.metrics import Metrics
from slmflow.serving.protocol import ApiError

log = logging.getLogger(__name__)


class NotJson:
    """A constant Python's JSON reader accepts but JSON does not have (NaN, Infinity, -Infinity)."""

    def __init__(self, name: str) -> None:
        self.name = name


def client_closed() -> ApiError:
    return ApiError(499, "the client closed the request", code="client_closed_request")


async def read_json(request: Request) -> Any:
    """The body as JSON (no Content-Type is read as JSON); 415, 400 naming a NaN's field, or 499."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media_type = content_type.split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise ApiError(
                415, f"Content-Type must be application/json, got {content_type[:100]!r}", code="unsupported_media_type"
            )
    try:
        raw = await request.body()
    except ClientDisconnect:
        log.info("client left while sending its body")
        raise client_closed() from None
    try:
        body = await asyncio.to_thread(json.loads, raw, parse_constant=NotJson)  # a large body off the event loop
    except (ValueError, RecursionError) as error:
        raise ApiError(400, f"the request body is not valid JSON: {str(error)[:200]}", code="invalid_json") from None
    refuse_non_json_constants(body)
    return body


def refuse_non_json_constants(value: Any, path: str = "") -> None:
    """Raise a 400 naming the first field that holds NaN or an infinity."""
    if isinstance(value, NotJson) or (isinstance(value, float) and not math.isfinite(value)):
        name = value.name if isinstance(value, NotJson) else repr(value)
        raise ApiError(400, f"'{path or 'body'}': {name} is not JSON (a number must be finite)", param=path or None)
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        child_path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        refuse_non_json_constants(child, child_path)


def api_error(error: BaseException) -> BaseException:
    """The HTTP error for a request the model refused or could not finish."""
    if isinstance(error, BadRequestError):
        return ApiError(400, str(error), param=error.param, code=error.code)
    if isinstance(error, DeadlineExceededError):
        return ApiError(504, str(error), "timeout_error", code="deadline_exceeded")
    return error


async def accepted(ticket: Ticket) -> None:
    """Wait until the engine took a streaming request (or refused it: then raise the error before the stream)."""
    event = await ticket.next_event()
    if isinstance(event, Failed):
        raise api_error(event.error) from None
    assert isinstance(event, Accepted), event


async def until_finished_or_disconnected(request: Request, ticket: Ticket) -> Completion:
    """The completion; if the client goes away first, its row is cancelled and the answer is a 499."""

    async def finished() -> Completion:
        while True:
            event = await ticket.next_event()
            if isinstance(event, Finished):
                return event.completion
            if isinstance(event, Failed):
                raise api_error(event.error) from None

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    answer = asyncio.ensure_future(finished())
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        gone = not answer.done()
        if gone:
            answer.cancel()
            ticket.cancel()
    if gone:  # nobody is left to read the answer
        log.info("client left while waiting for its answer")
        raise client_closed()
    return answer.result()


def record(metrics: Metrics, ticket: Ticket, completion: Completion) -> None:
    metrics.prompt_tokens.inc(completion.prompt_tokens)
    metrics.completion_tokens.inc(completion.completion_tokens)
    if ticket.first_token_at is not None:
        metrics.ttft.observe(ticket.first_token_at - ticket.submitted_at)


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def stream_events(ticket: Ticket, model: str, include_usage: bool, metrics: Metrics) -> AsyncIterator[str]:
    """Server-sent `chat.completion.chunk` events as tokens decode, then `data: [DONE]`."""
    chunk = _chunk_writer(f"chatcmpl-{uuid.uuid4().hex}", model, include_usage)
    try:
        yield chunk(ChunkDelta(role="assistant", content=""))
        while True:
            event = await ticket.next_event()
            if isinstance(event, Delta):
                yield chunk(ChunkDelta(content=event.text))
                continue
            if isinstance(event, Finished):
                completion = event.completion
                record(metrics, ticket, completion)
                yield chunk(ChunkDelta(), completion.finish_reason)
                if include_usage:
                    yield chunk(None, usage=Usage.of(completion.prompt_tokens, completion.completion_tokens))
            elif isinstance(event, Failed):
                yield _stream_error(event.error)
            break
        yield "data: [DONE]\n\n"
    finally:
        ticket.cancel()  # a no-op once finished; stops the row if the client went away


def _chunk_writer(completion_id: str, model: str, include_usage: bool) -> Callable[..., str]:
    def chunk(delta: ChunkDelta | None, finish_reason: FinishReason | None = None, usage: Usage | None = None) -> str:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish_reason)]
        typed = ChatCompletionChunk(id=completion_id, model=model, choices=choices, usage=usage)
        return sse(typed.payload(include_usage))

    return chunk


def _stream_error(error: BaseException) -> str:
    if isinstance(error, DeadlineExceededError):
        detail = {"message": str(error), "type": "timeout_error", "param": None, "code": "deadline_exceeded"}
    else:
        log.error("generation failed mid-stream", exc_info=error)
        detail = {"message": "generation failed", "type": "server_error", "param": None, "code": None}
    return sse({"error": detail})
