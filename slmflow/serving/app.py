"""The OpenAI-compatible FastAPI app: `/v1/chat/completions` (plain and SSE), `/v1/models`, health, metrics.

Each `--model-uri` is a route (`slmflow.serving.routing`), picked by the request's `model` field
(the first is the default; an unknown name is a 404 `model_not_found`). The models load in the
background: `/health` answers at once, `/ready` once every route has its model. A followed alias
(`models:/<name>@champion`) is re-read by `slmflow.serving.follow` (polling, or at once on a signed
MLflow webhook at `/webhooks/mlflow`, `slmflow.serving.webhooks`), and a moved alias's version is
loaded beside the serving one and swapped in between requests.
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
import time
import weakref
from collections.abc import AsyncIterator, Callable
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
from slmflow.serving import webhooks
from slmflow.serving.batcher import Batcher, QueueFullError, Ticket
from slmflow.serving.engines import ServedModel, load_served_model
from slmflow.serving.follow import Follower, registry_version
from slmflow.serving.metrics import Metrics
from slmflow.serving.middleware import CHAT_ROUTE, BodyLimits, LimitsMiddleware
from slmflow.serving.protocol import (
    ERROR_RESPONSES,
    ApiError,
    ChatCompletion,
    ErrorResponse,
    ModelCard,
    ModelList,
    WebhookAnswer,
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
from slmflow.serving.routing import Deployment, Route, RoutingTable, UnknownModelError, model_id
from slmflow.serving.scheduling import DEFAULT_MAX_GROUPS

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 1
WEBHOOK_ROUTE = "/webhooks/mlflow"


@dataclass(frozen=True)
class ServerSettings:
    model_uris: tuple[str, ...]
    api_key: str | None = None
    max_batch_size: int = 16
    max_groups: int = DEFAULT_MAX_GROUPS
    max_queue: int = 64
    max_body_bytes: int = 1_000_000
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    follow_interval_seconds: float = 30.0  # 0: aliases move only on a webhook
    webhook_secret: str | None = field(default=None, repr=False)  # None: no webhook route
    webhook_tolerance_seconds: float = webhooks.DEFAULT_TOLERANCE_SECONDS

    @property
    def model_uri(self) -> str:
        return self.model_uris[0]


@dataclass(frozen=True)
class Loaded:
    """What one deployment serves with: the model and its own batcher."""

    served: ServedModel
    batcher: Batcher


class ServerState:
    """The routes and their loaded versions; the first load happens in the background, then the follower."""

    def __init__(self, settings: ServerSettings, load, resolve=registry_version) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._load = load
        self.load_error: BaseException | None = None
        self.table: RoutingTable[Loaded] = RoutingTable.of(
            list(settings.model_uris),
            lambda uri: uri,  # renamed by its flavor once loaded (`load`)
            on_closed=lambda deployment: log.info("%s drained and closed", deployment.model),
        )
        self.follower = Follower(
            self.table,
            self.deploy,
            settings.follow_interval_seconds,
            resolve=resolve,
            on_swap=lambda route, deployment, trigger: self.metrics.swaps.labels(route.name, trigger).inc(),
        )
        self.resolve = resolve

    def deploy(self, route: Route[Loaded], version: str | None) -> Deployment[Loaded]:
        """Load one version of a route's model, with a batcher of its own."""
        uri = route.ref.version_uri(version) if route.ref is not None and version is not None else route.uri
        served: ServedModel = self._load(uri)
        batcher = Batcher(
            served.engine,
            self.settings.max_batch_size,
            self.settings.max_queue,
            limits=served.policy.limits,
            on_batch=self.metrics.batch_size.observe,
            on_cancel=self.metrics.cancelled.inc,
            max_groups=self.settings.max_groups,
        )
        name = route.ref.name if route.ref is not None else served.name
        return Deployment(model_id(name, version), version, Loaded(served, batcher), close=batcher.close)

    def load(self) -> None:
        """The first version of every route (a followed alias is read once, then loaded by its version),
        then the follower starts."""
        try:
            for route in self.table.routes:
                ref = route.ref
                version = None if ref is None else ref.version or (ref.alias and self.resolve(ref.name, ref.alias))
                deployment = self.deploy(route, version or None)
                if ref is None:  # a URI that names no registered model serves as its flavor (`served_name`)
                    route.name = deployment.model
                route.swap(deployment)
                log.info("%s loaded: %s (%s)", route.name, deployment.model, deployment.served.served.flavor)
        except Exception as error:
            log.exception("the model could not be loaded")
            self.load_error = error
            return
        self.follower.start()

    def close(self) -> None:
        self.follower.stop()
        for route in self.table.routes:
            route.close_all()

    def queue_depth(self) -> int:
        return sum(
            deployment.served.batcher.queue_depth
            for route in self.table.routes
            for deployment in [*([route.current] if route.current else []), *route.draining]
        )

    def not_ready(self) -> ApiError | None:
        if all(route.current is not None for route in self.table.routes):
            return None
        message = "the model failed to load" if self.load_error else "the model is still loading"
        return ApiError(
            503, message, "server_error", code="model_not_ready", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )

    def acquire(self, model: Any) -> tuple[Route[Loaded], Deployment[Loaded]]:
        """The route a request's `model` names and the deployment it will run on (release it after)."""
        refusal = self.not_ready()
        if refusal is not None:
            raise refusal
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", param="model")
        try:
            route = self.table.resolve(model)
        except UnknownModelError as error:
            raise ApiError(404, str(error), param="model", code="model_not_found") from None
        deployment = route.acquire()
        if deployment is None:  # closed by a shutdown
            raise ApiError(503, "the server is shutting down", "server_error", code="model_not_ready")
        return route, deployment


