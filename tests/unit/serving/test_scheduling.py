"""Admission between decode steps without a model: the pure turn-taking and group forming, then the batcher's
scheduling over `CountingEngine`, whose rows take one letter per step and which logs whose step each was."""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass

import pytest

from slmflow.chat.onnx.rows import Completion
from slmflow.policy import RequestLimits, SamplingSettings
from slmflow.serving.batcher import Batcher, Failed, Finished
from slmflow.serving.scheduling import GroupTurns, form_group

# The pure logic


def test_groups_take_turns_round_robin_and_a_new_group_steps_first():
    turns: GroupTurns[str] = GroupTurns(max_groups=3)
    turns.admit("A")
    assert [turns.next_group() for _ in range(2)] == ["A", "A"]
    turns.admit("B")
    assert [turns.next_group() for _ in range(3)] == ["B", "A", "B"]
    turns.admit("C")
    assert [turns.next_group() for _ in range(4)] == ["C", "A", "B", "C"]


def test_the_cap_is_respected_and_a_retired_group_frees_its_slot():
    turns: GroupTurns[str] = GroupTurns(max_groups=2)
    turns.admit("A")
    turns.admit("B")
    assert not turns.has_room
    with pytest.raises(RuntimeError, match="cap is 2"):
        turns.admit("C")
    turns.retire("A")
    assert turns.has_room and len(turns) == 1
    turns.admit("C")
    assert [turns.next_group() for _ in range(4)] == ["C", "B", "C", "B"]
    turns.retire("B")
    turns.retire("C")
    assert turns.next_group() is None and len(turns) == 0


def test_one_group_is_static_batching():
    turns: GroupTurns[str] = GroupTurns(max_groups=1)
    turns.admit("A")
    assert not turns.has_room
    with pytest.raises(ValueError):
        GroupTurns(max_groups=0)


def test_a_group_is_the_oldest_row_and_the_next_ones_that_share_its_key_and_fit():
    rows = [("greedy", 300), ("sampled", 10), ("greedy", 300), ("greedy", 100), ("greedy", 50), ("greedy", 10)]

    def fits(group):  # a context of 512: one row of 300 leaves room for no other of 300
        return sum(budget for _, budget in group) <= 512

    group = form_group(rows, key=lambda row: row[0], fits=fits, max_rows=3)
    assert group == [rows[0], rows[3], rows[4]]  # the sampled row and the second 300 wait, and the cap ends it
    assert form_group(rows, key=lambda row: row[0], fits=fits, max_rows=8) == [rows[0], *rows[3:]]
    assert form_group([], key=lambda row: row, fits=fits, max_rows=8) == []


# The batcher's scheduling, over an engine without a model


