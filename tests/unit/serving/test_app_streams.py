"""A stream hands its version back exactly once: when it ends, fails, or is dropped before it started."""

from __future__ import annotations

import asyncio
import gc

import pytest

from slmflow.serving.app import _released_after


async def events(count: int, fail: bool = False):
    for index in range(count):
        yield f"data: {index}\n\n"
    if fail:
        raise RuntimeError("generation failed")


def test_a_finished_stream_releases_once():
    released: list[int] = []

    async def read() -> list[str]:
        return [event async for event in _released_after(events(3), lambda: released.append(1))]

    assert asyncio.run(read()) == ["data: 0\n\n", "data: 1\n\n", "data: 2\n\n"]
    gc.collect()
    assert released == [1]


def test_a_failed_or_abandoned_stream_releases_once():
    released: list[str] = []

    async def read_failing() -> None:
        async for _ in _released_after(events(2, fail=True), lambda: released.append("failed")):
            pass

    with pytest.raises(RuntimeError):
        asyncio.run(read_failing())

    async def leave_after_one() -> None:
        stream = _released_after(events(5), lambda: released.append("left"))
        assert await anext(stream) == "data: 0\n\n"
        await stream.aclose()  # what the server does when the client goes away mid-stream

    asyncio.run(leave_after_one())
    gc.collect()
    assert released == ["failed", "left"]


def test_a_stream_dropped_before_its_first_event_still_releases():
    released: list[str] = []
    stream = _released_after(events(1), lambda: released.append("dropped"))
    assert released == []
    del stream
    gc.collect()
    assert released == ["dropped"]
