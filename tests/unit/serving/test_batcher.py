"""Batching across requests, in process, on the real tiny ONNX engine.

`GatedEngine` pauses the engine after a given decode step until the test lets it go on, so what
happens while a batch generates (early answers, cancelling, queueing, admission of a new group) is
checked deterministically. It logs whose step each was (`trace`).
"""

from __future__ import annotations

import asyncio
import json
import threading

import jsonschema
import pytest

from slmflow.chat.request import ChatRequest, parse_requests
from slmflow.errors import BadRequestError, DeadlineExceededError
from slmflow.policy import RequestLimits, SamplingSettings
from slmflow.serving.batcher import (
    Accepted,
    Batcher,
    Delta,
    Failed,
    Finished,
    QueueFullError,
)
from testkit.structured import CITY_FORMAT, CITY_SCHEMA

CAPITALS = {"Spain": "Madrid", "Kenya": "Nairobi", "Peru": "Lima", "Japan": "Tokyo"}


def chat(country: str, **settings) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "user", "content": f"What is the capital of {country}?"},),
        settings=SamplingSettings(**{"max_tokens": 32, **settings}),
    )


class GatedEngine:
    """The real engine, paused after decode step `pause_after` until `release()`; counts batches and steps."""

    def __init__(self, engine, pause_after: int | None = None) -> None:
        self.engine = engine
        self.max_batch_size = engine.max_batch_size
        self.pause_after = pause_after
        self.paused = threading.Event()
        self.gate = threading.Event()
        self.steps = 0
        self.trace: list[str] = []  # per step, the last message of the group's first row

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def decode(self, rows):
        for step, _ in enumerate(self.engine.decode(rows), start=1):
            self.steps += 1
            self.trace.append(rows[0].request.messages[-1]["content"])
            yield None
            if step == self.pause_after:
                self.paused.set()
                self.gate.wait(timeout=60)

    def release(self) -> None:
        self.gate.set()


def submit_together(batcher, requests: list[ChatRequest], streams: list[bool]) -> list:
    """Submit while holding the batcher's lock, so that the generation thread sees them all at once."""
    with batcher._lock:
        return [batcher.submit(request, stream) for request, stream in zip(requests, streams, strict=True)]


async def collect(ticket) -> list:
    events = []
    while True:
        events.append(await asyncio.wait_for(ticket.next_event(), timeout=60))
        if isinstance(events[-1], Finished | Failed):
            return events


async def wait_for(flag: threading.Event) -> None:
    assert await asyncio.to_thread(flag.wait, 60)


def test_concurrent_requests_share_batches_and_keep_their_own_settings(onnx_engine):
    batches: list[int] = []

    async def scenario():
        batcher = Batcher(onnx_engine, max_batch_size=8, max_queue=32, on_batch=batches.append)
        try:
            requests = [chat(country) for country in CAPITALS] * 2 + [
                chat("Spain", max_tokens=3),
                chat("Spain", stop=("Madrid",)),
            ]
            tickets = submit_together(batcher, requests, [index % 2 == 0 for index in range(len(requests))])
            return await asyncio.gather(*(collect(ticket) for ticket in tickets))
        finally:
            batcher.close()

    results = asyncio.run(scenario())
    completions = [events[-1].completion for events in results]
    expected = [f"The capital of {c} is {city}." for c, city in CAPITALS.items()] * 2
    assert [c.text for c in completions[:8]] == expected
    assert completions[8].finish_reason == "length" and completions[8].completion_tokens == 3
    assert completions[9].text == "The capital of Spain is " and completions[9].finish_reason == "stop"
    for index, events in enumerate(results):
        assert isinstance(events[0], Accepted) == (index % 2 == 0)  # only a stream waits to start
        streamed = "".join(event.text for event in events if isinstance(event, Delta))
        assert streamed == (completions[index].text if index % 2 == 0 else "")
    assert sum(batches) == len(results) and max(batches) > 1


