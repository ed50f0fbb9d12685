"""The OpenAI-compatible FastAPI app: `/v1/chat/completions` (plain and SSE), `/v1/models`, health, metrics.

The model loads once, in the background: `/health` answers at once, `/ready` once the model is in.
Every error has OpenAI's shape (`slmflow.serving.protocol`), and the server stays up through all of
them. Limits are checked before any work: the API key (401), the body size (413, counted while
reading) and read time (408), the content type (415), then the request itself against the logged
model's serving policy (400 naming the field), the wait queue (429 with Retry-After), and the
model's deadline (504).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmflow import tags
from slmflow.chat.request import ChatCompletionRequest, parse_chat_completion
from slmflow.chat.response import chat_completion
from slmflow.errors import BadRequestError
from slmflow.serving.batcher import Batcher, QueueFullError, Ticket
from slmflow.serving.engines import ServedModel, load_served_model
from slmflow.serving.metrics import Metrics
from slmflow.serving.middleware import CHAT_ROUTE, BodyLimits, LimitsMiddleware
from slmflow.serving.protocol import (
    ERROR_RESPONSES,
    ApiError,
    ChatCompletion,
    ModelCard,
    ModelList,
    error_response,
    request_body_schema,
)
from slmflow.serving.routes import (
    accepted,
    api_error,
    read_json,
    record,
    stream_events,
    until_finished_or_disconnected,
)

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ServerSettings:
    model_uri: str
    api_key: str | None = None
    max_batch_size: int = 16
    max_queue: int = 64
    max_body_bytes: int = 1_000_000
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0


@dataclass
class ServerState:
    """The loaded model and its batcher, once the background load is done."""

    settings: ServerSettings
    metrics: Metrics = field(default_factory=Metrics)
    served: ServedModel | None = None
    batcher: Batcher | None = None
    load_error: BaseException | None = None

    def load(self, load) -> None:
        try:
            served: ServedModel = load(self.settings.model_uri)
            self.batcher = Batcher(
                served.engine,
                self.settings.max_batch_size,
                self.settings.max_queue,
                limits=served.policy.limits,
                on_batch=self.metrics.batch_size.observe,
                on_cancel=self.metrics.cancelled.inc,
            )
            self.served = served
            log.info("model loaded: %s (%s)", served.name, served.flavor)
        except Exception as error:
            log.exception("the model could not be loaded")
            self.load_error = error

    def ready(self) -> tuple[ServedModel, Batcher]:
        if self.served is None or self.batcher is None:
            message = "the model failed to load" if self.load_error else "the model is still loading"
            raise ApiError(
                503, message, "server_error", code="model_not_ready", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            )
        return self.served, self.batcher


def create_app(settings: ServerSettings, load=load_served_model) -> FastAPI:
    """The app; the model is loaded by `load(model_uri)` in a background thread at startup."""
    state = ServerState(settings)
    state.metrics.queue_depth.set_function(lambda: state.batcher.queue_depth if state.batcher else 0)

    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(load,), name="slmflow-load", daemon=True).start()
        yield
        if state.batcher is not None:
            state.batcher.close()

    app = FastAPI(title="slmflow OpenAI-compatible server", version="1", lifespan=lifespan)
    body = BodyLimits(settings.max_body_bytes, settings.body_timeout_seconds)
    app.add_middleware(LimitsMiddleware, metrics=state.metrics, body=body, api_key=settings.api_key)

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(ApiError(error.status_code, str(error.detail), headers=error.headers))

    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: ERROR_RESPONSES[503]})
    async def ready() -> dict[str, str]:
        """The model is loaded and requests are answered."""
        served, _ = state.ready()
        return {"status": "ready", "model": served.name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def models() -> ModelList:
        served, batcher = state.ready()
        card = ModelCard(
            id=served.name,
            created=served.created,
            flavor=served.flavor,
            streaming="tokens" if served.streams_tokens else "whole-answer",
            context_length=served.context_length,
            max_batch_size=batcher.max_batch_size,
        )
        return ModelList(data=[card])

    _add_chat_route(app, state)


def _add_chat_route(app: FastAPI, state: ServerState) -> None:
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
        served, batcher = state.ready()
        parsed = await _parse(await read_json(request), served)
        ticket = _submit(batcher, parsed)
        if parsed.stream:
            try:
                await accepted(ticket)
            except BaseException:
                ticket.cancel()
                raise
            return StreamingResponse(
                stream_events(ticket, served.name, parsed.include_usage, state.metrics),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        completion = await until_finished_or_disconnected(request, ticket)
        record(state.metrics, ticket, completion)
        return JSONResponse(
            chat_completion(
                completion.text,
                completion.finish_reason,
                completion.prompt_tokens,
                completion.completion_tokens,
                served.name,
            )
        )


async def _parse(body: Any, served: ServedModel) -> ChatCompletionRequest:
    """The body checked against the model's serving policy, off the event loop (a body of many
    messages costs time to check)."""
    policy = served.policy
    try:
        # Constrained decoding is the ONNX engine's: a transformers-chat model refuses response_format.
        structured = served.flavor == tags.ONNX_MODEL_NAME
        return await asyncio.to_thread(parse_chat_completion, body, policy.defaults, policy.limits, structured)
    except BadRequestError as error:
        raise api_error(error) from None


def _submit(batcher: Batcher, parsed: ChatCompletionRequest) -> Ticket:
    try:
        return batcher.submit(parsed.request, stream=parsed.stream)
    except QueueFullError:
        raise ApiError(
            429,
            f"the server is busy: {batcher.max_queue} requests are already waiting; retry later",
            "rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
