"""`DirectDevice`: O_DIRECT, O_SYNC reads and writes on a block device or regular file.

Every I/O is one kernel AIO request bounded by a timeout (see `aio`). Offsets and lengths must be
multiples of the device's logical sector size (BLKSSZGET on block devices; 512 for regular files,
as sanlock assumes), and every I/O must lie inside the device: nothing is silently extended.
Short transfers are continued until complete, an error, end of device, or the deadline.
A timed-out I/O raises IOTimeout; its buffer is never returned to the pool.

Write ordering: a timed-out write may still land later. A new write overlapping such a write
first waits for it (within its own timeout) and is not issued at all if it is still in flight,
so an older write of ours can never land over a newer one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
import time
from collections.abc import Sequence

from leasestore.errors import (
    DeviceMissing,
    DeviceTooSmall,
    DirectIOUnsupported,
    IOFailed,
    IOTimeout,
    NotAligned,
    StorageError,
)
from leasestore.storage.aio import (
    IOCB_CMD_PREAD,
    IOCB_CMD_PWRITE,
    AioContext,
    AlignedBuffer,
    Completion,
)
from leasestore.storage.device import IOOp, IOOutcome, ReadOp, WriteOp

BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272
FILE_SECTOR_SIZE = 512
POOL_DEPTH = 16
"""Idle buffers kept per size and device. Threads share the daemon's resource devices: with
fewer than concurrent acquires need, each burst maps and faults in fresh 1 MiB buffers (a boot
storm of 100 acquires spent a third of its system time so); 16 bounds what a burst leaves."""


def probe_path(path: str) -> tuple[bool, int, int]:
    """(is_block_device, logical sector size, size in bytes) of `path`, without O_DIRECT."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DeviceMissing(f"{path}: no such file or device") from None
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                sector = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
                size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
            finally:
                os.close(fd)
        except OSError as exc:  # no medium (ENXIO), no permission, ...
            raise StorageError(f"{path}: cannot open: {exc.strerror}") from None
        return True, int(sector), int(size)
    if stat.S_ISREG(st.st_mode):
        return False, FILE_SECTOR_SIZE, st.st_size
    raise StorageError(f"{path}: neither a block device nor a regular file")


