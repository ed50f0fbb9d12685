"""The ASGI layer in process: every status is counted (500s included), errors keep OpenAI's shape."""

from __future__ import annotations

import asyncio
import json

import pytest

from slmflow.serving.metrics import Metrics
from slmflow.serving.middleware import BodyLimits, LimitsMiddleware
from slmflow.serving.protocol import ApiError, error_response
from slmflow.serving.routes import refuse_non_json_constants

BODY = BodyLimits(max_bytes=1000, timeout_seconds=0.2)


def call(app, body_messages: list[dict]) -> tuple[list[dict], Metrics]:
    """Run one POST through the middleware around `app`; the messages sent, and the metrics."""
    metrics = Metrics()
    sent: list[dict] = []
    pending = list(body_messages)

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more
        raise AssertionError

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions", "headers": [], "method": "POST"}
    asyncio.run(LimitsMiddleware(app, metrics, BODY)(scope, receive, send))
    return sent, metrics


def counted(metrics: Metrics, status: int) -> float:
    return (
        metrics.registry.get_sample_value(
            "slmflow_requests_total", {"route": "/v1/chat/completions", "status": str(status)}
        )
        or 0.0
    )


def error_of(sent: list[dict]) -> tuple[int, dict]:
    return sent[0]["status"], json.loads(sent[1]["body"])["error"]


def test_an_unexpected_error_is_a_counted_500_with_an_id_and_no_details():
    async def broken(scope, receive, send):
        raise RuntimeError("secret detail")

    sent, metrics = call(broken, [])
    status, error = error_of(sent)
    assert status == 500 and error["type"] == "server_error" and "internal error (id " in error["message"]
    assert "secret" not in sent[1]["body"].decode() and counted(metrics, 500) == 1


def test_a_body_that_stops_arriving_is_a_counted_408():
    async def reads_body(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        raise AssertionError("the body never completes")

    sent, metrics = call(reads_body, [{"type": "http.request", "body": b"{", "more_body": True}])
    status, error = error_of(sent)
    assert status == 408 and error["code"] == "request_timeout" and counted(metrics, 408) == 1


def test_a_lone_surrogate_in_an_error_is_answered_not_a_500():
    response = error_response(ApiError(400, "unknown field '\ud800x'", param="\ud800x"))
    error = json.loads(response.body)["error"]
    assert response.status_code == 400 and error["param"] == "?x"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"temperature": NaN}', "temperature"),
        ('{"messages": [{"role": "user", "content": "x"}, {"top_p": -Infinity}]}', "messages[1].top_p"),
        ('{"seed": 1e999}', "seed"),
    ],
)
def test_nan_and_infinities_are_refused_naming_their_field(body, param):
    from slmflow.serving.routes import NotJson

    with pytest.raises(ApiError) as refused:
        refuse_non_json_constants(json.loads(body, parse_constant=NotJson))
    assert refused.value.status == 400 and refused.value.param == param
