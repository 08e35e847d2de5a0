"""Threads sharing one AIO context: one thread's wait never holds up another's I/O.

The daemon's connection threads share a device per path (its record of abandoned writes must
stay per path), so they share its AIO context. The kernel is replaced here by a fake whose I/Os
complete only when the test says so: the interleaving is the test's, not the clock's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from leasestore.storage import aio
from leasestore.storage.aio import IOCB_CMD_PREAD, AioContext, AlignedBuffer, Completion

JOIN_S = 10.0


class FakeKernel:
    """io_submit records what was submitted; io_getevents blocks until the test completes an
    I/O (or the caller's timeout passes) and then delivers the completed events."""

    def __init__(self, context: AioContext) -> None:
        self.context = context
        _, self.destroy, self.getevents, self.submit = aio._numbers()
        self.changed = threading.Condition()
        self.ready: list[tuple[int, int]] = []
        self.reaping = threading.Event()

    def syscall(self, number: int, *args: Any) -> int:
        if number == self.submit:
            return int(args[1].value)
        if number == self.getevents:
            events, spec = args[3], args[4]._obj
            with self.changed:
                self.reaping.set()
                self.changed.wait_for(lambda: bool(self.ready), spec.tv_sec + spec.tv_nsec / 1e9)
                got, self.ready = self.ready[:len(events)], self.ready[len(events):]
            for slot, (ident, result) in enumerate(got):
                events[slot].data, events[slot].res = ident, result
            return len(got)
        raise AssertionError(f"unexpected syscall {number}")

    def complete(self, completion: Completion) -> None:
        with self.changed:
            self.ready.append((completion.ident, completion.length_b))
            self.changed.notify_all()


@pytest.fixture
def shared() -> Iterator[tuple[AioContext, FakeKernel]]:
    context = AioContext()
    kernel = FakeKernel(context)
    real = aio._syscall
    aio._syscall = kernel.syscall  # type: ignore[assignment]
    try:
        yield context, kernel
    finally:
        aio._syscall = real
        context.close()


def _read(context: AioContext) -> Completion:
    return context.submit(0, [(IOCB_CMD_PREAD, 0, 512, AlignedBuffer(512))])[0]


def _waiter(context: AioContext, completion: Completion, timeout_s: float) -> threading.Thread:
    thread = threading.Thread(
        target=context.wait, args=([completion], time.monotonic() + timeout_s), daemon=True)
    thread.start()
    return thread


def test_a_waiting_thread_does_not_block_the_others(
    shared: tuple[AioContext, FakeKernel],
) -> None:
    context, kernel = shared
    slow = _read(context)
    reaper = _waiter(context, slow, 60)
    assert kernel.reaping.wait(JOIN_S)  # the first waiter sits in io_getevents

    # Another thread submits and waits meanwhile; its I/O completes first.
    submitted: list[Completion] = []
    submitter = threading.Thread(target=lambda: submitted.append(_read(context)), daemon=True)
    submitter.start()
    submitter.join(JOIN_S)
    assert not submitter.is_alive(), "submit was blocked by another thread's wait"
    fast = submitted[0]
    other = _waiter(context, fast, 60)
    kernel.complete(fast)
    other.join(JOIN_S)
    assert not other.is_alive() and fast.done and fast.result == 512
    assert reaper.is_alive() and not slow.done  # still waiting for its own I/O

    # A third waiter whose I/O never completes gives up at its own deadline.
    lost = _read(context)
    short = _waiter(context, lost, 0.2)
    short.join(JOIN_S)
    assert not short.is_alive() and lost.abandoned and not lost.done

    kernel.complete(slow)
    reaper.join(JOIN_S)
    assert not reaper.is_alive() and slow.done and slow.result == 512
    kernel.complete(lost)  # reaped by a later wait: its buffer is released then
    context.wait([_completed(context, kernel)], time.monotonic() + JOIN_S)
    assert not context.abandoned_count


def _completed(context: AioContext, kernel: FakeKernel) -> Completion:
    completion = _read(context)
    kernel.complete(completion)
    return completion

