"""The device protocol every storage backend (real or simulated) implements.

Offsets and lengths are bytes and must be multiples of `sector_size`. `read`/`write` either
complete within `timeout_s` or raise `IOTimeout`; an abandoned I/O may still land later (a
simulated or real disk decides), which the algorithms must tolerate. `submit` runs several I/Os
concurrently and returns each outcome as a value, so a majority can be judged from partial success.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from leasestore.errors import StorageError


@dataclass(frozen=True)
class ReadOp:
    """`view`: the caller accepts a read-only memoryview instead of bytes (no copy is made)."""

    offset_b: int
    length_b: int
    view: bool = False


@dataclass(frozen=True)
class WriteOp:
    offset_b: int
    data: bytes | memoryview
    """Copied into an aligned buffer before it is issued: a view of a caller's buffer does."""


IOOp = ReadOp | WriteOp
IOOutcome = bytes | memoryview | None | StorageError
"""bytes (or a read-only view, if asked for) for a read, None for a write, the error for a failed
or timed-out I/O."""


class Device(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def sector_size(self) -> int: ...

    @property
    def size_b(self) -> int: ...

    def read(self, offset_b: int, length_b: int, timeout_s: float) -> bytes: ...

    def read_view(self, offset_b: int, length_b: int, timeout_s: float) -> bytes | memoryview: ...

    def write(self, offset_b: int, data: bytes, timeout_s: float) -> None: ...

    def submit(self, ops: Sequence[IOOp], timeout_s: float,
               give_up: threading.Event | None = None) -> list[IOOutcome]: ...

    def close(self) -> None: ...
