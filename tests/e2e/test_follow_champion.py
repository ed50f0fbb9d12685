"""Following the champion, as real server processes on loopback, on a sqlite registry (the session's store).

Three versions of the tiny model answer distinguishably: version 1 says the whole answer, versions 2
and 3 were logged with 3 and 5 new tokens by default, so each answer shows which version gave it.

- The polled server follows `@champion` (read every 0.3 s) and serves `@challenger` beside it. 200
  requests from 4 clients, plain and streamed, while the champion moves twice: none fails, each
  answer's `model` names a version that was champion during that request, and its text is that version's.
- The webhook server does not poll: the alias moves only when MLflow's own webhook delivery
  (`deliver_webhook`, as `mlflow server` calls it) reaches it signed; unsigned, badly signed and
  stale calls are 401s.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import mlflow
import openai
import pytest
import requests
from mlflow.tracking import MlflowClient

from testkit.openai_server import CAPITALS, Server, answer, metric_value, question, serve

POLLED = "follow-tiny-chat"
HOOKED = "follow-tiny-chat-webhook"
SECRET = f"whsec-{uuid.uuid4().hex}"
NEW_TOKENS = {"2": 3, "3": 5}  # version -> its default max tokens (version 1: the whole answer)
REQUESTS = 200
CLIENTS = 4
# The champion moves to version 2 once 30 requests are answered, and to version 3 when request 90 starts.
# Requests from 90 (150) on start only once version 2 (3) answers, so the load runs
# through each swap and cannot end before both moves are noticed.
FIRST_MOVE_AFTER = 30
GATES = {90: "2", 150: "3"}


@pytest.fixture(scope="module")
def versions(session_store, tiny_onnx, tiny_config) -> list[str]:
    """Three onnx-chat URIs of the tiny model: its config's whole answer, then 3 and 5 new tokens by default."""
    from slmflow.flavors.onnx_chat import log_onnx_chat_model

    uris = []
    for version in ("1", "2", "3"):
        update = {"max_new_tokens": NEW_TOKENS[version]} if version in NEW_TOKENS else {}
        generation = tiny_config.generation.model_copy(update=update)
        with mlflow.start_run():  # a run each: a run's params (the logged policy) cannot change
            uris.append(log_onnx_chat_model(tiny_onnx, generation, tiny_config.runtime))
    return uris


def register(name: str, uris: list[str], **aliases: str) -> None:
    client = MlflowClient()
    for uri in uris:
        mlflow.register_model(uri, name)
    for alias, version in aliases.items():
        client.set_registered_model_alias(name, alias, version)


@pytest.fixture(scope="module")
def servers(versions, tmp_path_factory):
    """(polled, webhook) servers, started together."""
    register(POLLED, versions, champion="1", challenger="3")
    register(HOOKED, versions[:2], champion="1")
    folder = tmp_path_factory.mktemp("follow")
    polled_process, polled = serve(
        f"models:/{POLLED}@champion",
        POLLED,
        folder / "polled.log",
        *["--model-uri", f"models:/{POLLED}@challenger", "--follow-interval", "0.3"],
    )
    hooked_process, hooked = serve(
        f"models:/{HOOKED}@champion",
        HOOKED,
        folder / "hooked.log",
        "--follow-interval",
        "0",
        SLMFLOW_WEBHOOK_SECRET=SECRET,
    )
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        started = [pool.submit(stack.enter_context, process) for process in (polled_process, hooked_process)]
        for future in started:
            future.result()
        yield polled, hooked


def cards(server: Server) -> dict[str, str]:
    """Route -> the version answering on it now."""
    return {card.route: card.id for card in server.client().models.list().data}  # type: ignore[attr-defined]


def check_answer(version: str, country: str, text: str, finish_reason: str, completion_tokens: int) -> None:
    if version == "1":
        assert (text, finish_reason) == (answer(country), "stop")
    else:
        assert answer(country).startswith(text) and text != answer(country)
        assert (finish_reason, completion_tokens) == ("length", NEW_TOKENS[version])


