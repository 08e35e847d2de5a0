"""The DeviceRunner: runs an effect generator against `Device`s and the lease clock (clock.py).

Each Read/Write is bounded by the timeout the effect carries. Sleep waits on `stop` so that a
removal or shutdown interrupts long delays at once (Cancelled is thrown into the algorithm).
A Batch's I/Os on one device go out together; those on several devices go to each device at
once, each through that device's own queue (one thread per device, taking its batches in the
order they came, so that no write overtakes an earlier one on the same device), and a device
that fails, or cannot be opened, fails only its own outcomes. A batch that `need`s only some
outcomes ends once it has them: the devices still busy give up their waits (their I/O is
abandoned, as at a deadline) and are not waited for; what they still do, they do in order.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from leasestore.clock import lease_now_s
from leasestore.effects import Algorithm, Batch, Effect, Now, Random, Read, Sleep, Write
from leasestore.errors import Cancelled, IOTimeout, StorageError
from leasestore.storage.device import Device, IOOutcome, ReadOp, WriteOp

T = TypeVar("T")
_DEVICE_QUEUES: dict[str, ThreadPoolExecutor] = {}
_DEVICE_QUEUES_LOCK = threading.Lock()


def _device_queue(name: str) -> ThreadPoolExecutor:
    """The one thread that issues multi-device batches' I/O on device `name`, in order."""
    with _DEVICE_QUEUES_LOCK:
        queue = _DEVICE_QUEUES.get(name)
        if queue is None:
            queue = _DEVICE_QUEUES[name] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"device-{os.path.basename(name)}")
        return queue


class DeviceRunner:
    """Runs algorithms on real devices. One runner per thread of control."""

    def __init__(self, devices: Mapping[str, Device], stop: threading.Event | None = None) -> None:
        self.devices = devices
        self.stop = stop or threading.Event()

    def run(self, algorithm: Algorithm[T]) -> T:
        """Drive `algorithm` to completion and return its result (its exceptions propagate)."""
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            try:
                if to_throw is not None:
                    effect = algorithm.throw(to_throw)
                else:
                    effect = algorithm.send(to_send)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            to_send, to_throw = None, None
            try:
                to_send = self._perform(effect)
            except (StorageError, Cancelled) as exc:
                to_throw = exc

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Now):
            return lease_now_s()
        if isinstance(effect, Random):
            return random.random()
        if isinstance(effect, Sleep):
            if self.stop.wait(max(0.0, effect.seconds)):
                raise Cancelled("stopped while waiting")
            return None
        if isinstance(effect, Read):
            device = self.devices[effect.device]
            read = device.read_view if effect.view else device.read
            return read(effect.offset_b, effect.length_b, effect.timeout_s)
        if isinstance(effect, Write):
            self.devices[effect.device].write(effect.offset_b, effect.data, effect.timeout_s)
            return None
        if isinstance(effect, Batch):
            return tuple(self._batch(effect))
        raise TypeError(f"unknown effect {effect!r}")

    def _batch(self, batch: Batch) -> list[IOOutcome]:
        outcomes: list[IOOutcome] = [None] * len(batch.effects)
        by_device: dict[str, list[int]] = {}
        for index, effect in enumerate(batch.effects):
            by_device.setdefault(effect.device, []).append(index)
        groups = list(by_device.items())
        if len(groups) <= 1:
            for name, indices in groups:
                found = self._on_device(name, [batch.effects[i] for i in indices])
                for i, outcome in zip(indices, found, strict=True):
                    outcomes[i] = outcome
            return outcomes
        return self._batch_on_queues(batch, groups)

    def _batch_on_queues(self, batch: Batch, groups: list[tuple[str, list[int]]]
                         ) -> list[IOOutcome]:
        """Each device's part on its queue; all awaited, or once the outcomes in hand are
        enough (`Batch.need`), the rest given up (reported IOTimeout, left to finish)."""
        outcomes: list[IOOutcome] = [None] * len(batch.effects)
        give_up = threading.Event()
        running = {_device_queue(name).submit(self._on_device, name,
                                              [batch.effects[i] for i in indices], give_up):
                   indices for name, indices in groups}
        succeeded: list[int] = []
        pending = set(running)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                for i, outcome in zip(running[future], future.result(), strict=True):
                    outcomes[i] = outcome
                    if not isinstance(outcome, StorageError):
                        succeeded.append(i)
            if pending and batch.enough(succeeded):
                give_up.set()
                for future in pending:
                    for i in running[future]:
                        outcomes[i] = IOTimeout(f"{batch.effects[i].device}: abandoned "
                                                "unfinished, the disks that mattered had "
                                                "answered")
                break
        return outcomes

    def _on_device(self, name: str, effects: Sequence[Read | Write],
                   give_up: threading.Event | None = None) -> list[IOOutcome]:
        """The outcomes of `effects`, all on device `name`: its failure is each one's."""
        try:
            device = self.devices[name]
            timeout_s = max(effect.timeout_s for effect in effects)
            return device.submit([self._op(effect) for effect in effects], timeout_s, give_up)
        except StorageError as exc:
            return [exc] * len(effects)

    @staticmethod
    def _op(effect: Read | Write) -> ReadOp | WriteOp:
        if isinstance(effect, Read):
            return ReadOp(effect.offset_b, effect.length_b, effect.view)
        return WriteOp(effect.offset_b, effect.data)
