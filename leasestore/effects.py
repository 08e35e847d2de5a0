"""Effects: what an algorithm asks of the world. Algorithms are generators that yield effects
and receive results, so the same code runs on a real device (storage.runner) and in the
simulator (testing).

Result of each effect sent back into the generator:
  Read  -> bytes            (a StorageError is thrown into the generator instead on failure);
           with view=True possibly a read-only memoryview of the runner's buffer instead, which
           the runner does not reuse while any view of it lives
  Write -> None             (likewise)
  Batch -> tuple of outcomes, failures as StorageError values (majorities need partial results);
           with `need`, the runner may end it once that many of its first `need_among`
           effects have succeeded: the I/O still in flight then is abandoned and reported as
           IOTimeout (a write abandoned may still land; a later write over it waits for it)
  Sleep -> None             (Cancelled is thrown in if the runner is told to stop)
  Now   -> float, seconds on the local lease clock (clock.py: never set, counts suspend)
  Random -> float in [0, 1), from the runner's source (seeded in the simulator)
`device` names a device the runner was given; it is not a path the algorithm may open.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from leasestore.errors import StorageError


@dataclass(frozen=True)
class Read:
    device: str
    offset_b: int
    length_b: int
    timeout_s: float
    view: bool = False


@dataclass(frozen=True)
class Write:
    device: str
    offset_b: int
    data: bytes
    timeout_s: float


@dataclass(frozen=True)
class Batch:
    effects: tuple[Read | Write, ...]
    need: int = 0
    """0: every effect's outcome; n: enough once n of the counted effects have succeeded."""
    need_among: int = 0
    """The counted effects are the first need_among (0: all of them)."""

    def enough(self, succeeded: list[int]) -> bool:
        """Whether the effects at indices `succeeded` let the batch end early."""
        if not self.need:
            return False
        counted = self.need_among or len(self.effects)
        return sum(1 for index in succeeded if index < counted) >= self.need


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Now:
    pass


@dataclass(frozen=True)
class Random:
    pass


Effect = Read | Write | Batch | Sleep | Now | Random
BatchOutcome = bytes | None | StorageError

T = TypeVar("T")
Algorithm = Generator[Effect, Any, T]
"""A protocol step: yields effects, returns its result (or raises a LeasestoreError)."""