def test_a_row_that_finishes_early_is_answered_while_the_batch_goes_on(onnx_engine):
    engine = GatedEngine(onnx_engine, pause_after=3)

    async def scenario():
        batcher = Batcher(engine, max_batch_size=8, max_queue=8)
        try:
            short, long = submit_together(batcher, [chat("Spain", max_tokens=2), chat("Kenya")], [False, True])
            short_events = await collect(short)
            assert not engine.gate.is_set() and not long.done  # the long row is still generating
            engine.release()
            return short_events, await collect(long)
        finally:
            engine.release()
            batcher.close()

    short_events, long_events = asyncio.run(scenario())
    assert short_events[-1].completion.completion_tokens == 2
    assert long_events[-1].completion.text == "The capital of Kenya is Nairobi."


def test_requests_arriving_during_a_batch_wait_and_form_the_next_one(onnx_engine):
    engine = GatedEngine(onnx_engine, pause_after=1)
    batches: list[int] = []

    async def scenario():
        batcher = Batcher(engine, max_batch_size=2, max_queue=3, on_batch=batches.append, max_groups=1)
        try:
            first = batcher.submit(chat("Spain"), stream=False)
            await wait_for(engine.paused)
            waiting = [batcher.submit(chat(country), stream=False) for country in ("Peru", "Japan", "Kenya")]
            assert batcher.queue_depth == 3
            with pytest.raises(QueueFullError):
                batcher.submit(chat("Spain"), stream=False)
            engine.pause_after = None
            engine.release()
            return await asyncio.gather(*(collect(ticket) for ticket in [first, *waiting]))
        finally:
            engine.release()
            batcher.close()

    results = asyncio.run(scenario())
    assert [events[-1].completion.text for events in results] == [
        f"The capital of {c} is {CAPITALS[c]}." for c in ("Spain", "Peru", "Japan", "Kenya")
    ]
    assert batches == [1, 2, 1]


def test_a_cancelled_row_stops_and_the_others_finish(onnx_engine):
    engine = GatedEngine(onnx_engine, pause_after=2)
    cancelled: list[bool] = []

    async def scenario():
        batcher = Batcher(engine, max_batch_size=8, max_queue=8, on_cancel=lambda: cancelled.append(True))
        try:
            long = {"max_tokens": 200, "min_tokens": 200}
            leaving, staying = submit_together(batcher, [chat("Spain", **long), chat("Peru", **long)], [True, True])
            await wait_for(engine.paused)
            leaving.cancel()
            engine.release()
            staying_events = await collect(staying)
            return leaving, staying_events
        finally:
            engine.release()
            batcher.close()

    leaving, staying_events = asyncio.run(scenario())
    assert leaving.done and leaving.row.finish_reason == "cancelled" and cancelled == [True]
    assert len(leaving.row.tokens) < 200
    assert not any(isinstance(event, Finished) for event in _drain(leaving))
    assert staying_events[-1].completion.completion_tokens == 200


def _drain(ticket) -> list:
    events = []
    while not ticket.events.empty():
        events.append(ticket.events.get_nowait())
    return events


def test_a_burst_arriving_at_an_idle_batcher_starts_as_one_batch(onnx_engine):
    batches: list[int] = []

    async def scenario():
        batcher = Batcher(onnx_engine, max_batch_size=8, max_queue=8, on_batch=batches.append, gather_seconds=0.5)
        try:
            first = batcher.submit(chat("Spain"), stream=False)
            await asyncio.sleep(0.05)  # well within the pause that ends a burst
            rest = [batcher.submit(chat(country), stream=False) for country in ("Peru", "Japan", "Kenya")]
            return await asyncio.gather(*(collect(ticket) for ticket in [first, *rest]))
        finally:
            batcher.close()

    results = asyncio.run(scenario())
    assert [events[-1].completion.text for events in results] == [
        f"The capital of {c} is {CAPITALS[c]}." for c in ("Spain", "Peru", "Japan", "Kenya")
    ]
    assert batches == [4]


