"""Linux native AIO (io_setup/io_submit/io_getevents) through ctypes.

Why: an O_DIRECT I/O submitted this way can be waited for with a timeout and then abandoned while
the kernel still owns its buffer, which is how sanlock bounds every I/O by io_timeout. A blocking
pread in a thread cannot be abandoned as cheaply.

Invariant: a buffer handed to the kernel is referenced by `_inflight` until its completion event is
reaped, so it is never freed or reused while the kernel may still write into it.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import sys
import threading
import time

_SYSCALLS = {
    # machine: (io_setup, io_destroy, io_getevents, io_submit)
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}

IOCB_CMD_PREAD = 0
GIVE_UP_POLL_S = 0.005
"""How often a wait that may be given up (`AioContext.wait`) looks whether it has been."""
IOCB_CMD_PWRITE = 1


class _Iocb(ctypes.Structure):
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _numbers() -> tuple[int, int, int, int]:
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise OSError(errno.ENOSYS, f"native AIO syscall numbers unknown for {machine}")
    return _SYSCALLS[machine]


class AlignedBuffer:
    """A page-aligned anonymous mapping, suitable for O_DIRECT.

    Invariant: while a memoryview handed out by `view` (or any slice or array made from it) is
    alive, the mapping holds one more reference than when idle, so `idle` is False and the
    owner must not reuse the buffer: a lent view never sees its bytes change.
    """

    def __init__(self, size_b: int) -> None:
        self.size_b = size_b
        self.map = mmap.mmap(-1, max(size_b, mmap.PAGESIZE))
        self._anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(self._anchor)
        self._idle_refs = self._refs()

    def _refs(self) -> int:
        return sys.getrefcount(self.map)

    @property
    def idle(self) -> bool:
        """No view of ours is alive: the kernel may be handed the buffer again."""
        return self._refs() <= self._idle_refs

    def view(self, length_b: int) -> memoryview:
        """A read-only view of the first `length_b` bytes, without copying them."""
        return memoryview(self.map)[:length_b].toreadonly()


class Completion:
    """One submitted I/O. `result` is bytes transferred or -errno once `done`."""

    __slots__ = ("abandoned", "buffer", "done", "fd", "ident", "length_b", "offset_b", "opcode",
                 "result")

    def __init__(self, ident: int, buffer: AlignedBuffer, opcode: int, fd: int, offset_b: int,
                 length_b: int) -> None:
        self.ident = ident
        self.buffer = buffer
        self.opcode = opcode
        self.fd = fd
        self.offset_b = offset_b
        self.length_b = length_b
        self.done = False
        self.result = 0
        self.abandoned = False

    def overlaps_write(self, fd: int, offset_b: int, length_b: int) -> bool:
        """Is this a write on `fd` touching [offset_b, offset_b + length_b)?"""
        return (self.opcode == IOCB_CMD_PWRITE and self.fd == fd
                and self.offset_b < offset_b + length_b
                and offset_b < self.offset_b + self.length_b)


class AioContext:
    """One kernel AIO context, shared safely between threads (an internal lock guards its state;
    waiting does not hold it: see `wait`).

    The iocb array, its pointer array and the event array are allocated once and reused: the
    kernel copies an iocb when it is submitted, so the memory is free again once io_submit
    returns. Keeping the per-I/O work small matters: it is paid on every renewal.
    """

    def __init__(self, max_events: int = 64) -> None:
        self._setup, self._destroy, self._getevents, self._submit = _numbers()
        self._ctx = ctypes.c_ulong(0)
        self._max_events = max_events
        if _syscall(self._setup, ctypes.c_uint(max_events), ctypes.byref(self._ctx)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_setup: {os.strerror(err)}")
        self._lock = threading.Lock()
        self._reaped = threading.Condition(self._lock)
        """Notified when the reaper has recorded the events it got (or gave up reaping)."""
        self._reaping = False
        self._events = (_IoEvent * max_events)()
        self._timespec = _Timespec()
        self._inflight: dict[int, Completion] = {}
        self._next_ident = 1
        self._closed = False

    def abandoned_writes(self, fd: int, offset_b: int, length_b: int) -> list[Completion]:
        """Abandoned writes on fd overlapping [offset_b, offset_b + length_b), not yet reaped."""
        with self._lock:
            return [
                c for c in self._inflight.values()
                if c.abandoned and c.overlaps_write(fd, offset_b, length_b)
            ]

    @property
    def abandoned_count(self) -> int:
        """I/Os we stopped waiting for whose completion has not been reaped yet."""
        return sum(1 for c in self._inflight.values() if c.abandoned)

    def submit(
        self, fd: int, ops: list[tuple[int, int, int, AlignedBuffer]]
    ) -> list[Completion]:
        """Submit (opcode, offset_b, length_b, buffer) tuples; returns their completions.

        At most max_events go to the kernel in one io_submit; more are submitted in turn. The
        io_submit call itself runs outside the lock (on some devices, such as loop devices, it
        does much of the I/O work itself): each call has its own iocbs, and its completions
        are registered as in flight first, so the reaper never meets an event it cannot place.
        """
        completions = []
        for first in range(0, len(ops), self._max_events):
            completions += self._submit_chunk(fd, ops[first:first + self._max_events])
        return completions

    def _submit_chunk(
        self, fd: int, ops: list[tuple[int, int, int, AlignedBuffer]]
    ) -> list[Completion]:
        count = len(ops)
        iocbs = (_Iocb * count)()
        pointers = (ctypes.POINTER(_Iocb) * count)(*(ctypes.pointer(i) for i in iocbs))
        completions = []
        with self._lock:
            for iocb, (opcode, offset_b, length_b, buffer) in zip(iocbs, ops, strict=True):
                ident = self._next_ident
                self._next_ident += 1
                iocb.aio_data = ident
                iocb.aio_lio_opcode = opcode
                iocb.aio_fildes = fd
                iocb.aio_buf = buffer.address
                iocb.aio_nbytes = length_b
                iocb.aio_offset = offset_b
                completion = Completion(ident, buffer, opcode, fd, offset_b, length_b)
                completions.append(completion)
                self._inflight[ident] = completion
        submitted = 0
        while submitted < count:
            rc = _syscall(
                self._submit,
                self._ctx,
                ctypes.c_long(count - submitted),
                ctypes.byref(pointers, submitted * ctypes.sizeof(ctypes.c_void_p)),
            )
            if rc < 0:
                err = ctypes.get_errno()
                if err in (errno.EINTR, errno.EAGAIN):
                    continue
                with self._lock:  # never reached the kernel: nothing of it is in flight
                    for c in completions[submitted:]:
                        self._inflight.pop(c.ident, None)
                        c.done, c.result = True, -err
                break
            submitted += rc
        return completions

    def wait(self, completions: list[Completion], deadline: float,
             give_up: threading.Event | None = None) -> None:
        """Reap events until every completion is done, `deadline` (monotonic) passes, or
        `give_up` is set (looked at every GIVE_UP_POLL_S).

        Completions still pending then are marked abandoned; their buffers stay pinned.
        Threads sharing the context wait at once: one at a time calls io_getevents, outside the
        lock so that others can still submit, and records every event it gets for whichever
        thread owns it; the others sleep until it has, or until their own deadline.
        """
        with self._lock:
            while not all(c.done for c in completions):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (give_up is not None and give_up.is_set()):
                    for c in completions:
                        if not c.done:
                            c.abandoned = True
                    return
                if give_up is not None:
                    remaining = min(remaining, GIVE_UP_POLL_S)
                if self._reaping:
                    self._reaped.wait(remaining)
                    continue
                self._reaping = True
                self._lock.release()
                try:
                    got = self._get_events(remaining)
                finally:
                    self._lock.acquire()
                    self._reaping = False
                    self._reaped.notify_all()  # they run once we let go of the lock
                for ident, result in got:
                    done = self._inflight.pop(ident, None)
                    if done is not None:
                        done.done, done.result = True, result

    def _get_events(self, timeout_s: float) -> list[tuple[int, int]]:
        """(ident, result) of the events io_getevents returns within `timeout_s`. Called by one
        thread at a time (the reaper), without the lock: the event array is the reaper's."""
        spec, events = self._timespec, self._events
        spec.tv_sec = int(timeout_s)
        spec.tv_nsec = int((timeout_s % 1) * 1e9)
        rc = _syscall(
            self._getevents,
            self._ctx,
            ctypes.c_long(1),
            ctypes.c_long(self._max_events),
            events,
            ctypes.byref(spec),
        )
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                return []
            raise OSError(err, f"io_getevents: {os.strerror(err)}")
        return [(event.data, event.res) for event in events[:rc]]

    def close(self) -> None:
        """Destroy the context. With abandoned I/O in flight the kernel blocks io_destroy until
        they finish, so then the destruction happens on a background thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._inflight.values())
        ctx, destroy = self._ctx, self._destroy

        def _destroy() -> None:
            _syscall(destroy, ctx)
            pending.clear()  # buffers may be freed only after the kernel is done with them

        if pending:
            threading.Thread(target=_destroy, name="aio-destroy", daemon=True).start()
        else:
            _destroy()
