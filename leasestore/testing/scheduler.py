"""The simulator's scheduler: virtual time, seeded choices, injected faults.

Each `SimTask` is an effect generator (a host's algorithm) with its own monotonic clock: an
offset from virtual time, as unsynchronised hosts have, running at its own rate (drift). The
world repeatedly takes the earliest event: resuming a task with an effect's result, or landing
a write on a disk. Everything random comes from one `random.Random(seed)`, so a seed replays a
run exactly.

Faults, drawn per I/O: an error; a slow I/O that outlives its timeout (a slow write still lands,
after the task was told it timed out); a torn multi-sector write (sectors land separately); a
torn multi-sector read (no snapshot: some sectors as at its start, the rest as at its end).
Per host: a storage outage (every I/O fails, or hangs until its timeout and never lands).
Per task: crash (the generator is dropped, its in-flight writes still land) and pause (the task
stops running; its clock keeps going). Sleep is cancellable like the DeviceRunner's.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from leasestore.effects import Algorithm, Batch, Effect, Now, Random, Read, Sleep, Write
from leasestore.errors import Cancelled, IOFailed, IOTimeout, LeasestoreError, StorageError
from leasestore.testing.simdisk import SimDisk


@dataclass(frozen=True)
class Faults:
    """Per-I/O fault probabilities and latency bounds (seconds)."""

    io_error: float = 0.0
    slow_io: float = 0.0
    torn_write: float = 0.0
    torn_read: float = 0.0
    """A multi-sector read that is no snapshot: each sector as it was when the read began or
    as it is when it ends (writes landing meanwhile show in some sectors, not others)."""
    min_latency_s: float = 0.0002
    max_latency_s: float = 0.005
    slow_factor: tuple[float, float] = (1.05, 4.0)

    @staticmethod
    def none() -> Faults:
        return Faults()


@dataclass
class SimTask:
    name: str
    algorithm: Algorithm[Any]
    clock_offset_s: float
    alive: bool = True
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    paused_until: float = 0.0
    cancel_requested: bool = False
    sleeping_token: int | None = None
    token: int = 0
    host: str = ""
    """The machine the task runs on: its timed-out writes still order its later ones."""
    clock_rate: float = 1.0
    """How fast its clock runs against virtual time (1 + drift): 1.001 gains 1 ms a second."""


_Event = tuple[float, int, Callable[[], None]]
"""(time, sequence number, action): ordered by time, then by the order they were scheduled."""


class SimWorld:
    def __init__(self, seed: int, disks: dict[str, SimDisk], faults: Faults | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.disks = disks
        self.faults = faults or Faults()
        self.now = 0.0
        self.steps = 0
        self.crashes: list[str] = []
        """Tasks that ended with an exception no algorithm raises on purpose (not a
        LeasestoreError): a programming error, which a checker must report."""
        self.fault_counts: dict[str, int] = {}
        self._events: list[_Event] = []
        self._seq = 0
        self.tasks: list[SimTask] = []
        self._late_writes: list[tuple[str, str, int, int, float]] = []
        """(host, disk, start, end, lands_at) of writes reported timed out but not landed."""
        self.fail_when: Callable[[Read | Write], bool] | None = None
        """A targeted fault: I/Os it picks fail with an I/O error (tests aim it)."""
        self.outages: dict[str, tuple[float, bool]] = {}
        """host -> (until, hangs): its path to storage is down until then; each I/O either
        fails at once or, if `hangs`, times out and never lands (a lost SAN path)."""
        self.disk_outages: dict[str, tuple[float, bool]] = {}
        """disk -> (until, hangs): the disk itself is down for every host until then (as
        above); it comes back as it was, behind the writes it missed."""
        self.path_outages: dict[tuple[str, str], tuple[float, bool]] = {}
        """(host, disk) -> (until, hangs): that host's path to that disk alone is down."""

    # -- scheduling ----------------------------------------------------------------------------

    def at(self, time: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (max(time, self.now), self._seq, action))

    def count(self, fault: str) -> None:
        self.fault_counts[fault] = self.fault_counts.get(fault, 0) + 1

    def clock(self, task: SimTask) -> float:
        return self.now * task.clock_rate + task.clock_offset_s

    def spawn(self, name: str, algorithm: Algorithm[Any], clock_offset_s: float,
              host: str = "", clock_rate: float = 1.0) -> SimTask:
        task = SimTask(name, algorithm, clock_offset_s, host=host or name,
                       clock_rate=clock_rate)
        self.tasks.append(task)
        self.at(self.now, lambda: self._step(task, task.token, None, None))
        return task

    def crash(self, task: SimTask) -> None:
        """The task's host dies: no further steps; writes already issued may still land."""
        if task.alive and not task.done:
            task.alive = False
            task.algorithm.close()
            self.count("crash")

    def pause(self, task: SimTask, seconds: float) -> None:
        task.paused_until = max(task.paused_until, self.now + seconds)
        self.count("pause")

    def cancel(self, task: SimTask) -> None:
        """Like the DeviceRunner's stop event: the current or next Sleep raises Cancelled."""
        task.cancel_requested = True
        if task.sleeping_token is not None:
            token = task.sleeping_token
            self.at(self.now, lambda: self._step(task, token, None, Cancelled("stopped")))

    def run_until(self, end: float, after_step: Callable[[], None] | None = None) -> None:
        while self._events and self._events[0][0] <= end:
            self.now, _, action = heapq.heappop(self._events)
            action()
            self.steps += 1
            if after_step is not None:
                after_step()
        self.now = max(self.now, end)

    # -- running tasks -------------------------------------------------------------------------

    def _step(self, task: SimTask, token: int, value: Any, error: BaseException | None) -> None:
        if not task.alive or task.done or token != task.token:
            return
        if self.now < task.paused_until:
            self.at(task.paused_until, lambda: self._step(task, token, value, error))
            return
        task.token += 1
        task.sleeping_token = None
        while True:
            try:
                effect = (task.algorithm.throw(error) if error is not None
                          else task.algorithm.send(value))
            except StopIteration as stop:
                task.done, task.result = True, stop.value
                return
            except Exception as exc:  # the algorithm failed: record it as its outcome
                task.done, task.error = True, exc
                if not isinstance(exc, LeasestoreError):
                    self.crashes.append(f"t={self.now:.3f}s {task.name}: "
                                        f"{type(exc).__name__}: {exc}")
                return
            value, error = None, None
            if isinstance(effect, Now):
                value = self.clock(task)
                continue
            if isinstance(effect, Random):
                value = self.rng.random()
                continue
            if isinstance(effect, Sleep) and task.cancel_requested:
                error = Cancelled("stopped")
                continue
            self._perform(task, task.token, effect)
            return

    def _resume(self, task: SimTask, token: int, when: float, value: Any = None,
                error: BaseException | None = None) -> None:
        self.at(when, lambda: self._step(task, token, value, error))

    def _perform(self, task: SimTask, token: int, effect: Effect) -> None:
        if isinstance(effect, Sleep):
            task.sleeping_token = token
            self._resume(task, token, self.now + max(0.0, effect.seconds) / task.clock_rate)
        elif isinstance(effect, Batch):
            self._batch(task, token, effect)
        elif isinstance(effect, Read | Write):
            done_at, outcome, _ = self._io(effect, task)

            def finish() -> None:
                result = outcome()
                if isinstance(result, StorageError):
                    self._step(task, token, None, result)
                else:
                    self._step(task, token, result, None)

            self.at(done_at, finish)
        else:
            raise TypeError(f"unknown effect {effect!r}")

    def _batch(self, task: SimTask, token: int, batch: Batch) -> None:
        """The batch's I/Os at once; it ends when all have, or (with `need`) once enough
        succeeded: the others are then abandoned, as a real runner abandons them (IOTimeout),
        and a write abandoned still lands, with later writes over it waiting for it."""
        planned = [self._io(effect, task) for effect in batch.effects]
        results: list[Any] = [None] * len(planned)
        finished: set[int] = set()
        succeeded: list[int] = []
        ended = [False]

        def collect(index: int, outcome: Callable[[], Any]) -> None:
            if ended[0]:
                return
            results[index] = outcome()
            finished.add(index)
            if not isinstance(results[index], StorageError):
                succeeded.append(index)
            if len(finished) == len(planned) or batch.enough(succeeded):
                ended[0] = True
                for i in set(range(len(planned))) - finished:
                    self._abandon(task, batch.effects[i], planned[i][2])
                    results[i] = IOTimeout("simulated: abandoned once the disks that mattered "
                                           "had answered")
                self._step(task, token, tuple(results), None)

        if not planned:
            self._resume(task, token, self.now, ())
        for index, (done_at, outcome, _) in enumerate(planned):
            self.at(done_at, lambda i=index, o=outcome: collect(i, o))  # type: ignore[misc]

    def _abandon(self, task: SimTask, effect: Read | Write, lands_at: float | None) -> None:
        """An I/O nobody waits for any more: a write still to land is one later writes wait
        for."""
        if isinstance(effect, Write) and lands_at is not None and lands_at > self.now:
            disk = self.disks[effect.device].name
            self._late_writes.append((task.host, disk, effect.offset_b,
                                      effect.offset_b + len(effect.data), lands_at))

    def _latency(self) -> float:
        return self.rng.uniform(self.faults.min_latency_s, self.faults.max_latency_s)

    def backlog_clears_at(self) -> float:
        """When the last write that timed out (and is still queued on its device) lands."""
        return max((w[4] for w in self._late_writes), default=self.now)

    def _earlier_write_lands_at(self, task: SimTask, disk: str, write: Write) -> float:
        """When the last of this host's timed-out writes overlapping `write` lands (or 0)."""
        self._late_writes = [w for w in self._late_writes if w[4] > self.now]
        end = write.offset_b + len(write.data)
        return max((w[4] for w in self._late_writes
                    if w[0] == task.host and w[1] == disk and w[2] < end and write.offset_b < w[3]),
                   default=0.0)

    def _io(self, effect: Read | Write, task: SimTask
            ) -> tuple[float, Callable[[], Any], float | None]:
        """When the task hears back, a thunk giving what it hears (evaluated then), and when a
        write lands (None: a read, or a write that never does)."""
        disk = self.disks[effect.device]
        start = self.now
        if isinstance(effect, Write):
            earlier = self._earlier_write_lands_at(task, disk.name, effect)
            if earlier > self.now + effect.timeout_s:
                blocked: StorageError = IOTimeout("an earlier write is still in flight")
                return self.now + effect.timeout_s, lambda: blocked, None
            start = max(self.now, earlier)
        outage_until, hangs = max(self.outages.get(task.host, (0.0, False)),
                                  self.disk_outages.get(disk.name, (0.0, False)),
                                  self.path_outages.get((task.host, disk.name), (0.0, False)))
        if self.now < outage_until:
            self.count("outage_io")
            lost: StorageError = (IOTimeout(f"simulated hang on {disk.name}") if hangs
                                  else IOFailed(f"simulated path failure on {disk.name}"))
            return (self.now + effect.timeout_s if hangs else self.now + self._latency()), \
                lambda: lost, None
        targeted = self.fail_when is not None and self.fail_when(effect)
        roll = self.rng.random()  # drawn either way, so that a seed replays alike
        if targeted or roll < self.faults.io_error:
            self.count("io_error")
            failure: StorageError = IOFailed(
                f"simulated I/O error on {disk.name} at {effect.offset_b}"
            )
            return self.now + self._latency(), lambda: failure, None
        slow = roll < self.faults.io_error + self.faults.slow_io
        latency = (effect.timeout_s * self.rng.uniform(*self.faults.slow_factor) if slow
                   else min(self._latency(), effect.timeout_s * 0.5))
        if slow:
            self.count("slow_io")
        lands_at: float | None = None
        if isinstance(effect, Write):
            lands_at = self._schedule_landing(disk, effect, start, latency)
            if slow:
                self._late_writes.append((task.host, disk.name, effect.offset_b,
                                          effect.offset_b + len(effect.data), lands_at))
        if slow:
            timeout: StorageError = IOTimeout(
                f"simulated timeout on {disk.name} at {effect.offset_b}"
            )
            return self.now + effect.timeout_s, lambda: timeout, None  # already a late write
        if isinstance(effect, Read):
            offset, length = effect.offset_b, effect.length_b
            if length > disk.sector_size and self.rng.random() < self.faults.torn_read:
                return start + latency, self._torn_read(disk, offset, length), None
            return start + latency, lambda: disk.read(offset, length), None
        return start + latency, lambda: None, lands_at

    def _torn_read(self, disk: SimDisk, offset: int, length: int) -> Callable[[], bytes]:
        """A read whose sectors are taken some at its start, the rest at its end."""
        self.count("torn_read")
        ss = disk.sector_size
        early = disk.read(offset, length)
        from_early = [self.rng.random() < 0.5 for _ in range(length // ss)]

        def mixed() -> bytes:
            late = disk.read(offset, length)
            return b"".join((early if pick else late)[i * ss:(i + 1) * ss]
                            for i, pick in enumerate(from_early))

        return mixed

    def _schedule_landing(self, disk: SimDisk, write: Write, start: float,
                          latency: float) -> float:
        """Schedule the write's sectors to land within [start, start + latency]; returns when
        the last one lands."""
        ss = disk.sector_size
        sectors = len(write.data) // ss
        if sectors > 1 and self.rng.random() < self.faults.torn_write:
            self.count("torn_write")
            last = start
            for i in range(sectors):
                chunk = write.data[i * ss:(i + 1) * ss]
                when = start + self.rng.uniform(0, latency)
                last = max(last, when)
                self.at(when, lambda o=write.offset_b + i * ss, c=chunk: disk.land(o, c))  # type: ignore[misc]
            return last
        when = start + self.rng.uniform(0, latency)
        self.at(when, lambda: disk.land(write.offset_b, write.data))
        return when
