"""The OpenAI-compatible server applies the logged model's serving policy and bounds each connection's time.

One server on the tiny model logged with a policy of its own (a total-token limit and a short
deadline), with header and body timeouts of one second; and, for shutdown, a second process of it.
"""

from __future__ import annotations

import signal
import subprocess
import time

import mlflow
import openai
import pytest

from slmflow.policy import RequestLimits
from testkit.openai_server import champion, closed_by_server, question, read_until_closed, requests_counted, serve

LIMITS = RequestLimits(max_total_tokens=500)
# A deadline passed before the first token on any machine: the test never depends on the machine's speed.
PASSED_DEADLINE = RequestLimits(timeout_seconds=1e-6)
TIMEOUTS = ("--header-timeout", "1", "--body-timeout", "1", "--shutdown-timeout", "30")
HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def logged_with(limits: RequestLimits, name: str, tiny_onnx, tiny_config) -> str:
    """The champion URI of an onnx-chat model logged with these limits in its serving policy."""
    from slmflow.flavors.onnx_chat import log_onnx_chat_model

    generation = tiny_config.generation.model_copy(update={"limits": limits})
    with mlflow.start_run():
        return champion(log_onnx_chat_model(tiny_onnx, generation, tiny_config.runtime), name)


@pytest.fixture(scope="module")
def policy_uri(tiny_onnx, tiny_config, session_store) -> str:
    return logged_with(LIMITS, "openai-policy-chat", tiny_onnx, tiny_config)


@pytest.fixture(scope="module")
def policy_server(policy_uri, tmp_path_factory):
    log = tmp_path_factory.mktemp("policy-server") / "server.log"
    process, server = serve(policy_uri, "openai-policy-chat", log, *TIMEOUTS)
    with process:
        yield server


@pytest.fixture(scope="module")
def deadline_server(tiny_onnx, tiny_config, session_store, tmp_path_factory):
    uri = logged_with(PASSED_DEADLINE, "openai-deadline-chat", tiny_onnx, tiny_config)
    log = tmp_path_factory.mktemp("deadline-server") / "server.log"
    process, server = serve(uri, "openai-deadline-chat", log, *TIMEOUTS)
    with process:
        yield server


def test_the_models_deadline_is_a_504(deadline_server):
    before = requests_counted(deadline_server, 504)
    with pytest.raises(openai.APIStatusError) as late:
        deadline_server.client().chat.completions.create(
            model=deadline_server.name, messages=question("Spain"), max_tokens=480, extra_body={"min_tokens": 480}
        )
    assert late.value.status_code == 504 and late.value.body["code"] == "deadline_exceeded"
    assert requests_counted(deadline_server, 504) == before + 1


def test_the_models_total_token_limit_is_a_400(policy_server):
    with pytest.raises(openai.BadRequestError) as refused:
        policy_server.client().chat.completions.create(
            model=policy_server.name, messages=question("Spain"), max_tokens=497
        )
    assert refused.value.body["param"] == "max_tokens" and refused.value.body["code"] == "request_too_large"


def test_connections_that_send_no_headers_or_half_of_them_are_closed(policy_server):
    silent = [policy_server.connect(timeout=30) for _ in range(10)]
    halting = [policy_server.connect(timeout=30) for _ in range(10)]
    for connection in halting:
        connection.sendall(HEAD.encode()[:40])
    try:
        assert all(closed_by_server(connection) for connection in silent + halting)
    finally:
        for connection in silent + halting:
            connection.close()
    assert policy_server.client().models.list().data


def test_a_body_that_stops_arriving_is_a_408(policy_server):
    with policy_server.connect(timeout=30) as connection:
        connection.sendall(f'{HEAD}Content-Length: 100\r\n\r\n{{"messages": '.encode())
        reply = read_until_closed(connection).decode()
    assert reply.startswith("HTTP/1.1 408") and '"code":"request_timeout"' in reply


def test_a_half_sent_request_does_not_keep_sigterm_from_stopping_the_server(policy_uri, tmp_path):
    launched, server = serve(policy_uri, "openai-policy-chat", tmp_path / "server.log", *TIMEOUTS)
    with launched as process, server.connect(timeout=30) as connection:
        connection.sendall(f'{HEAD}Content-Length: 100\r\n\r\n{{"messages": '.encode())
        time.sleep(0.2)  # the server has read the headers and waits for the body
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not stop within 30 s of SIGTERM")
    assert "Application shutdown complete" in server.log.read_text()  # a graceful stop, not a kill
