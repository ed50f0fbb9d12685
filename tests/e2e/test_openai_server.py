"""The OpenAI-compatible server as a real process on loopback, driven by the real `openai` client.

Two servers, both on the tiny model registered as a champion: `onnx-chat` (token streaming,
batching, an API key from the environment, a small body limit) and `transformers-chat` (answers
through `predict`, a wait queue of one, so that a burst gets 429s).
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from testkit.openai_server import (
    CAPITALS,
    Server,
    answer,
    champion,
    metric_value,
    question,
    requests_counted,
    serve,
)
from testkit.structured import CITY_FORMAT, CITY_SCHEMA

API_KEY = f"sk-test-{uuid.uuid4().hex}"
MAX_BODY_BYTES = 65536
ONNX_NAME = "openai-tiny-chat"


@pytest.fixture(scope="module")
def onnx_server(logged_models, tmp_path_factory):
    uri = champion(logged_models["onnx-chat"], ONNX_NAME)
    log = tmp_path_factory.mktemp("onnx-server") / "server.log"
    process, server = serve(
        uri,
        ONNX_NAME,
        log,
        "--max-batch-size",
        "8",
        "--max-groups",
        "3",
        "--max-queue",
        "64",
        "--max-body-bytes",
        str(MAX_BODY_BYTES),
        api_key=API_KEY,
        SLMFLOW_API_KEY=API_KEY,
    )
    with process:
        yield server


@pytest.fixture(scope="module")
def transformers_server(logged_models, tmp_path_factory):
    uri = champion(logged_models["transformers-chat"], "openai-tiny-chat-transformers")
    log = tmp_path_factory.mktemp("transformers-server") / "server.log"
    process, server = serve(
        uri, "openai-tiny-chat-transformers", log, "--max-queue", "1", "--api-key", API_KEY, api_key=API_KEY
    )
    with process:
        yield server


def assert_still_answers(server: Server) -> None:
    reply = server.client().chat.completions.create(model=server.name, messages=question("Peru"), temperature=0)
    assert reply.choices[0].message.content == answer("Peru")


def test_plain_answer_with_usage(onnx_server):
    reply = onnx_server.client().chat.completions.create(
        model=onnx_server.name, messages=question("Spain"), temperature=0
    )
    assert reply.object == "chat.completion" and reply.model == f"{onnx_server.name}/1"  # the version that answered
    assert reply.choices[0].message.content == answer("Spain")
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_chunks_join_to_the_plain_answer(onnx_server):
    client = onnx_server.client()
    plain = client.chat.completions.create(model=onnx_server.name, messages=question("Kenya"), temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=onnx_server.name,
            messages=question("Kenya"),
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == plain.choices[0].message.content == answer("Kenya")
    assert len(pieces) > 3  # token by token, not one block
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_stop_strings_end_the_answer_streamed_or_not(onnx_server):
    client = onnx_server.client()
    reply = client.chat.completions.create(
        model=onnx_server.name, messages=question("Spain"), temperature=0, stop=["Madrid", " is"]
    )
    assert reply.choices[0].message.content == "The capital of Spain"
    assert reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=onnx_server.name, messages=question("Spain"), temperature=0, stop="Madrid", stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "The capital of Spain is "


def test_models_health_and_ready(onnx_server):
    models = onnx_server.client().models.list()
    card = models.data[0].model_dump()
    assert (
        card["id"] == f"{onnx_server.name}/1"
        and card["route"] == f"{onnx_server.name}@champion"
        and card["flavor"] == "onnx-chat"
        and card["streaming"] == "tokens"
    )
    assert card["context_length"] == 512 and card["max_batch_size"] == 8 and card["max_groups"] == 3
    assert requests.get(f"{onnx_server.base}/health", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{onnx_server.base}/ready", timeout=30).status_code == 200


def raw_post(server: Server, content, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{server.base}/v1/chat/completions", data=content, headers=headers, timeout=120)


def good_body(model: str = ONNX_NAME, **fields) -> bytes:
    return json.dumps({"model": model, "messages": question("Spain"), **fields}).encode()


JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TOO_LARGE = good_body(user="x" * MAX_BODY_BYTES)


@pytest.mark.parametrize(
    ("body", "headers", "status", "param"),
    [
        (json.dumps({"messages": [{"role": "pirate", "content": "x"}]}).encode(), AUTH | JSON, 400, "messages[0].role"),
        (good_body(temperature=-1), AUTH | JSON, 400, "temperature"),
        (good_body(max_tokens=100000), AUTH | JSON, 400, "max_tokens"),  # beyond the context
        (good_body(n=2), AUTH | JSON, 400, "n"),
        (b"{not json", AUTH | JSON, 400, None),
        (good_body(), JSON, 401, None),
        (good_body(), {"Authorization": "Bearer nope"} | JSON, 401, None),
        (TOO_LARGE, AUTH | JSON, 413, None),
        (iter([TOO_LARGE]), AUTH | JSON, 413, None),  # chunked: no Content-Length to refuse up front
        (good_body(), AUTH | {"Content-Type": "text/plain"}, 415, None),
    ],
    ids=["role", "temperature", "context", "n", "json", "no-key", "wrong-key", "size", "size-chunked", "type"],
)
def test_each_error_is_answered_in_openai_shape_and_the_server_goes_on(onnx_server, body, headers, status, param):
    response = raw_post(onnx_server, body, headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert "Traceback" not in response.text
    assert_still_answers(onnx_server)


def test_the_openai_client_raises_its_own_errors(onnx_server):
    with pytest.raises(openai.BadRequestError) as bad:
        onnx_server.client().chat.completions.create(model=onnx_server.name, messages=question("Spain"), top_p=0)
    assert bad.value.body["param"] == "top_p"
    with pytest.raises(openai.AuthenticationError):
        onnx_server.client(api_key="wrong").chat.completions.create(model=onnx_server.name, messages=question("Spain"))
    with pytest.raises(openai.NotFoundError) as unknown:
        onnx_server.client().chat.completions.create(model="gpt-4o", messages=question("Spain"))
    assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"
    assert_still_answers(onnx_server)


def test_a_body_without_content_type_is_read_as_json(onnx_server):
    response = raw_post(onnx_server, good_body(temperature=0), AUTH)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == answer("Spain")


def test_32_concurrent_requests_from_4_clients_are_batched_and_all_right(onnx_server):
    before = onnx_server.metrics()
    clients = [onnx_server.client() for _ in range(4)]
    jobs = [(clients[i % 4], country, i % 2 == 0) for i, country in enumerate(list(CAPITALS) * 8)]

    def ask(job) -> str:
        client, country, stream = job
        if not stream:
            reply = client.chat.completions.create(model=onnx_server.name, messages=question(country), temperature=0)
            return reply.choices[0].message.content
        chunks = client.chat.completions.create(
            model=onnx_server.name, messages=question(country), temperature=0, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [answer(country) for _, country, _ in jobs]

    after = onnx_server.metrics()
    batches = metric_value(after, "slmflow_batch_size_count") - metric_value(before, "slmflow_batch_size_count")
    single = metric_value(after, "slmflow_batch_size_bucket", le="1.0") - metric_value(
        before, "slmflow_batch_size_bucket", le="1.0"
    )
    rows = metric_value(after, "slmflow_batch_size_sum") - metric_value(before, "slmflow_batch_size_sum")
    assert rows == 32 and batches - single >= 1 and batches < 32  # some batches held more than one request
    ok = metric_value(after, "slmflow_requests_total", route="/v1/chat/completions", status="200")
    assert ok - metric_value(before, "slmflow_requests_total", route="/v1/chat/completions", status="200") == 32


def test_a_request_sent_during_a_long_generation_is_answered_before_it_ends_and_counted(onnx_server):
    """With --max-groups 3 a new request starts between the long one's decode steps (static batches would
    make it wait for all 480 tokens), gets its answer alone, and /metrics counts both."""
    client = onnx_server.client()
    before = onnx_server.metrics()
    long_stream = client.chat.completions.create(
        model=onnx_server.name,
        messages=question("Spain"),
        temperature=0,
        max_tokens=480,
        extra_body={"min_tokens": 480},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = iter(long_stream)
    for _, chunk in zip(range(480), chunks, strict=False):  # the role chunk comes first, before any step
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the long one is generating

    def read_to_the_end() -> tuple[int, float]:
        usage = [chunk.usage for chunk in chunks if chunk.usage]
        return usage[-1].completion_tokens, time.monotonic()

    with ThreadPoolExecutor(max_workers=1) as pool:
        long_done = pool.submit(read_to_the_end)
        short = client.chat.completions.create(model=onnx_server.name, messages=question("Peru"), temperature=0)
        short_answered = time.monotonic()
        long_tokens, long_ended = long_done.result(timeout=120)
    assert short.choices[0].message.content == answer("Peru") and long_tokens == 480
    assert short_answered < long_ended

    ok_before = metric_value(before, "slmflow_requests_total", route="/v1/chat/completions", status="200")
    wait_for_count(onnx_server, 200, ok_before + 2)  # a stream is counted once its last byte is sent
    after = onnx_server.metrics()

    def grew(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert grew("slmflow_requests_total", route="/v1/chat/completions", status="200") == 2
    assert grew("slmflow_completion_tokens_total") == 480 + short.usage.completion_tokens
    assert grew("slmflow_time_to_first_token_seconds_count") == 2
    assert grew("slmflow_batch_size_count") == 2 and grew("slmflow_batch_size_sum") == 2  # two groups of one


def test_metrics_count_requests_tokens_and_timings(onnx_server):
    assert_still_answers(onnx_server)
    text = onnx_server.metrics()
    assert metric_value(text, "slmflow_requests_total", route="/v1/chat/completions", status="200") >= 1
    for name in (
        "slmflow_prompt_tokens_total",
        "slmflow_completion_tokens_total",
        "slmflow_time_to_first_token_seconds_count",
        "slmflow_request_latency_seconds_count",
    ):
        assert metric_value(text, name) > 0, name
    assert "slmflow_queue_depth " in text and "slmflow_cancelled_rows_total " in text


def test_the_api_key_never_reaches_the_log(onnx_server):
    with pytest.raises(openai.AuthenticationError):
        onnx_server.client(api_key="wrong").models.list()
    assert_still_answers(onnx_server)
    assert API_KEY not in onnx_server.log.read_text()


def test_transformers_champion_answers_through_predict_and_streams_one_chunk(transformers_server):
    client = transformers_server.client()
    card = client.models.list().data[0].model_dump()
    assert card["flavor"] == "transformers-chat" and card["streaming"] == "whole-answer"
    reply = client.chat.completions.create(model=transformers_server.name, messages=question("Spain"), temperature=0)
    assert reply.choices[0].message.content == answer("Spain")
    chunks = list(
        client.chat.completions.create(
            model=transformers_server.name, messages=question("Spain"), temperature=0, stream=True
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == [answer("Spain")]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=transformers_server.name, messages=question("Spain"), max_tokens=100000)
    assert bad.value.body["param"] == "max_tokens"


def test_a_full_queue_answers_429_with_retry_after(transformers_server):
    body = good_body(transformers_server.name, max_tokens=200, min_tokens=200)

    def post(_) -> requests.Response:
        return raw_post(transformers_server, body, AUTH | JSON)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(post, range(6)))
    statuses = sorted(r.status_code for r in responses)
    # One row generates and one waits: how many of six get in depends on when the batcher takes the first.
    assert set(statuses) == {200, 429} and statuses.count(429) >= 3, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert_still_answers(transformers_server)


@pytest.fixture(scope="module")
def api_schema(onnx_server):
    return schemathesis.openapi.from_url(f"{onnx_server.base}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_keeps_its_openapi_contract(case):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=120,
    )


# Issue 18: hostile clients and batch-mates.


def raw_request(server: Server, body: bytes, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    return head.encode() + body


def wait_for_count(server: Server, status: int, at_least: float) -> float:
    """The count of chat responses with this status, once it reaches `at_least` (bounded: 60 s)."""
    for _ in range(120):
        count = requests_counted(server, status)
        if count >= at_least:
            return count
        time.sleep(0.5)
    return count


# A client leaving while it waits for its answer: test_openai_server_disconnects.py, which closes the
# connection once its row is generating (a fixed sleep raced the tiny model on an idle machine).
def test_a_client_that_leaves_during_its_body_is_a_calm_499(onnx_server):
    before, log_before = requests_counted(onnx_server, 499), onnx_server.log.read_text()
    body = good_body(max_tokens=400, min_tokens=400)
    with onnx_server.connect() as connection:
        connection.sendall(raw_request(onnx_server, body[:20], content_length=len(body)))
        time.sleep(0.2)  # the server is reading the body
    assert wait_for_count(onnx_server, 499, before + 1) == before + 1
    new_log = onnx_server.log.read_text()[len(log_before) :]
    assert "Traceback" not in new_log and "ERROR" not in new_log and " 500 " not in new_log
    assert_still_answers(onnx_server)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"messages": [{"role": "user", "content": "hi"}], "\\ud800x": 1}', "?x"),  # a lone surrogate
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "top_p"),
    ],
    ids=["surrogate-name", "nan", "infinity"],
)
def test_json_that_is_not_quite_json_is_a_400_naming_the_field(onnx_server, body, param):
    response = raw_post(onnx_server, body, AUTH | JSON)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert_still_answers(onnx_server)


def test_many_empty_messages_are_refused_by_their_count(onnx_server):
    many = [{"role": "user", "content": ""}] * 2000  # 60 kB: within the body limit
    response = raw_post(onnx_server, json.dumps({"messages": many}, separators=(",", ":")).encode(), AUTH | JSON)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_messages"
    assert_still_answers(onnx_server)


def test_a_long_prompt_beside_a_short_one_leaves_the_short_ones_answer_whole(onnx_server):
    client = onnx_server.client()
    long = [{"role": "user", "content": "Spain " * 248}]  # about 500 of the context's 512 tokens

    def ask(job: tuple[list[dict[str, str]], int]):
        messages, max_tokens = job
        return client.chat.completions.create(
            model=onnx_server.name, messages=messages, max_tokens=max_tokens, temperature=0
        )

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=2) as pool:
            _, short = pool.map(ask, [(long, 4), (question("Spain"), 32)])
        assert short.choices[0].message.content == answer("Spain")
        assert short.choices[0].finish_reason == "stop"


# Property: whatever shares its batch, each request gets what it gets alone (greedy, or with its seed).

TINY_VOCABULARY = 448
chat_jobs = st.fixed_dictionaries(
    {
        "country": st.sampled_from(sorted(CAPITALS)),
        "long": st.booleans(),
        "stop": st.sampled_from([None, "Madrid", " is", "of"]),
        "temperature": st.sampled_from([0.0, 0.0, 0.7, 2.0]),
        "top_k": st.sampled_from([50, TINY_VOCABULARY]),
        "seed": st.integers(0, 10_000),
        "max_tokens": st.sampled_from([2, 6, 16, 40]),  # a long prompt leaves room for the first two
        "stream": st.booleans(),
    }
)


def ask_job(client: openai.OpenAI, job: dict) -> tuple:
    """What one request gets: (status, text, finish_reason), streamed or not."""
    # About 505 of the context's 512 tokens: with 7 tokens left, a batch-mate's answer would be cut short.
    filler = [{"role": "system", "content": "Spain " * 243}] if job["long"] else []
    fields = {"temperature": job["temperature"], "max_tokens": job["max_tokens"], "stop": job["stop"]}
    if job["temperature"] > 0:
        fields.update(seed=job["seed"], extra_body={"top_k": job["top_k"]})
    try:
        if not job["stream"]:
            reply = client.chat.completions.create(
                model=ONNX_NAME, messages=filler + question(job["country"]), **fields
            )
            return 200, reply.choices[0].message.content, reply.choices[0].finish_reason
        chunks = list(
            client.chat.completions.create(
                model=ONNX_NAME, messages=filler + question(job["country"]), stream=True, **fields
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return 200, text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    except openai.APIStatusError as error:
        return error.status_code, error.body.get("param"), None


@given(jobs=st.lists(chat_jobs, min_size=2, max_size=6))
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_concurrent_mixed_requests_get_what_each_gets_alone(onnx_server, jobs):
    client = onnx_server.client()
    alone = [ask_job(client, job) for job in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        together = list(pool.map(lambda job: ask_job(client, job), jobs))
    assert together == alone


def test_a_json_schema_answer_parses_and_validates_plain_and_streamed(onnx_server):
    import jsonschema

    client = onnx_server.client()
    plain = client.chat.completions.create(
        model=onnx_server.name, messages=question("Spain"), temperature=0, response_format=CITY_FORMAT, max_tokens=48
    )
    jsonschema.validate(json.loads(plain.choices[0].message.content), CITY_SCHEMA)
    stream = client.chat.completions.create(
        model=onnx_server.name,
        messages=question("Spain"),
        temperature=0,
        response_format=CITY_FORMAT,
        max_tokens=48,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == plain.choices[0].message.content
    free = client.chat.completions.create(model=onnx_server.name, messages=question("Spain"), temperature=0)
    assert free.choices[0].message.content == answer("Spain")  # an unconstrained request is unchanged


def test_a_schema_the_runtime_cannot_compile_or_a_transformers_model_is_a_400_naming_response_format(
    onnx_server, transformers_server
):
    broken = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    bad_shape = {"type": "json_schema"}  # no json_schema object
    for response_format in (broken, bad_shape):
        with pytest.raises(openai.BadRequestError) as refused:
            onnx_server.client().chat.completions.create(
                model=onnx_server.name, messages=question("Spain"), response_format=response_format
            )
        assert refused.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as refused:
        transformers_server.client().chat.completions.create(
            model=transformers_server.name, messages=question("Spain"), response_format=CITY_FORMAT
        )
    assert refused.value.body["param"] == "response_format"