@dataclass(eq=False)
class CountingRow:
    name: str
    settings: SamplingSettings
    budget: int
    text: str = ""
    finish_reason: str | None = None

    @property
    def visible_text(self) -> str:
        return self.text

    def cancel(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "cancelled"


class CountingEngine:
    """Rows named by their request, each taking one letter per step until its budget. Logs the names each
    step served, and how many groups were open at once. After the steps in `pauses` it hands the step
    number to the test (`paused`) and waits for `go`, still inside the step: the batcher is held there."""

    max_batch_size = 8

    def __init__(self, pauses: set[int] = frozenset()) -> None:
        self.log: list[tuple[str, ...]] = []
        self.open = self.most_open = 0
        self.pauses = pauses
        self.paused: queue.Queue[int] = queue.Queue()
        self.go: queue.Queue[None] = queue.Queue()

    def prepare(self, request: tuple[str, int], limits: RequestLimits) -> CountingRow:
        name, budget = request
        return CountingRow(name, SamplingSettings(max_tokens=budget), budget)

    def batch_key(self, row: CountingRow) -> tuple:
        return row.settings.batch_key()

    def fits(self, rows: list[CountingRow]) -> bool:
        return len(rows) <= self.max_batch_size

    def decode(self, rows: list[CountingRow]):
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while not all(row.finish_reason for row in rows):
                self.log.append(tuple(row.name for row in rows if row.finish_reason is None))
                for row in rows:
                    if row.finish_reason is None:
                        row.text += row.name[0].lower()
                        if len(row.text) == row.budget:
                            row.finish_reason = "length"
                if len(self.log) in self.pauses:
                    self.paused.put(len(self.log))
                    self.go.get(timeout=60)
                yield None
        finally:
            self.open -= 1

    def completion(self, row: CountingRow) -> Completion:
        return Completion(row.text, row.finish_reason or "length", 0, len(row.text))


async def answer(ticket) -> Finished | Failed:
    while True:
        event = await asyncio.wait_for(ticket.next_event(), timeout=60)
        if isinstance(event, Finished | Failed):
            return event


async def at_pause(engine: CountingEngine) -> int:
    return await asyncio.to_thread(engine.paused.get, timeout=60)


def run_arrivals(engine: CountingEngine, max_groups: int, arrivals: dict[int, list[tuple[str, int]]], **options):
    """Submit ("A", 10) at once, then each list of `arrivals` while the engine is held after that step;
    returns every request's answer text and the batcher's cancellation count."""
    cancelled: list[bool] = []

    async def scenario():
        batcher = Batcher(
            engine, max_batch_size=8, max_queue=8, max_groups=max_groups, on_cancel=lambda: cancelled.append(True)
        )
        try:
            tickets = {"A": batcher.submit(("A", 10), stream=True)}
            for step in sorted(arrivals):
                assert await at_pause(engine) == step
                for name, budget in arrivals[step]:
                    if budget:
                        tickets[name] = batcher.submit((name, budget), stream=True)
                    else:  # budget 0: that request's client leaves now
                        tickets[name].cancel()
                engine.go.put(None)
            done = {name: ticket for name, ticket in tickets.items() if not ticket.cancelled}
            events = await asyncio.gather(*(answer(ticket) for ticket in done.values()))
            return {name: event.completion.text for name, event in zip(done, events, strict=True)}
        finally:
            engine.pauses = set()
            engine.go.put(None)  # a test that failed while the engine was held lets it go
            batcher.close()

    return asyncio.run(scenario()), len(cancelled)


def test_a_request_arriving_mid_generation_starts_at_the_next_step_and_takes_turns():
    engine = CountingEngine(pauses={2})
    texts, _ = run_arrivals(engine, max_groups=2, arrivals={2: [("B", 3), ("C", 3)]})
    A, BC = ("A",), ("B", "C")
    assert engine.log == [A, A, BC, A, BC, A, BC] + [A] * 6
    assert texts == {"A": "a" * 10, "B": "bbb", "C": "ccc"}


def test_with_one_group_a_request_waits_for_the_running_batch():
    engine = CountingEngine(pauses={2})
    texts, _ = run_arrivals(engine, max_groups=1, arrivals={2: [("B", 3)]})
    assert engine.log == [("A",)] * 10 + [("B",)] * 3
    assert texts == {"A": "a" * 10, "B": "bbb"}


def test_no_more_groups_than_the_cap_run_and_the_next_waits_for_a_free_slot():
    engine = CountingEngine(pauses={1, 3})
    texts, _ = run_arrivals(engine, max_groups=2, arrivals={1: [("B", 2)], 3: [("C", 2)]})
    assert engine.most_open == 2
    # B starts at once; C, arriving while A and B hold both slots, starts when B ends.
    assert engine.log == [("A",), ("B",), ("A",), ("B",), ("C",), ("A",), ("C",)] + [("A",)] * 7
    assert texts == {"A": "a" * 10, "B": "bb", "C": "cc"}


def test_a_group_whose_clients_left_takes_no_more_steps_and_frees_its_slot():
    engine = CountingEngine(pauses={1, 3})
    texts, cancelled = run_arrivals(engine, max_groups=2, arrivals={1: [("B", 9)], 3: [("B", 0), ("C", 2)]})
    assert engine.log == [("A",), ("B",), ("A",), ("C",), ("A",), ("C",)] + [("A",)] * 7
    assert texts == {"A": "a" * 10, "C": "cc"} and cancelled == 1
