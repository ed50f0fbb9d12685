"""Rows being generated: one request's prompt, budget and progress, and how rows are grouped into batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from slmflow.chat.request import ChatRequest
from slmflow.chat.stopping import visible_prefix
from slmflow.errors import BadRequestError
from slmflow.policy import RequestLimits, SamplingSettings


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class GenerationRow:
    """One request being generated: its prompt, its budget and what it has decoded so far.

    `finish_reason` is None while generating, then "stop", "length", "timeout" or "cancelled"."""

    request: ChatRequest
    prompt_ids: list[int]
    max_new_tokens: int
    stream: Any = field(repr=False)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None

    @property
    def settings(self) -> SamplingSettings:
        return self.request.settings

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Finish this row now (its client went away); the batch stops once every row is finished."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    @property
    def visible_text(self) -> str:
        """The text decoded so far that can be streamed: never the start of a stop string."""
        return visible_prefix(self.text, self.settings.stop, self.done)


def fits_together(rows: Sequence[GenerationRow], context_length: int) -> bool:
    """Whether one runtime batch can give every row its whole budget: the batch's length is its
    longest prompt plus its largest budget, and that must stay within the context."""
    longest = max(len(row.prompt_ids) for row in rows)
    return longest + max(row.max_new_tokens for row in rows) <= context_length


def batches(rows: Sequence[GenerationRow], key, size: int, context_length: int) -> Iterator[list[GenerationRow]]:
    """Rows grouped by batch key (in order of first appearance) into batches of at most `size` rows
    that fit together, so that no row's budget depends on its batch-mates."""
    open_batches: dict[tuple, list[list[GenerationRow]]] = {}
    for row in rows:
        candidates = open_batches.setdefault(key(row), [])
        home = next(
            (b for b in candidates if len(b) < size and fits_together([*b, row], context_length)),
            None,
        )
        if home is None:
            candidates.append([row])
        else:
            home.append(row)
    for group in open_batches.values():
        yield from group


def check_total_tokens(rows: Sequence[GenerationRow], limits: RequestLimits) -> None:
    refuse_beyond_total_tokens(sum(len(row.prompt_ids) + row.max_new_tokens for row in rows), limits)


def refuse_beyond_total_tokens(total: int, limits: RequestLimits) -> None:
    """`total` is what a request may take: its rows' prompt tokens plus their budgets."""
    if total > limits.max_total_tokens:
        raise BadRequestError(
            f"the request asks for {total} tokens in all (rows x (prompt + max_tokens)), more than the limit "
            f"of {limits.max_total_tokens}",
            "max_tokens",
            code="request_too_large",
        )
