"""The registered ONNX chat model behind a real `mlflow models serve` process on loopback."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port, mlflow_cli

pytestmark = pytest.mark.e2e
SERVED_NAME = "served-tiny-chat"
CAPITALS = {"Spain": "Madrid", "Kenya": "Nairobi", "Peru": "Lima", "Japan": "Tokyo"}


def post(base: str, body, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def ping(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def question(country: str) -> dict:
    return {"messages": [{"role": "user", "content": f"What is the capital of {country}?"}]}


@pytest.fixture(scope="module")
def server(logged_models, session_store, tmp_path_factory):
    client = MlflowClient()
    version = mlflow.register_model(logged_models["onnx-chat"], SERVED_NAME)
    client.set_registered_model_alias(SERVED_NAME, "champion", version.version)
    port = free_port()
    log = (tmp_path_factory.mktemp("serve") / "server.log").open("w")
    process = subprocess.Popen(
        [
            *mlflow_cli(),
            "models",
            "serve",
            "-m",
            f"models:/{SERVED_NAME}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while ping(base) != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mlflow models serve did not come up; see {log.name}")
        time.sleep(0.5)
    yield base
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_chat_request_gets_an_openai_completion(server):
    status, body = post(server, question("Spain"))
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The capital of Spain is Madrid."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_request_parameters_are_honoured(server):
    status, body = post(server, {**question("Spain"), "max_tokens": 5, "temperature": 0.0})
    assert status == 200
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"


def test_batch_in_dataframe_form_answers_every_row_in_order(server):
    rows = [question(c) for c in CAPITALS]
    status, body = post(server, {"dataframe_records": rows})
    assert status == 200
    answers = [p["choices"][0]["message"]["content"] for p in body["predictions"]]
    assert answers == [f"The capital of {c} is {city}." for c, city in CAPITALS.items()]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "empty"),
        ({"messages": [{"role": "pirate", "content": "arr"}]}, "unknown role"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"messages": [{"role": "user", "content": 7}]}, "content"),
        ({**question("Spain"), "max_tokens": 0}, "max_tokens"),
        ({**question("Spain"), "max_tokens": 100000}, "context"),
        ({**question("Spain"), "temperature": -1}, "temperature"),
        ({**question("Spain"), "top_p": 0}, "top_p"),
        ({**question("Spain"), "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "Spain " * 3000}]}, "context"),
    ],
)
def test_bad_input_is_a_4xx_and_the_server_keeps_answering(server, body, message):
    status, error = post(server, body)
    assert 400 <= status < 500, (status, error)
    assert message in error.get("message", "")
    assert ping(server) == 200
    assert post(server, question("Peru"))[1]["choices"][0]["message"]["content"] == "The capital of Peru is Lima."


def test_concurrent_clients_all_get_correct_answers(server):
    countries = list(CAPITALS) * 8  # 32 requests

    def client(batch: list[str]) -> list[str]:
        return [post(server, question(c))[1]["choices"][0]["message"]["content"] for c in batch]

    batches = [countries[i::4] for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(client, batches))
    for batch, answers in zip(batches, results, strict=True):
        assert answers == [f"The capital of {c} is {CAPITALS[c]}." for c in batch]
