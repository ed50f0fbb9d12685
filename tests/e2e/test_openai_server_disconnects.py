"""Clients that go away: `python -m slmflow.serve` as a real process, an HTTP client closing its connection
mid-stream and mid-request. The row must be cancelled (counted in `slmflow_cancelled_rows_total`), the
request recorded as 499, and the server free to answer the next request. Also: sampling settings really reach it.

A client can only leave while its row generates if the row takes longer than the disconnect takes to be noticed.
The tiny model answers 480 tokens in about 50 ms, so those tests serve the real model (about 3 s for 480 tokens).
"""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from collections.abc import Iterator

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from slmflow.flavors.onnx_chat import log_onnx_chat_model
from testkit.processes import free_port, launched_server

API_KEY = f"sk-test-{uuid.uuid4().hex}"
NAME = "disconnect-tiny-chat"
ROUTE = "/v1/chat/completions"
# A row forced to run to nearly the whole context (512 tokens): still generating when its client leaves.
LONG = {"max_tokens": 480, "min_tokens": 480, "temperature": 0}


def question(country: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of {country}?"}]


class Served:
    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def metric(self, sample: str, **labels: str) -> float:
        """One sample of /metrics (0 when it has not been recorded yet)."""
        text = requests.get(f"{self.base}/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            for found in family.samples:
                if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                    return found.value
        return 0.0

    def wait_for(self, sample: str, at_least: float, timeout: float = 60, **labels: str) -> float:
        """Poll a metric until it reaches `at_least` (bounded in time); return its last value."""
        deadline = time.monotonic() + timeout
        value = self.metric(sample, **labels)
        while value < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.metric(sample, **labels)
        return value

    def chat(self, **body) -> requests.Response:
        return requests.post(
            f"{self.base}{ROUTE}", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300
        )

    def raw_request(self, body: bytes, content_length: int | None = None) -> socket.socket:
        """A POST written on a plain socket, so the test decides when the connection closes."""
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        head = (
            f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {content_length or len(body)}\r\n\r\n"
        )
        connection.sendall(head.encode() + body)
        return connection


def serve_champion(name: str, model_uri: str, log_folder) -> Iterator[Served]:
    version = mlflow.register_model(model_uri, name)
    MlflowClient().set_registered_model_alias(name, "champion", version.version)
    port = free_port()
    command = [sys.executable, "-m", "slmflow.serve", "--model-uri", f"models:/{name}@champion", "--port", str(port)]
    with launched_server(command, f"http://127.0.0.1:{port}/ready", log_folder / "server.log", SLMFLOW_API_KEY=API_KEY):
        yield Served(port)


@pytest.fixture(scope="module")
def served(logged_models, tmp_path_factory):
    """The tiny model: fast, and its answers are known word for word."""
    yield from serve_champion(NAME, logged_models["onnx-chat"], tmp_path_factory.mktemp("disconnect-server"))


@pytest.fixture(scope="module")
def served_real(smollm2, smollm2_config, session_store, tmp_path_factory):
    """The real model, whose rows generate long enough for a client to leave in the middle."""
    with mlflow.start_run():
        model_uri = log_onnx_chat_model(smollm2.onnx_dir, smollm2_config.generation, smollm2_config.runtime)
    yield from serve_champion(f"{NAME}-real", model_uri, tmp_path_factory.mktemp("disconnect-real-server"))


def assert_free_and_answering(served: Served) -> None:
    reply = served.chat(messages=question("Peru"), temperature=0, max_tokens=24)
    assert reply.status_code == 200, reply.text
    assert "Lima" in reply.json()["choices"][0]["message"]["content"]
    assert served.metric("slmflow_queue_depth") == 0


def test_a_client_leaving_mid_stream_cancels_its_row(served_real):
    served = served_real
    cancelled = served.metric("slmflow_cancelled_rows_total")
    body = json.dumps({"messages": question("Spain"), "stream": True, **LONG}).encode()
    connection = served.raw_request(body)
    received = b""
    while received.count(b"data: ") < 2:  # the role, then the first generated text: the row is generating
        piece = connection.recv(4096)
        assert piece, received
        received += piece
    assert received.startswith(b"HTTP/1.1 200")
    connection.close()
    assert served.wait_for("slmflow_cancelled_rows_total", cancelled + 1) == cancelled + 1
    assert_free_and_answering(served)
    assert served.metric("slmflow_cancelled_rows_total") == cancelled + 1  # the next request was not cancelled


def test_a_client_leaving_while_waiting_for_its_answer_cancels_its_row_and_counts_499(served_real):
    served = served_real
    cancelled = served.metric("slmflow_cancelled_rows_total")
    batches = served.metric("slmflow_batch_size_count")
    errors = served.metric("slmflow_requests_total", route=ROUTE, status="500")
    closed = served.metric("slmflow_requests_total", route=ROUTE, status="499")
    connection = served.raw_request(json.dumps({"messages": question("Kenya"), **LONG}).encode())
    assert served.wait_for("slmflow_batch_size_count", batches + 1) == batches + 1  # its row is generating
    connection.close()
    assert served.wait_for("slmflow_cancelled_rows_total", cancelled + 1) == cancelled + 1
    assert served.wait_for("slmflow_requests_total", closed + 1, route=ROUTE, status="499") == closed + 1
    assert served.metric("slmflow_requests_total", route=ROUTE, status="500") == errors  # a 499, never a 500
    assert_free_and_answering(served)


def test_a_client_leaving_before_its_body_is_sent_starts_no_row(served):
    cancelled = served.metric("slmflow_cancelled_rows_total")
    batches = served.metric("slmflow_batch_size_count")
    errors = served.metric("slmflow_requests_total", route=ROUTE, status="500")
    body = json.dumps({"messages": question("Japan"), **LONG}).encode()
    connection = served.raw_request(body[:20], content_length=len(body))  # a third of the body, then gone
    connection.close()
    assert_free_and_answering(served)  # its own row is one batch
    assert served.metric("slmflow_batch_size_count") == batches + 1
    assert served.metric("slmflow_cancelled_rows_total") == cancelled
    assert served.metric("slmflow_requests_total", route=ROUTE, status="500") == errors


def test_a_seed_makes_sampling_repeatable_and_the_temperature_is_honoured(served):
    """Would a server ignoring temperature pass? No: different seeds must sample different answers."""

    def sample(seed: int, temperature: float = 1.5) -> str:
        reply = served.chat(messages=question("Japan"), temperature=temperature, seed=seed, max_tokens=24)
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(8, 14)}) > 1  # temperature > 0 really samples
    assert sample(1, temperature=0) == sample(2, temperature=0) == "The capital of Japan is Tokyo."