class DirectDevice:
    """An open O_DIRECT device, safe to share between threads: their waits overlap (see
    `AioContext.wait`), and its record of abandoned writes covers every thread's I/O on it."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self._path = path
        self.is_block, self._sector_size, self._size_b = probe_path(path)
        flags = (os.O_RDONLY if readonly else os.O_RDWR | os.O_SYNC) | os.O_DIRECT
        try:
            self._fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise DirectIOUnsupported(
                    f"{path}: the filesystem rejects O_DIRECT (tmpfs?); use a block device "
                    "or a file on a filesystem that supports direct I/O"
                ) from None
            raise StorageError(f"{path}: cannot open: {exc.strerror}") from None
        self._aio = AioContext()
        self._pool: dict[int, list[AlignedBuffer]] = {}
        self._pool_lock = threading.Lock()
        """Threads may share a device (the daemon's resource I/O does): a buffer is handed to
        one I/O at a time only if taking it from the pool is atomic."""

    @property
    def path(self) -> str:
        return self._path

    @property
    def sector_size(self) -> int:
        return self._sector_size

    @property
    def size_b(self) -> int:
        return self._size_b

    @property
    def abandoned_ios(self) -> int:
        return self._aio.abandoned_count

    def __enter__(self) -> DirectDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset_b: int, length_b: int, timeout_s: float) -> bytes:
        outcome = self._one(ReadOp(offset_b, length_b), timeout_s)
        assert isinstance(outcome, bytes)
        return outcome

    def read_view(self, offset_b: int, length_b: int, timeout_s: float) -> memoryview:
        """Like `read`, but the bytes stay in our buffer and come as a read-only view of it: no
        copy, and the buffer is not reused while the view (or anything made from it) lives."""
        outcome = self._one(ReadOp(offset_b, length_b, view=True), timeout_s)
        assert isinstance(outcome, memoryview)
        return outcome

    def write(self, offset_b: int, data: bytes | memoryview, timeout_s: float) -> None:
        self._one(WriteOp(offset_b, data), timeout_s)

    def _one(self, op: IOOp, timeout_s: float) -> IOOutcome:
        """One I/O's outcome; its error raised."""
        outcome = self.submit([op], timeout_s)[0]
        if isinstance(outcome, StorageError):
            raise outcome
        return outcome

    def submit(self, ops: Sequence[IOOp], timeout_s: float,
               give_up: threading.Event | None = None) -> list[IOOutcome]:
        """Run `ops` concurrently; each outcome is bytes (read), None (write) or its error.
        Once `give_up` is set, those still in flight are abandoned (IOTimeout), as at the
        deadline: a later write over an abandoned one waits for it to complete."""
        deadline = time.monotonic() + timeout_s
        for op in ops:
            self._check_bounds(op)
        blocked = self._wait_for_abandoned_writes(ops, deadline)
        if blocked:
            # The blocked writes are never issued; the others go out together as usual.
            rest = [i for i in range(len(ops)) if i not in blocked]
            issued = self.submit([ops[i] for i in rest], max(0.0, deadline - time.monotonic()),
                                 give_up)
            outcomes_by_index: dict[int, IOOutcome] = dict(zip(rest, issued, strict=True))
            return [outcomes_by_index[i] if i not in blocked else IOTimeout(
                f"{self._path}: an earlier write at {op.offset_b} is still in flight; "
                "not issuing a newer one over it") for i, op in enumerate(ops)]
        buffers = [self._take_buffer(self._length(op)) for op in ops]
        for op, buffer in zip(ops, buffers, strict=True):
            if isinstance(op, WriteOp):
                buffer.map[: len(op.data)] = op.data
        done = [0] * len(ops)
        outcomes: list[IOOutcome | None] = [None] * len(ops)
        pending = list(range(len(ops)))
        while pending:
            completions = self._aio.submit(
                self._fd, [self._continuation(ops[i], buffers[i], done[i]) for i in pending]
            )
            self._aio.wait(completions, deadline, give_up)
            pending = self._settle(ops, buffers, pending, completions, done, outcomes)
        for i, op in enumerate(ops):
            buffer = buffers[i]
            if isinstance(op, ReadOp) and outcomes[i] is None:
                outcomes[i] = buffer.view(op.length_b) if op.view else buffer.map[: op.length_b]
            if not isinstance(outcomes[i], IOTimeout):
                self._give_back(buffer)
        return outcomes

    def close(self) -> None:
        if self._fd >= 0:
            self._aio.close()
            os.close(self._fd)
            self._fd = -1

    # -- internals ---------------------------------------------------------------------------

    def _wait_for_abandoned_writes(self, ops: Sequence[IOOp], deadline: float) -> set[int]:
        """Indices of writes in ops still overlapping an abandoned write at the deadline."""
        blocked: set[int] = set()
        if not self._aio.abandoned_count:
            return blocked
        for index, op in enumerate(ops):
            if not isinstance(op, WriteOp):
                continue
            earlier = self._aio.abandoned_writes(self._fd, op.offset_b, len(op.data))
            if earlier:
                self._aio.wait(earlier, deadline)
                if not all(c.done for c in earlier):
                    blocked.add(index)
        return blocked

    @staticmethod
    def _length(op: IOOp) -> int:
        return op.length_b if isinstance(op, ReadOp) else len(op.data)

    def _check_bounds(self, op: IOOp) -> None:
        length_b = self._length(op)
        if op.offset_b % self._sector_size or length_b % self._sector_size or length_b <= 0:
            raise NotAligned(
                f"{self._path}: I/O at {op.offset_b} of {length_b} bytes is not aligned to the "
                f"{self._sector_size}-byte sector size"
            )
        if op.offset_b < 0 or op.offset_b + length_b > self._size_b:
            raise DeviceTooSmall(
                f"{self._path}: I/O at {op.offset_b}..{op.offset_b + length_b} lies beyond the "
                f"end of the device ({self._size_b} bytes)"
            )

    def _take_buffer(self, size_b: int) -> AlignedBuffer:
        """A pooled buffer of `size_b` that no lent view still shows, else a new one."""
        with self._pool_lock:
            free = self._pool.get(size_b, [])
            for index in range(len(free) - 1, -1, -1):
                if free[index].idle:
                    return free.pop(index)
        return AlignedBuffer(size_b)

    def _give_back(self, buffer: AlignedBuffer) -> None:
        with self._pool_lock:
            free = self._pool.setdefault(buffer.size_b, [])
            if len(free) < POOL_DEPTH:
                free.append(buffer)

    def _continuation(
        self, op: IOOp, buffer: AlignedBuffer, done_b: int
    ) -> tuple[int, int, int, AlignedBuffer]:
        opcode = IOCB_CMD_PREAD if isinstance(op, ReadOp) else IOCB_CMD_PWRITE
        if done_b == 0:
            return opcode, op.offset_b, self._length(op), buffer
        # A short transfer: continue from where it stopped, in a fresh aligned buffer view.
        rest = AlignedBuffer(self._length(op) - done_b)
        if isinstance(op, WriteOp):
            rest.map[: rest.size_b] = op.data[done_b:]
        return opcode, op.offset_b + done_b, rest.size_b, rest

    def _settle(
        self,
        ops: Sequence[IOOp],
        buffers: list[AlignedBuffer],
        pending: list[int],
        completions: list[Completion],
        done: list[int],
        outcomes: list[IOOutcome | None],
    ) -> list[int]:
        """Record finished I/Os; return the indices that need a continuation."""
        again = []
        for index, completion in zip(pending, completions, strict=True):
            op = ops[index]
            if not completion.done:
                outcomes[index] = IOTimeout(
                    f"{self._path}: {'read' if isinstance(op, ReadOp) else 'write'} at "
                    f"{op.offset_b} was abandoned unfinished (its deadline passed, or the "
                    "disks that mattered had answered)"
                )
            elif completion.result < 0:
                outcomes[index] = self._io_error(op, -completion.result)
            elif completion.result == 0:
                outcomes[index] = DeviceTooSmall(f"{self._path}: end of device at {op.offset_b}")
            else:
                if completion.buffer is not buffers[index] and isinstance(op, ReadOp):
                    start = done[index]
                    buffers[index].map[start:start + completion.result] = completion.buffer.map[
                        : completion.result
                    ]
                done[index] += completion.result
                if done[index] < self._length(op):
                    again.append(index)
        return again

    def _io_error(self, op: IOOp, err: int) -> StorageError:
        kind = "read" if isinstance(op, ReadOp) else "write"
        if err == errno.EINVAL:
            return DirectIOUnsupported(
                f"{self._path}: {kind} at {op.offset_b} rejected (EINVAL): the filesystem may "
                "not support O_DIRECT, or the I/O is not aligned to its logical block size"
            )
        return IOFailed(f"{self._path}: {kind} at {op.offset_b} failed: {os.strerror(err)}")
