"""Races inside one daemon, made to happen: a test holds back chosen I/Os of an in-process daemon
(on a lease file) until it lets them go, and checks what the daemon decides meanwhile.

- A release whose writes are in flight keeps the lease busy here: no local acquire may start.
- rem_lockspace and shutdown racing an acquire: the acquire ends first, its holder is killed and
  its lease released, and only then is the host_id given up.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from leasestore import client
from leasestore.daemon.config import DaemonConfig
from leasestore.daemon.server import Daemon
from leasestore.direct import format_lockspace, format_resource, read_paxos_leader
from leasestore.errors import LeaseAlreadyHeld
from leasestore.lockspace import LockspaceState
from leasestore.ondisk.leader import LeaderMagic, decode_leader
from leasestore.storage.device import IOOp, IOOutcome, WriteOp
from leasestore.storage.odirect import DirectDevice
from leasestore.testing.procs import make_file, poll, run_dir

LS = "race-ls"
RES_AT = 1 << 20
MiB = 1 << 20


@dataclass
class Hold:
    """One I/O submission to hold back: the first that `pick` chooses."""

    pick: Callable[[Sequence[IOOp]], bool]
    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)


class Holds:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Hold] = []

    def add(self, pick: Callable[[Sequence[IOOp]], bool]) -> Hold:
        hold = Hold(pick)
        with self._lock:
            self._waiting.append(hold)
        return hold

    def passing(self, ops: Sequence[IOOp]) -> None:
        with self._lock:
            hold = next((h for h in self._waiting if h.pick(ops)), None)
            if hold is not None:
                self._waiting.remove(hold)
        if hold is not None:
            hold.reached.set()
            assert hold.opened.wait(60), "a held I/O was never let go"

    def open_all(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for hold in waiting:
            hold.opened.set()


def held_device(holds: Holds) -> Callable[[str], DirectDevice]:
    class HeldDevice(DirectDevice):
        def submit(self, ops: Sequence[IOOp], timeout_s: float,
                   give_up: threading.Event | None = None) -> list[IOOutcome]:
            holds.passing(ops)
            return super().submit(ops, timeout_s, give_up)

    return HeldDevice


def writes_at(offset_b: int, count: int = 1) -> Callable[[Sequence[IOOp]], bool]:
    return lambda ops: (len(ops) == count and isinstance(ops[-1], WriteOp)
                        and ops[-1].offset_b == offset_b)


def host_id_release(ops: Sequence[IOOp]) -> bool:
    """Our delta sector written with timestamp 0: the host_id given up."""
    if len(ops) != 1 or not isinstance(ops[0], WriteOp) or ops[0].offset_b != 0:
        return False
    return decode_leader(ops[0].data, (LeaderMagic.DELTA,)).timestamp == 0


@dataclass
class Running:
    daemon: Daemon
    thread: threading.Thread
    holds: Holds
    path: str
    run_dir: str

    def holder(self) -> subprocess.Popen[bytes]:
        """A process that registers, acquires the lease, and then sleeps holding it."""
        return subprocess.Popen(
            [sys.executable, "-m", "leasestore.cli.main", "client", "--run-dir", self.run_dir,
             "command", "-r", f"{LS}:vm:{self.path}:{RES_AT}", "-c", "sleep", "600"])

    def stop(self) -> None:
        self.holds.open_all()
        self.daemon.shutdown()
        self.thread.join(60)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    path = make_file(tmp_path / "lease.img", 4 * MiB)
    format_lockspace(path, LS, 0, io_timeout_s=1)
    format_resource(path, LS, "vm", RES_AT)
    holds = Holds()
    config = DaemonConfig(run_dir=str(tmp_path / "run"), host_name="race-host", io_timeout=1,
                          watchdog="none", watchdog_fire_timeout=5)
    daemon = Daemon(config, open_device=held_device(holds))
    daemon.open()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    state = Running(daemon, thread, holds, path, config.run_dir)
    try:
        with run_dir(config.run_dir):
            client.add_lockspace(LS, 1, path, 0)
        yield state
    finally:
        state.stop()


def _delta_timestamp(path: str) -> int:
    with DirectDevice(path) as device:
        return decode_leader(device.read(0, 512, 5), (LeaderMagic.DELTA,)).timestamp


def test_a_lease_whose_release_is_in_flight_cannot_be_acquired_here(running: Running) -> None:
    lockspace = running.daemon.lockspaces[LS]
    resources = running.daemon.resources
    key = (LS, "vm", running.path, RES_AT)
    first = resources.acquire(lockspace, key, pid=101)
    assert first.lease.lver == 1
    release_writes = running.holds.add(writes_at(RES_AT, count=2))  # RELEASED dblock + leader
    releasing = threading.Thread(target=resources.release, args=(lockspace, key, 101))
    releasing.start()
    assert release_writes.reached.wait(10)
    try:
        with pytest.raises(LeaseAlreadyHeld, match="being acquired or released"):
            resources.acquire(lockspace, key, pid=202)
    finally:
        release_writes.opened.set()
        releasing.join(10)
    leader = read_paxos_leader(running.path, RES_AT)
    assert (leader.lver, leader.timestamp) == (1, 0)
    again = resources.acquire(lockspace, key, pid=202)  # once the release has ended, it may
    assert again.lease.lver == 2
    resources.release(lockspace, key, 202)


def _race_an_acquire(running: Running, leave: Callable[[], None]) -> subprocess.Popen[bytes]:
    """Hold a holder's acquire at its leader commit, then `leave` (rem_lockspace or shutdown)
    in another thread. The acquire is let go once the host_id release is reached, or after a
    bounded wait if the daemon (rightly) waits for the acquire before releasing anything."""
    commit = running.holds.add(writes_at(RES_AT))
    host_id_given_up = running.holds.add(host_id_release)
    holder = running.holder()
    try:
        assert commit.reached.wait(30), "the holder's acquire never reached its commit"
        leaving = threading.Thread(target=leave, daemon=True)
        leaving.start()
        host_id_given_up.reached.wait(3)
        commit.opened.set()
        host_id_given_up.opened.set()
        leaving.join(60)
        assert not leaving.is_alive()
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    return holder


def test_rem_lockspace_racing_an_acquire_kills_the_holder_before_the_host_id_goes(
        running: Running) -> None:
    def rem() -> None:
        with run_dir(running.run_dir), contextlib.suppress(Exception):
            client.rem_lockspace(LS, 1, running.path, 0)

    holder = _race_an_acquire(running, rem)
    assert holder.returncode == -9, "the holder outlived the lockspace it held a lease in"
    assert read_paxos_leader(running.path, RES_AT).timestamp == 0
    assert _delta_timestamp(running.path) == 0
    assert LS not in running.daemon.lockspaces


def test_shutdown_racing_an_acquire_kills_the_holder_before_the_host_id_goes(
        running: Running) -> None:
    lockspace = running.daemon.lockspaces[LS]
    def shutdown() -> None:
        running.daemon.shutdown()
        running.thread.join(60)

    holder = _race_an_acquire(running, shutdown)
    assert holder.returncode == -9, "the holder outlived the daemon's host lease"
    assert read_paxos_leader(running.path, RES_AT).timestamp == 0
    poll(lambda: lockspace.state == LockspaceState.RELEASED, 10, what="host_id released")
    assert _delta_timestamp(running.path) == 0