def test_200_requests_while_the_champion_moves_twice_each_answered_by_a_champion_of_its_time(servers):
    polled, _ = servers
    assert cards(polled) == {f"{POLLED}@champion": f"{POLLED}/1", f"{POLLED}@challenger": f"{POLLED}/3"}
    registry = MlflowClient()
    champion_since: dict[str, tuple[float, float]] = {"1": (-1.0, -1.0)}  # version -> (move called, returned)
    seen: dict[str, threading.Event] = {version: threading.Event() for version in ("1", "2", "3")}

    def wait_for_champion(version: str) -> None:
        """Until an answer came from the version, or /v1/models names it (bounded: 60 s)."""
        deadline = time.monotonic() + 60
        while not seen[version].wait(0.1):
            if cards(polled)[f"{POLLED}@champion"] == f"{POLLED}/{version}":
                return
            assert time.monotonic() < deadline, f"version {version} never took over"

    answered: list[dict] = []
    lock = threading.Lock()
    indexes = iter(range(REQUESTS))

    def next_index() -> int | None:
        with lock:
            return next(indexes, None)

    def move(version: str) -> None:
        called = time.monotonic()
        registry.set_registered_model_alias(POLLED, "champion", version)
        champion_since[version] = (called, time.monotonic())

    def ask(client: openai.OpenAI, index: int) -> dict:
        country = sorted(CAPITALS)[index % len(CAPITALS)]
        model = [None, f"{POLLED}@champion", POLLED, f"{POLLED}@challenger"][index % 4]
        stream = index % 3 == 0
        started = time.monotonic()
        fields = {"messages": question(country), "temperature": 0}
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=model or "", stream=True, stream_options={"include_usage": True}, **fields
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            names = {c.model for c in chunks}
            assert len(names) == 1, names  # one version answers a whole stream
            [name], tokens = names, chunks[-1].usage.completion_tokens
        else:
            reply = client.chat.completions.create(model=model or "", **fields)
            text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
            name, tokens = reply.model, reply.usage.completion_tokens
        return {
            "index": index, "route": model, "country": country, "model": name, "text": text, "finish": finish,
            "tokens": tokens, "started": started, "ended": time.monotonic(),
        }  # fmt: skip

    def client_loop() -> None:
        client = polled.client()
        while (index := next_index()) is not None:
            gate = max((start for start in GATES if index >= start), default=None)
            if gate is not None:
                wait_for_champion(GATES[gate])
            if index == min(GATES):
                move("3")
            result = ask(client, index)
            if result["route"] != f"{POLLED}@challenger":
                seen[result["model"].rsplit("/", 1)[1]].set()
            with lock:
                answered.append(result)
                if len(answered) == FIRST_MOVE_AFTER:
                    move("2")

    takeover: dict[str, float] = {}  # version -> when /v1/models first named it on the champion route
    loading = threading.Event()

    def watch() -> None:
        while not loading.wait(0.05):
            version = cards(polled)[f"{POLLED}@champion"].rsplit("/", 1)[1]
            takeover.setdefault(version, time.monotonic())

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        watcher = pool.submit(watch)
        try:
            for future in [pool.submit(client_loop) for _ in range(CLIENTS)]:
                future.result(timeout=120)  # any failed request fails the test here
        finally:
            loading.set()
        watcher.result(timeout=30)
    elapsed = time.monotonic() - started

    assert len(answered) == REQUESTS and elapsed < 120
    moves = sorted(champion_since.items(), key=lambda item: item[1][0])
    for result in answered:
        version = result["model"].rsplit("/", 1)[1]
        check_answer(version, result["country"], result["text"], result["finish"], result["tokens"])
        if result["route"] == f"{POLLED}@challenger":
            assert result["model"] == f"{POLLED}/3"
            continue
        assert result["model"].startswith(f"{POLLED}/")
        position = [v for v, _ in moves].index(version)
        later = moves[position + 1][0] if position + 1 < len(moves) else None
        # The version was champion in the registry before the request ended, and the request started
        # before the server took the next champion in (the server can only follow moves it has seen).
        assert champion_since[version][0] <= result["ended"], (result, moves)
        assert later is None or result["started"] <= takeover[later], (result, moves, takeover)
    for version in ("2", "3"):  # each move was seen within a few polls and a load
        assert 0 < takeover[version] - champion_since[version][0] < 30, (takeover, champion_since)
    versions = {r["model"] for r in answered if r["route"] != f"{POLLED}@challenger"}
    assert versions == {f"{POLLED}/1", f"{POLLED}/2", f"{POLLED}/3"}

    assert cards(polled) == {f"{POLLED}@champion": f"{POLLED}/3", f"{POLLED}@challenger": f"{POLLED}/3"}
    metrics = polled.metrics()
    assert metric_value(metrics, "slmflow_model_swaps_total", route=f"{POLLED}@champion", trigger="poll") == 2
    assert metric_value(metrics, "slmflow_requests_total", route="/v1/chat/completions", status="200") >= REQUESTS
    log = polled.log.read_text()
    assert f"{POLLED}/1 drained and closed" in log and f"{POLLED}/2 drained and closed" in log
    with pytest.raises(openai.NotFoundError) as unknown:
        polled.client().chat.completions.create(model=f"{POLLED}@nope", messages=question("Peru"))
    assert unknown.value.body["code"] == "model_not_found" and f"{POLLED}@challenger" in unknown.value.body["message"]
    lags = ", ".join(f"{takeover[v] - champion_since[v][0]:.2f} s" for v in ("2", "3"))
    print(f"200 requests with two champion moves in {elapsed:.1f} s; from each move to its takeover: {lags}")


