"""Admission between decode steps, as pure logic: which generator group steps next, and which waiting rows form one.

onnxruntime-genai 0.18 fixes a Generator's batch once its prompts are appended, and `og.Engine`'s
continuous mode needs a paged KV cache that the CPU builder does not produce. So a request that
arrives while others generate is admitted by starting another Generator (a group) beside the
running ones, at most `max_groups` of them, each stepped one token in turn from the one generation
thread (benchmarks/admission.py measured the trade: more groups, earlier first tokens; past about
two here, fewer tokens/s, as small groups take batch-1 steps). `max_groups=1` is static batching: a
request waits for the whole running batch.

No model, no threads, no clock here: the batcher (`slmflow.serving.batcher`) drives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

DEFAULT_MAX_GROUPS = 2  # measured on SmolLM2-135M int4 through the Batcher: benchmarks/README.md, "--max-groups"

G = TypeVar("G")
T = TypeVar("T")


class GroupTurns(Generic[G]):
    """The running groups and whose turn it is: round-robin, one step each, and a group just admitted
    steps first (its prefill, then its first token, is what its requests wait for)."""

    def __init__(self, max_groups: int) -> None:
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        self.max_groups = max_groups
        self._line: deque[G] = deque()

    def __len__(self) -> int:
        return len(self._line)

    @property
    def has_room(self) -> bool:
        return len(self._line) < self.max_groups

    def admit(self, group: G) -> None:
        if not self.has_room:
            raise RuntimeError(f"already {len(self._line)} groups running, the cap is {self.max_groups}")
        self._line.appendleft(group)

    def next_group(self) -> G | None:
        """The group to step now; it goes to the back of the line."""
        if not self._line:
            return None
        self._line.rotate(-1)
        return self._line[-1]

    def retire(self, group: G) -> None:
        """A group whose rows are all finished or cancelled frees its slot at once."""
        self._line.remove(group)


def form_group(
    ready: Sequence[T], key: Callable[[T], Hashable], fits: Callable[[list[T]], bool], max_rows: int
) -> list[T]:
    """The oldest ready item and the next ones that can join it: the same batch key, and all of them
    together passing `fits` (every row's whole budget within the context, so no row's budget depends
    on its batch-mates), up to `max_rows`. Those left out wait for a later group, in order."""
    if not ready:
        return []
    first_key = key(ready[0])
    group = [ready[0]]
    for item in ready[1:]:
        if len(group) == max_rows:
            break
        if key(item) == first_key and fits([*group, item]):
            group.append(item)
    return group