def test_seeded_sampling_is_repeatable_whatever_arrives_with_it(onnx_engine):
    batches: list[int] = []
    seeded = chat("Japan", temperature=1.5, seed=7, max_tokens=24)

    async def scenario():
        batcher = Batcher(onnx_engine, max_batch_size=8, max_queue=8, on_batch=batches.append)
        try:
            alone = await collect(batcher.submit(seeded, stream=False))
            together = submit_together(batcher, [seeded, seeded, chat("Peru", temperature=1.5, seed=3)], [False] * 3)
            return alone, await asyncio.gather(*(collect(ticket) for ticket in together))
        finally:
            batcher.close()

    alone, together = asyncio.run(scenario())
    assert together[0][-1].completion.text == together[1][-1].completion.text == alone[-1].completion.text
    assert batches == [1, 1, 1, 1]


def test_a_bad_request_fails_alone_and_the_next_one_is_answered(onnx_engine):
    async def scenario():
        batcher = Batcher(onnx_engine, max_batch_size=8, max_queue=8)
        try:
            bad = batcher.submit(chat("Spain", max_tokens=10**6, max_tokens_explicit=True), stream=False)
            good = batcher.submit(chat("Peru"), stream=False)
            return await collect(bad), await collect(good)
        finally:
            batcher.close()

    bad, good = asyncio.run(scenario())
    assert isinstance(bad[-1], Failed) and isinstance(bad[-1].error, BadRequestError)
    assert bad[-1].error.param == "max_tokens"
    assert good[-1].completion.text == "The capital of Peru is Lima."


# Issue 18


def test_a_rows_budget_does_not_depend_on_what_arrives_with_it(onnx_engine):
    long = ChatRequest(
        messages=({"role": "user", "content": "Spain " * 248},),  # about 500 of the context's 512 tokens
        settings=SamplingSettings(max_tokens=4),
    )

    async def scenario():
        batcher = Batcher(onnx_engine, max_batch_size=8, max_queue=8)
        try:
            tickets = submit_together(batcher, [long, chat("Spain")], [False, True])
            return await asyncio.gather(*(collect(ticket) for ticket in tickets))
        finally:
            batcher.close()

    _, short = asyncio.run(scenario())
    completion = short[-1].completion
    assert (completion.text, completion.finish_reason) == ("The capital of Spain is Madrid.", "stop")
    assert "".join(event.text for event in short if isinstance(event, Delta)) == completion.text


def test_a_stream_cancelled_while_queued_is_counted(onnx_engine):
    engine = GatedEngine(onnx_engine, pause_after=1)
    cancelled: list[bool] = []

    async def scenario():
        batcher = Batcher(engine, max_batch_size=1, max_queue=8, on_cancel=lambda: cancelled.append(True))
        try:
            first = batcher.submit(chat("Spain"), stream=False)
            await wait_for(engine.paused)
            queued = batcher.submit(chat("Peru"), stream=True)
            queued.cancel()  # its client left while the engine is busy with the first
            engine.pause_after = None
            engine.release()
            await collect(first)
            return queued
        finally:
            engine.release()
            batcher.close()

    queued = asyncio.run(scenario())
    assert cancelled == [True] and queued.done
    assert not any(isinstance(event, Finished) for event in _drain(queued))


def test_a_request_past_the_models_deadline_fails_queued_or_generating(onnx_engine):
    engine = GatedEngine(onnx_engine, pause_after=1)
    deadline = RequestLimits(timeout_seconds=0.2)

    async def scenario():
        batcher = Batcher(engine, max_batch_size=1, max_queue=8, limits=deadline)
        try:
            generating = batcher.submit(chat("Spain"), stream=False)
            await wait_for(engine.paused)
            queued = batcher.submit(chat("Peru"), stream=False)
            await asyncio.sleep(0.3)  # both pass the deadline while the engine is held
            engine.pause_after = None
            engine.release()
            return await collect(generating), await collect(queued)
        finally:
            engine.release()
            batcher.close()

    for events in asyncio.run(scenario()):
        assert isinstance(events[-1], Failed) and isinstance(events[-1].error, DeadlineExceededError)