def post_webhook(server: Server, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(
        f"{server.base}/webhooks/mlflow", data=body, headers={"Content-Type": "application/json", **headers}, timeout=30
    )


def test_a_signed_mlflow_webhook_moves_the_champion_at_once_and_unsigned_calls_are_401(servers):
    from mlflow.entities.webhook import WebhookAction, WebhookEntity, WebhookEvent
    from mlflow.webhooks.delivery import _generate_hmac_signature, deliver_webhook
    from mlflow.webhooks.types import ModelVersionAliasCreatedPayload

    _, hooked = servers
    route = f"{HOOKED}@champion"
    MlflowClient().set_registered_model_alias(HOOKED, "champion", "2")
    time.sleep(1.5)
    assert cards(hooked) == {route: f"{HOOKED}/1"}  # no polling: the move is not seen without the webhook

    payload = {"name": HOOKED, "alias": "champion", "version": "2"}
    body = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "x", "data": payload})
    now = str(int(time.time()))
    refused = [
        post_webhook(hooked, body.encode(), {}),
        post_webhook(
            hooked,
            body.encode(),
            {
                "X-MLflow-Delivery-Id": "d-1",
                "X-MLflow-Timestamp": now,
                "X-MLflow-Signature": _generate_hmac_signature("wrong-secret", "d-1", now, body),
            },
        ),
        post_webhook(  # correctly signed, but an hour old: a replay
            hooked,
            body.encode(),
            {
                "X-MLflow-Delivery-Id": "d-2",
                "X-MLflow-Timestamp": str(int(now) - 3600),
                "X-MLflow-Signature": _generate_hmac_signature(SECRET, "d-2", str(int(now) - 3600), body),
            },
        ),
    ]
    for response in refused:
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_signature"
    assert cards(hooked) == {route: f"{HOOKED}/1"}
    other = body.replace('"alias": "champion"', '"alias": "staging"')  # signed, but no alias this server follows
    ignored = post_webhook(
        hooked,
        other.encode(),
        {
            "X-MLflow-Delivery-Id": "d-3",
            "X-MLflow-Timestamp": now,
            "X-MLflow-Signature": _generate_hmac_signature(SECRET, "d-3", now, other),
        },
    )
    assert ignored.status_code == 200 and ignored.json() == {"status": "ignored", "routes": []}

    # MLflow's own delivery, as `mlflow server` sends it after set_registered_model_alias.
    url = f"{hooked.base}/webhooks/mlflow"
    with mock.patch.dict(
        os.environ, {"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https"}
    ):
        client = MlflowClient()
        client.create_webhook(name="follow-test", url=url, events=["model_version_alias.created"], secret=SECRET)
        sent = time.monotonic()
        deliver_webhook(
            event=WebhookEvent(WebhookEntity.MODEL_VERSION_ALIAS, WebhookAction.CREATED),
            payload=ModelVersionAliasCreatedPayload(name=HOOKED, alias="champion", version="2"),
            store=client._get_registry_client().store,
        )
        while cards(hooked) != {route: f"{HOOKED}/2"} and time.monotonic() < sent + 30:
            time.sleep(0.1)
    moved_after = time.monotonic() - sent
    assert cards(hooked) == {route: f"{HOOKED}/2"}, hooked.log.read_text()[-2000:]
    reply = hooked.client().chat.completions.create(model=route, messages=question("Kenya"), temperature=0)
    assert reply.model == f"{HOOKED}/2"
    check_answer(
        "2", "Kenya", reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage.completion_tokens
    )

    metrics = hooked.metrics()
    assert metric_value(metrics, "slmflow_webhook_deliveries_total", outcome="refused") == 3
    assert metric_value(metrics, "slmflow_webhook_deliveries_total", outcome="accepted") == 1
    assert metric_value(metrics, "slmflow_webhook_deliveries_total", outcome="ignored") == 1
    assert metric_value(metrics, "slmflow_model_swaps_total", route=route, trigger="webhook") == 1
    assert SECRET not in hooked.log.read_text()
    print(f"webhook delivery to swap: {moved_after:.2f} s")
