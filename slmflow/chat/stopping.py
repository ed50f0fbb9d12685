"""Stop strings: where an answer ends, and how much of a growing answer may be shown yet."""

from __future__ import annotations

from collections.abc import Sequence


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in the text, if any does."""
    positions = [text.index(stop) for stop in stops if stop in text]
    return min(positions) if positions else None


def visible_prefix(text: str, stops: Sequence[str], finished: bool) -> str:
    """The text that can be shown: cut at a stop string, and while generating, without a tail that
    may still become the start of one."""
    cut = first_stop(text, stops)
    if cut is not None:
        return text[:cut]
    if finished or not stops:
        return text
    hold = max(len(stop) - 1 for stop in stops)
    return text[: max(0, len(text) - hold)]