def create_app(settings: ServerSettings, load=load_served_model, resolve=registry_version) -> FastAPI:
    """The app; the models are loaded by `load(model_uri)` in a background thread at startup, and
    followed aliases are read with `resolve(name, alias)`."""
    state = ServerState(settings, load, resolve)
    state.metrics.queue_depth.set_function(state.queue_depth)

    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="slmflow-load", daemon=True).start()
        yield
        await asyncio.to_thread(state.close)

    app = FastAPI(title="slmflow OpenAI-compatible server", version="1", lifespan=lifespan)
    app.state.slmflow = state
    body = BodyLimits(settings.max_body_bytes, settings.body_timeout_seconds)
    app.add_middleware(LimitsMiddleware, metrics=state.metrics, body=body, api_key=settings.api_key)

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(ApiError(error.status_code, str(error.detail), headers=error.headers))

    _add_routes(app, state)
    if settings.webhook_secret:
        _add_webhook_route(app, state, settings.webhook_secret)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: ERROR_RESPONSES[503]})
    async def ready() -> dict[str, str]:
        """Every model is loaded and requests are answered."""
        refusal = state.not_ready()
        if refusal is not None:
            raise refusal
        current = state.table.default.current
        return {"status": "ready", "model": current.model if current else ""}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def models() -> ModelList:
        """One card per route, naming the version that answers on it now; the first is the default."""
        refusal = state.not_ready()
        if refusal is not None:
            raise refusal
        cards = []
        for route in state.table.routes:
            deployment = route.current
            if deployment is None:
                continue
            served, batcher = deployment.served.served, deployment.served.batcher
            cards.append(
                ModelCard(
                    id=deployment.model,
                    created=served.created,
                    flavor=served.flavor,
                    streaming="tokens" if served.streams_tokens else "whole-answer",
                    context_length=served.context_length,
                    max_batch_size=batcher.max_batch_size,
                    max_groups=batcher.max_groups,
                    route=route.name,
                    version=deployment.version,
                    alias=route.ref.alias if route.ref is not None else None,
                )
            )
        return ModelList(data=cards)

    _add_chat_route(app, state)


def _add_webhook_route(app: FastAPI, state: ServerState, secret: str) -> None:
    @app.post(
        WEBHOOK_ROUTE,
        response_model=WebhookAnswer,
        responses={401: {"model": ErrorResponse, "description": "unsigned, badly signed or stale delivery"}},
    )
    async def mlflow_webhook(request: Request) -> WebhookAnswer:
        """An MLflow registry webhook (event `model_version_alias.created`): the aliases are read again now."""
        raw = await request.body()
        try:
            webhooks.verify(secret, request.headers, raw, time.time(), state.settings.webhook_tolerance_seconds)
        except webhooks.WebhookRefusedError as error:
            state.metrics.webhooks.labels("refused").inc()
            log.warning("webhook delivery refused: %s", error)
            raise ApiError(401, f"webhook refused: {error}", code="invalid_signature") from None
        moved = webhooks.alias_moved(raw)
        routes = [] if moved is None else [route.name for route in state.follower.routes if _names(route, moved)]
        if moved is None or not routes:
            state.metrics.webhooks.labels("ignored").inc()
            return WebhookAnswer(status="ignored", routes=[])
        state.metrics.webhooks.labels("accepted").inc()
        log.info("webhook: %s@%s moved to version %s", moved.name, moved.alias, moved.version)
        state.follower.poke()
        return WebhookAnswer(status="accepted", routes=routes)


def _names(route: Route[Any], moved: webhooks.AliasMoved) -> bool:
    return route.ref is not None and (route.ref.name, route.ref.alias) == (moved.name, moved.alias)


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
        body = await read_json(request)
        route, deployment = state.acquire(body.get("model") if isinstance(body, dict) else None)
        handed_over = False  # a stream releases its deployment when it ends
        try:
            served, batcher = deployment.served.served, deployment.served.batcher
            parsed = await _parse(body, served)
            ticket = _submit(batcher, parsed)
            if parsed.stream:
                try:
                    await accepted(ticket)
                except BaseException:
                    ticket.cancel()
                    raise
                events = stream_events(ticket, deployment.model, parsed.include_usage, state.metrics)
                handed_over = True
                return StreamingResponse(
                    _released_after(events, lambda: route.release(deployment)),
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
                    deployment.model,
                )
            )
        finally:
            if not handed_over:
                route.release(deployment)


def _released_after(events: AsyncIterator[str], release: Callable[[], None]) -> AsyncIterator[str]:
    """The stream's events; its deployment is released once when the stream ends, however it ends, and
    also if the stream is dropped before it started (a client gone before the first event)."""
    once = _Once(release)

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        finally:
            once()

    iterator = stream()
    weakref.finalize(iterator, once)
    return iterator


class _Once:
    def __init__(self, action: Callable[[], None]) -> None:
        self._action: Callable[[], None] | None = action
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            action, self._action = self._action, None
        if action is not None:
            action()


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