def test_the_models_total_token_limit_is_applied_to_each_request(onnx_engine):
    async def scenario():
        batcher = Batcher(onnx_engine, max_batch_size=8, max_queue=8, limits=RequestLimits(max_total_tokens=30))
        try:
            return await collect(batcher.submit(chat("Spain", max_tokens=32), stream=False))
        finally:
            batcher.close()

    failed = asyncio.run(scenario())[-1]
    assert isinstance(failed, Failed) and failed.error.code == "request_too_large"


# Issue 21: requests admitted between decode steps

LONG = {"max_tokens": 120, "min_tokens": 120}
JSON_QUESTION = parse_requests(
    [{"messages": [{"role": "user", "content": "Capital of Peru?"}], "response_format": CITY_FORMAT}], None
)[0]


def streamed(events: list) -> str:
    return "".join(event.text for event in events if isinstance(event, Delta))


@pytest.mark.parametrize(
    "late",
    [
        chat("Peru"),
        chat("Kenya", stop=("Nairobi",)),
        chat("Japan", temperature=1.5, seed=11),
        JSON_QUESTION,
    ],
    ids=["greedy", "stop-string", "seeded", "json-schema"],
)
def test_a_request_arriving_during_a_long_generation_starts_before_it_ends_and_gets_its_answer_alone(onnx_engine, late):
    engine = GatedEngine(onnx_engine, pause_after=3)

    async def scenario():
        alone_batcher = Batcher(onnx_engine, max_batch_size=8, max_queue=8, max_groups=1)
        batcher = Batcher(engine, max_batch_size=8, max_queue=8, max_groups=2)
        try:
            alone = await collect(alone_batcher.submit(late, stream=True))
            long = batcher.submit(chat("Spain", **LONG), stream=True)
            await wait_for(engine.paused)
            short = batcher.submit(late, stream=True)
            engine.pause_after = None
            engine.release()
            return alone, await asyncio.gather(collect(long), collect(short))
        finally:
            engine.release()
            alone_batcher.close()
            batcher.close()

    alone, (long_events, late_events) = asyncio.run(scenario())
    assert late_events[-1].completion == alone[-1].completion
    assert streamed(late_events) == streamed(alone) == alone[-1].completion.text
    assert long_events[-1].completion.completion_tokens == 120
    late_steps = [step for step, whose in enumerate(engine.trace) if whose == late.messages[-1]["content"]]
    assert late_steps[0] == 4  # right after the step that was running when it arrived
    assert late_steps[-1] < len(engine.trace) - 100  # it ended while the long one had about 100 tokens to go
    if late.settings.response_format is not None:
        jsonschema.validate(json.loads(late_events[-1].completion.text), CITY_SCHEMA)


def test_a_burst_beside_a_long_generation_gets_what_each_gets_alone(onnx_engine):
    late = [chat(country, **settings) for country in CAPITALS for settings in ({}, {"max_tokens": 3})]
    engine = GatedEngine(onnx_engine)
    batches: list[int] = []

    async def scenario():
        batcher = Batcher(engine, max_batch_size=3, max_queue=16, max_groups=3, on_batch=batches.append)
        try:
            alone = [await collect(batcher.submit(request, stream=False)) for request in late]
            engine.pause_after = 2
            long = batcher.submit(chat("Spain", **LONG), stream=True)
            await wait_for(engine.paused)
            engine.pause_after = None
            together = [batcher.submit(request, stream=index % 2 == 0) for index, request in enumerate(late)]
            engine.release()
            return alone, await asyncio.gather(collect(long), *(collect(ticket) for ticket in together))
        finally:
            engine.release()
            batcher.close()

    alone, (long_events, *together) = asyncio.run(scenario())
    assert [events[-1].completion for events in together] == [events[-1].completion for events in alone]
    assert long_events[-1].completion.completion_tokens == 120
    assert batches[len(late) + 1 :] == [3, 3, 2]  # the burst in groups of at most 3, beside the long one
