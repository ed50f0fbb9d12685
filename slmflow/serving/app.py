"""The OpenAI-compatible FastAPI app: `/v1/chat/completions` (plain and SSE), `/v1/models`, health, metrics.

The model loads once, in the background: `/health` answers at once, `/ready` once the model is in.
Every error has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and the server
stays up through all of them. Limits are checked before any work: the API key (401), the body size
(413, counted while reading, so a lying Content-Length does not help), the content type (415; no
Content-Type is read as JSON), the wait queue (429 with Retry-After), then the request itself (400
naming the field, through the one request model in `slmflow.chat.request`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmflow.chat.request import parse_chat_completion
from slmflow.chat.response import chat_completion, chat_completion_chunk
from slmflow.errors import BadRequestError
from slmflow.policy import SamplingSettings
from slmflow.serving.batcher import Accepted, Batcher, Delta, Failed, Finished, QueueFullError, Ticket
from slmflow.serving.engines import ServedModel, load_served_model

log = logging.getLogger(__name__)
CHAT_ROUTE = "/v1/chat/completions"
API_ROUTES = (CHAT_ROUTE, "/v1/models")  # metric labels: a fixed set, whatever paths clients send
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ServerSettings:
    model_uri: str
    api_key: str | None = None
    max_batch_size: int = 16
    max_queue: int = 64
    max_body_bytes: int = 1_000_000


# Response shapes, for the OpenAPI document (and so for schemathesis and clients generated from it).


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    flavor: str
    streaming: Literal["tokens", "whole-answer"]
    context_length: int
    max_batch_size: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "bad request: the field is named in `param`",
        401: "missing or wrong API key",
        413: "request body too large",
        415: "unsupported Content-Type",
        429: "the wait queue is full; retry after `Retry-After` seconds",
        503: "the model is still loading",
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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_response(error: ApiError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "slmflow_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.prompt_tokens = Counter("slmflow_prompt_tokens", "prompt tokens read", registry=self.registry)
        self.completion_tokens = Counter(
            "slmflow_completion_tokens", "completion tokens generated", registry=self.registry
        )
        latency_buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.ttft = Histogram(
            "slmflow_time_to_first_token_seconds",
            "from submission to the first generated text",
            buckets=latency_buckets,
            registry=self.registry,
        )
        self.latency = Histogram(
            "slmflow_request_latency_seconds",
            "chat completion requests, to the last byte",
            buckets=latency_buckets,
            registry=self.registry,
        )
        self.cancelled = Counter(
            "slmflow_cancelled_rows", "rows stopped because their client went away", registry=self.registry
        )
        self.queue_depth = Gauge("slmflow_queue_depth", "requests waiting for a batch", registry=self.registry)
        self.batch_size = Histogram(
            "slmflow_batch_size", "rows generated together", buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry
        )


class _BodyTooLargeError(Exception):
    pass


class LimitsMiddleware:
    """API key, body size and request metrics, as plain ASGI so that a large body is never buffered."""

    def __init__(self, app, settings: ServerSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.expected_authorization = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = (path if path in API_ROUTES else "/v1/other") if path.startswith("/v1/") else None
        started = time.monotonic()
        status: list[int] = []

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            if message["type"] == "http.response.body" and not message.get("more_body") and route and status:
                self.metrics.requests.labels(route=route, status=str(status[0])).inc()
                if path == CHAT_ROUTE:
                    self.metrics.latency.observe(time.monotonic() - started)
            await send(message)

        headers = dict(scope["headers"])
        if route and self.expected_authorization is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected_authorization):
                message = "missing or wrong API key (send 'Authorization: Bearer KEY')"
                await error_response(ApiError(401, message, code="invalid_api_key"))(scope, receive, send_counted)
                return
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await error_response(_too_large(limit))(scope, receive, send_counted)
            return
        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, receive_limited, send_counted)
        except _BodyTooLargeError:
            if status:
                raise
            await error_response(_too_large(limit))(scope, receive, send_counted)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def request_body_schema() -> dict[str, Any]:
    """The OpenAPI schema of a chat completions body, with the limits of the one request model."""
    sampling = SamplingSettings.model_json_schema()["properties"]
    text_part = {
        "type": "object",
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
        "required": ["type", "text"],
    }
    message = {
        "type": "object",
        "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": text_part}]},
        },
        "required": ["role", "content"],
    }
    properties: dict[str, Any] = {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": message, "minItems": 1},
        "stream": {"type": "boolean"},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
            "additionalProperties": False,
        },
    }
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "min_tokens", "stop"):
        schema = {key: value for key, value in sampling[name].items() if key not in ("default", "title")}
        properties[name] = schema
    return {"type": "object", "properties": properties, "required": ["messages"]}


def create_app(settings: ServerSettings, load=load_served_model) -> FastAPI:
    """The app; the model is loaded by `load(model_uri)` in a background thread at startup."""
    metrics = Metrics()
    state: dict[str, Any] = {"served": None, "batcher": None, "load_error": None}
    metrics.queue_depth.set_function(lambda: state["batcher"].queue_depth if state["batcher"] else 0)

    def load_model() -> None:
        try:
            served: ServedModel = load(settings.model_uri)
            state["batcher"] = Batcher(
                served.engine,
                settings.max_batch_size,
                settings.max_queue,
                on_batch=metrics.batch_size.observe,
                on_cancel=metrics.cancelled.inc,
            )
            state["served"] = served
            log.info("model loaded: %s (%s)", served.name, served.flavor)
        except Exception as error:
            log.exception("the model could not be loaded")
            state["load_error"] = error

    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=load_model, name="slmflow-load", daemon=True)
        loader.start()
        yield
        if state["batcher"] is not None:
            state["batcher"].close()

    app = FastAPI(title="slmflow OpenAI-compatible server", version="1", lifespan=lifespan)
    app.add_middleware(LimitsMiddleware, settings=settings, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(ApiError(error.status_code, str(error.detail), headers=error.headers))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("unexpected error %s", error_id, exc_info=error)
        return error_response(ApiError(500, f"internal error (id {error_id})", "server_error"))

    def ready_model() -> tuple[ServedModel, Batcher]:
        if state["served"] is None:
            message = "the model failed to load" if state["load_error"] else "the model is still loading"
            raise ApiError(
                503, message, "server_error", code="model_not_ready", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            )
        return state["served"], state["batcher"]

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: ERROR_RESPONSES[503]})
    async def ready() -> dict[str, str]:
        """The model is loaded and requests are answered."""
        served, _ = ready_model()
        return {"status": "ready", "model": served.name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def models() -> dict[str, Any]:
        served, batcher = ready_model()
        card = {
            "id": served.name,
            "object": "model",
            "created": served.created,
            "owned_by": "slmflow",
            "flavor": served.flavor,
            "streaming": "tokens" if served.streams_tokens else "whole-answer",
            "context_length": served.context_length,
            "max_batch_size": batcher.max_batch_size,
        }
        return {"object": "list", "data": [card]}

    @app.post(
        CHAT_ROUTE,
        response_model=ChatCompletion,
        responses={
            **ERROR_RESPONSES,
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "a chat.completion, or with stream: true server-sent chat.completion.chunk events",
            },
        },
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_body_schema()}}}
        },
    )
    async def chat_completions(request: Request) -> Response:
        served, batcher = ready_model()
        body = await read_json(request)
        try:
            parsed = parse_chat_completion(body, served.defaults)
        except BadRequestError as error:
            raise bad_request(error) from None
        try:
            ticket = batcher.submit(parsed.request, stream=parsed.stream)
        except QueueFullError:
            raise ApiError(
                429,
                f"the server is busy: {batcher.max_queue} requests are already waiting; retry later",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        if parsed.stream:
            try:
                await accepted(ticket)
            except BaseException:
                ticket.cancel()
                raise
            return StreamingResponse(
                stream_events(ticket, served.name, parsed.include_usage, metrics),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        completion = await until_finished_or_disconnected(request, ticket)
        record(metrics, ticket, completion)
        return JSONResponse(
            chat_completion(
                completion.text,
                completion.finish_reason,
                completion.prompt_tokens,
                completion.completion_tokens,
                served.name,
            )
        )

    return app


async def read_json(request: Request) -> Any:
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media_type = content_type.split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise ApiError(
                415, f"Content-Type must be application/json, got {content_type[:100]!r}", code="unsupported_media_type"
            )
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, f"the request body is not valid JSON: {str(error)[:200]}", code="invalid_json") from None


async def accepted(ticket: Ticket) -> None:
    """Wait until the engine took a streaming request (or refused it: then raise the 400 before the stream)."""
    event = await ticket.next_event()
    if isinstance(event, Failed):
        raise_failure(event.error)
    assert isinstance(event, Accepted), event


def raise_failure(error: BaseException) -> None:
    if isinstance(error, BadRequestError):
        raise bad_request(error) from None
    raise error


def bad_request(error: BadRequestError) -> ApiError:
    return ApiError(400, str(error), param=error.param, code=error.code)


async def until_finished_or_disconnected(request: Request, ticket: Ticket):
    """The completion; if the client goes away first, its row is cancelled."""

    async def finished():
        while True:
            event = await ticket.next_event()
            if isinstance(event, Finished):
                return event.completion
            if isinstance(event, Failed):
                raise_failure(event.error)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    answer = asyncio.ensure_future(finished())
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not answer.done():
            answer.cancel()
            ticket.cancel()
    if answer.cancelled():  # nobody is left to read it; the metrics count it as 499, as nginx does
        raise ApiError(499, "the client closed the request", code="client_closed_request")
    return answer.result()


def record(metrics: Metrics, ticket: Ticket, completion) -> None:
    metrics.prompt_tokens.inc(completion.prompt_tokens)
    metrics.completion_tokens.inc(completion.completion_tokens)
    if ticket.first_token_at is not None:
        metrics.ttft.observe(ticket.first_token_at - ticket.submitted_at)


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def stream_events(ticket: Ticket, model: str, include_usage: bool, metrics: Metrics) -> AsyncIterator[str]:
    """Server-sent `chat.completion.chunk` events as tokens decode, then `data: [DONE]`."""
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        payload = chat_completion_chunk(completion_id, delta, finish_reason, model)
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = await ticket.next_event()
            if isinstance(event, Delta):
                yield chunk({"content": event.text})
            elif isinstance(event, Finished):
                completion = event.completion
                record(metrics, ticket, completion)
                yield chunk({}, completion.finish_reason)
                if include_usage:
                    final = chat_completion_chunk(completion_id, {}, None, model)
                    final["choices"] = []
                    final["usage"] = {
                        "prompt_tokens": completion.prompt_tokens,
                        "completion_tokens": completion.completion_tokens,
                        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                    }
                    yield sse(final)
                break
            elif isinstance(event, Failed):
                log.error("generation failed mid-stream", exc_info=event.error)
                yield sse(
                    {"error": {"message": "generation failed", "type": "server_error", "param": None, "code": None}}
                )
                break
        yield "data: [DONE]\n\n"
    finally:
        ticket.cancel()  # a no-op once finished; stops the row if the client went away
