"""Batching across requests: one generation thread drives the engine; concurrent requests share batches.

Requests that arrive while a batch generates wait (in a bounded queue) and form the next batch, up
to `max_batch_size` rows that share the engine's batch key and fit the context together, each with
its whole budget (so no row's answer depends on its batch-mates). Every row keeps its own parameters, stop
strings, usage and stream. A row that finishes early is answered at once, a cancelled row (its
client went away) stops taking tokens, and new requests are validated between decode steps, so a
bad request gets its 400 without waiting for the running batch. Each request has the model's
deadline (`limits.timeout_seconds`), queued or generating; past it, it fails (HTTP 504).

The engine is touched by the generation thread only (onnxruntime-genai objects are not
thread-safe); the asyncio side talks to it through `Ticket`s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from slmflow.errors import DeadlineExceededError
from slmflow.policy import RequestLimits, SamplingSettings

log = logging.getLogger(__name__)


class Row(Protocol):
    settings: SamplingSettings
    text: str  # decoded so far
    visible_text: str  # what can be streamed: never the start of a stop string
    finish_reason: str | None

    def cancel(self) -> None: ...


RowT = TypeVar("RowT", bound=Row)


class Engine(Protocol[RowT]):
    """What the batcher needs from a model: the step-wise API of `OnnxChatEngine`, over its own rows."""

    max_batch_size: int

    def prepare(self, request: Any, limits: RequestLimits) -> RowT: ...

    def batch_key(self, row: RowT) -> Hashable: ...

    def fits(self, rows: list[RowT]) -> bool: ...

    def decode(self, rows: list[RowT]) -> Iterator[None]: ...

    def completion(self, row: RowT) -> Any: ...


class QueueFullError(Exception):
    """The wait queue is full: the request is refused now (HTTP 429) rather than queued without bound."""


class BatcherStoppedError(Exception):
    """The server is shutting down."""


@dataclass(frozen=True)
class Accepted:
    """A streaming request passed the engine's checks and waits for a batch: its stream can start."""


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    completion: Any


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Accepted | Delta | Finished | Failed


