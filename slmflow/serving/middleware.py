"""The ASGI layer around the routes: API key, body size and read time, request metrics, and the 500s.

Plain ASGI rather than Starlette middleware, so that a large body is never buffered and every
status is counted, the 500s sent for unexpected errors included (Starlette's error middleware sits
outside any user middleware, where no count would see them).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from slmflow.serving.metrics import Metrics
from slmflow.serving.protocol import ApiError, error_response

log = logging.getLogger(__name__)
CHAT_ROUTE = "/v1/chat/completions"
API_ROUTES = (CHAT_ROUTE, "/v1/models")  # metric labels: a fixed set, whatever paths clients send


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout_seconds: float


class _BodyTooLargeError(Exception):
    pass


class _BodyTimeoutError(Exception):
    pass


def metric_route(path: str) -> str | None:
    if not path.startswith("/v1/"):
        return None
    return path if path in API_ROUTES else "/v1/other"


class LimitsMiddleware:
    """Refuses what must not reach the routes and counts what is answered."""

    def __init__(self, app, metrics: Metrics, body: BodyLimits, api_key: str | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.body = body
        self.expected_authorization = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = _CountedSend(send, self.metrics, scope["path"])
        refusal = self._refusal(scope)
        if refusal is not None:
            await error_response(refusal)(scope, receive, counted)
            return
        try:
            await self.app(scope, _LimitedReceive(receive, self.body), counted)
        except _BodyTooLargeError:
            await self._answer_unless_started(counted, _too_large(self.body.max_bytes), scope, receive)
        except _BodyTimeoutError:
            message = f"the request body did not arrive within {self.body.timeout_seconds:g} s"
            await self._answer_unless_started(counted, ApiError(408, message, code="request_timeout"), scope, receive)
        except Exception as error:  # the one place unexpected errors are logged and answered
            error_id = uuid.uuid4().hex[:12]
            log.error("unexpected error %s", error_id, exc_info=error)
            await self._answer_unless_started(
                counted, ApiError(500, f"internal error (id {error_id})", "server_error"), scope, receive
            )

    def _refusal(self, scope) -> ApiError | None:
        headers = dict(scope["headers"])
        if metric_route(scope["path"]) and self.expected_authorization is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected_authorization):
                message = "missing or wrong API key (send 'Authorization: Bearer KEY')"
                return ApiError(401, message, code="invalid_api_key")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.body.max_bytes):
            return _too_large(self.body.max_bytes)
        return None

    @staticmethod
    async def _answer_unless_started(counted: _CountedSend, error: ApiError, scope, receive) -> None:
        if counted.status is None:
            await error_response(error)(scope, receive, counted)
        else:
            log.warning("%s after the response started: the connection is closed", error.message)


class _CountedSend:
    """`send`, counting each finished response by route and status (and the chat route's latency)."""

    def __init__(self, send, metrics: Metrics, path: str) -> None:
        self.send, self.metrics, self.path = send, metrics, path
        self.route = metric_route(path)
        self.started = time.monotonic()
        self.status: int | None = None

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        if message["type"] == "http.response.body" and not message.get("more_body") and self.status:
            self.count(self.status)
        await self.send(message)

    def count(self, status: int) -> None:
        if self.route:
            self.metrics.requests.labels(route=self.route, status=str(status)).inc()
            if self.path == CHAT_ROUTE:
                self.metrics.latency.observe(time.monotonic() - self.started)


class _LimitedReceive:
    """`receive`, refusing a body beyond the size limit or slower than the time limit (slowloris).
    Once the body is in, messages (such as the disconnect) are waited for without a limit."""

    def __init__(self, receive, body: BodyLimits) -> None:
        self.receive, self.body = receive, body
        self.deadline = time.monotonic() + body.timeout_seconds
        self.received = 0
        self.complete = False

    async def __call__(self) -> dict[str, Any]:
        if self.complete:
            return await self.receive()
        try:
            message = await asyncio.wait_for(self.receive(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            raise _BodyTimeoutError from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.body.max_bytes:
                raise _BodyTooLargeError
            self.complete = not message.get("more_body", False)
        return message


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