@dataclass(eq=False)
class Ticket:
    """One request's place in the batcher, and the stream of events it gets back."""

    request: Any
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    first_token_at: float | None = None
    row: Row | None = None
    cancelled: bool = False
    done: bool = False
    emitted: int = 0

    @property
    def prepared(self) -> Row:
        """The row of a ticket that may be batched: only tickets whose request was prepared are."""
        if self.row is None:
            raise RuntimeError("a ticket is batched only once its row is prepared")
        return self.row

    def cancel(self) -> None:
        """The client went away: stop generating for it (read by the generation thread)."""
        self.cancelled = True

    async def next_event(self) -> Event:
        return await self.events.get()

    def _send(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


class Batcher:
    """Owns the generation thread; `submit` from the event loop, read events from the ticket."""

    def __init__(
        self,
        engine: Engine[Any],
        max_batch_size: int,
        max_queue: int,
        limits: RequestLimits | None = None,
        on_batch: Callable[[int], None] = lambda size: None,
        on_cancel: Callable[[], None] = lambda: None,
        gather_seconds: float = 0.001,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self.engine = engine
        self.max_batch_size = min(max_batch_size, engine.max_batch_size)
        self.max_queue = max_queue
        self.limits = limits or RequestLimits()
        self._on_batch = on_batch
        self._on_cancel = on_cancel
        self.gather_seconds = gather_seconds
        self._waiting: list[Ticket] = []
        self._lock = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="slmflow-generation", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not the ones generating now)."""
        with self._lock:
            return len(self._waiting)

    def submit(self, request: Any, stream: bool) -> Ticket:
        """Queue a request; raises QueueFullError when `max_queue` requests already wait."""
        ticket = Ticket(request=request, stream=stream, loop=asyncio.get_running_loop())
        ticket.deadline = ticket.submitted_at + self.limits.timeout_seconds
        with self._lock:
            if self._stopped:
                raise BatcherStoppedError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(ticket)
            self._lock.notify()
        return ticket

    def close(self, timeout: float = 30) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()
        self._thread.join(timeout)

    # Everything below runs on the generation thread.

    def _run(self) -> None:
        while True:
            with self._lock:
                idle = not self._waiting
                while not self._waiting and not self._stopped:
                    self._lock.wait()
                if idle:
                    self._gather()
                if self._stopped:
                    waiting, self._waiting = self._waiting, []
                    break
            self._admit()
            batch = self._next_batch()
            if batch:
                self._generate(batch)
        for ticket in waiting:
            ticket._send(Failed(BatcherStoppedError("the server is shutting down")))

    def _gather(self) -> None:
        """Coming out of idle, let a burst of requests arrive before starting: wait while they keep
        coming (a pause of `gather_seconds` ends it, and so does a full batch or ten pauses in all).
        Without this, the first of many simultaneous requests would start alone and the others wait
        for its whole answer. Called with the lock held."""
        deadline = time.monotonic() + 10 * self.gather_seconds
        seen = len(self._waiting)
        while seen < self.max_batch_size and not self._stopped and time.monotonic() < deadline:
            self._lock.wait(self.gather_seconds)
            if len(self._waiting) == seen:
                return
            seen = len(self._waiting)

    def _admit(self) -> None:
        """Validate and tokenize the requests that arrived: a bad one fails now, not after the batch."""
        with self._lock:
            self._drop_cancelled_and_expired()
            arrivals = [ticket for ticket in self._waiting if ticket.row is None]
        for ticket in arrivals:
            try:
                ticket.row = self.engine.prepare(ticket.request, self.limits)
            except Exception as error:
                with self._lock:
                    self._waiting.remove(ticket)
                ticket.done = True
                ticket._send(Failed(error))
            else:
                if ticket.stream:  # a stream starts now; a plain request only needs its answer
                    ticket._send(Accepted())

    def _next_batch(self) -> list[Ticket]:
        """The oldest ready request and the next ones that can join it: the same batch key, and every
        row's whole budget within the context (`engine.fits`), up to the batch size."""
        with self._lock:
            self._drop_cancelled_and_expired()
            ready = [ticket for ticket in self._waiting if ticket.row is not None]
            if not ready:
                return []
            key = self._batch_key(ready[0].prepared)
            batch = [ready[0]]
            for ticket in ready[1:]:
                if len(batch) == self.max_batch_size:
                    break
                if self._batch_key(ticket.prepared) == key and self.engine.fits([t.prepared for t in (*batch, ticket)]):
                    batch.append(ticket)
            for ticket in batch:
                self._waiting.remove(ticket)
        return batch

    def _drop_cancelled_and_expired(self) -> None:
        """Waiting tickets whose client left are counted as cancelled; those past their deadline fail.
        Called with the lock held."""
        keep = []
        now = time.monotonic()
        for ticket in self._waiting:
            if ticket.cancelled:
                ticket.done = True
                self._on_cancel()
            elif now > ticket.deadline:
                self._expire(ticket)
            else:
                keep.append(ticket)
        self._waiting = keep

    def _expire(self, ticket: Ticket) -> None:
        if ticket.row is not None:
            ticket.row.cancel()
        ticket.done = True
        seconds = self.limits.timeout_seconds
        ticket._send(Failed(DeadlineExceededError(f"the request did not finish within its deadline of {seconds:g} s")))

    def _batch_key(self, row: Row) -> Hashable:
        """The engine's key, except that a row sampled with a seed generates alone: in a shared generator
        its tokens would come from one random stream with its batch-mates', so not be repeatable."""
        key = self.engine.batch_key(row)
        if row.settings.seed is not None and row.settings.temperature > 0:
            return (key, id(row))
        return key

    def _generate(self, batch: list[Ticket]) -> None:
        self._on_batch(len(batch))
        try:
            for _ in self.engine.decode([ticket.prepared for ticket in batch]):
                self._progress(batch)
                self._admit()
            self._progress(batch)
        except Exception as error:
            log.exception("generation failed for a batch of %d", len(batch))
            for ticket in batch:
                if not ticket.done:
                    ticket.done = True
                    ticket._send(Failed(error))

    def _progress(self, batch: list[Ticket]) -> None:
        """After a decode step: cancel rows whose clients left, stream new text, answer finished rows."""
        for ticket in batch:
            if ticket.done:
                continue
            row = ticket.prepared
            if ticket.cancelled:
                row.cancel()
                ticket.done = True
                self._on_cancel()
                continue
            if row.finish_reason is None and time.monotonic() > ticket.deadline:
                self._expire(ticket)
                continue
            if ticket.first_token_at is None and row.text:
                ticket.first_token_at = time.monotonic()
            if row.finish_reason is None:
                if ticket.stream:
                    self._stream_text(ticket, row.visible_text)
                continue
            completion = self.engine.completion(row)
            if ticket.first_token_at is None:
                ticket.first_token_at = time.monotonic()
            if ticket.stream:
                self._stream_text(ticket, completion.text)
            ticket.done = True
            ticket._send(Finished(completion))

    @staticmethod
    def _stream_text(ticket: Ticket, text: str) -> None:
        """Send what is new in the row's visible text (it only grows: earlier pieces are never taken back)."""
        if len(text) > ticket.emitted:
            ticket._send(Delta(text[ticket.emitted :]))
            ticket.emitted = len(text)
