"""Acquire + release of a free lease on three disks beside the same on one disk (the
baseline), on the same loop devices through one leasestore daemon, interleaved in batches;
then with the third disk slowed for the daemon (a blkio cgroup limits its I/O on that disk
alone), where the three-disk lease is compared with the healthy three-disk figure and the slow
disk's own one-disk lease shows how slow it is.

Beside them, in the same rounds, the physical floor of an uncontended acquire on one disk and
on three: its six I/Os (three reads of the 1 MiB area, each followed by a one-sector write)
issued raw from Python with O_DIRECT|O_SYNC, the three disks' I/O of each step at once (one
thread per disk). The loop devices' files share one filesystem, so three disks move three
times the bytes through one device: the floor says what that costs by itself.
Results: bench/multidisk_results.json.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from leasestore import client
from leasestore.direct import format_lockspace, format_resource
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file
from leasestore.testing.sidebyside import ratio, summary
from leasestore.units import MiB

from .conftest import MULTIDISK_REPORTS

LS = "md-bench"
ROUNDS = 8
BATCH = 15
SLOW_IOPS = 100
"""The slowed disk's I/O rate for the daemon (each lease phase there waits its turn)."""
BLKIO = Path("/sys/fs/cgroup/blkio")
FLOOR_AT = 3 * MiB
"""A free area of each disk (the leases are at 1 and 2 MiB): the floor's I/Os go there."""


class RawPattern:
    """The floor: on each disk at once, read the 1 MiB area at `at`, then write one sector of
    it back; three times."""

    def __init__(self, devices: list[str], at: int) -> None:
        self._fds = [os.open(d, os.O_RDWR | os.O_DIRECT | os.O_SYNC) for d in devices]
        self._areas = [mmap.mmap(-1, MiB) for _ in devices]
        for area in self._areas:
            area.write(bytes(MiB))  # fault every page in before timing
        self._sectors = [mmap.mmap(-1, mmap.PAGESIZE) for _ in devices]
        self._at = at
        self._pool = ThreadPoolExecutor(max_workers=len(devices))

    def _step(self, index: int, write: bool) -> None:
        if write:
            self._sectors[index][:512] = self._areas[index][512:1024]
            os.pwritev(self._fds[index], [memoryview(self._sectors[index])[:512]],
                       self._at + 512)
        else:
            os.preadv(self._fds[index], [self._areas[index]], self._at)

    def time_once(self) -> float:
        start = time.perf_counter()
        for _ in range(3):
            for write in (False, True):
                if len(self._fds) == 1:
                    self._step(0, write)
                else:
                    list(self._pool.map(lambda i, w=write: self._step(i, w),
                                        range(len(self._fds))))
        return time.perf_counter() - start

    def close(self) -> None:
        self._pool.shutdown()
        for fd in self._fds:
            os.close(fd)


@dataclass
class Bench:
    daemon: DaemonProc
    disks: list[str]
    fd: int
    floors: dict[str, RawPattern] = field(default_factory=dict)

    def leases(self) -> dict[str, list[tuple[str, int]]]:
        a, b, c = self.disks
        return {"one disk": [(a, MiB)], "three disks": [(a, 2 * MiB), (b, 2 * MiB), (c, 2 * MiB)],
                "slowed disk alone": [(c, MiB)]}

    def time_batch(self, name: str, disks: list[tuple[str, int]]
                   ) -> tuple[list[float], list[float]]:
        acquires, releases = [], []
        for _ in range(BATCH):
            start = time.perf_counter()
            self.daemon.call(client.acquire, LS, name, disks, slkfd=self.fd)
            middle = time.perf_counter()
            self.daemon.call(client.release, LS, name, disks, slkfd=self.fd)
            acquires.append(middle - start)
            releases.append(time.perf_counter() - middle)
        return acquires, releases


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    if os.geteuid() != 0 or shutil.which("losetup") is None or not BLKIO.is_dir():
        pytest.skip("needs root, losetup and a blkio cgroup hierarchy")
    base = tmp_path_factory.mktemp("mdbench")
    loops = LoopDevices()
    daemon: DaemonProc | None = None
    state: Bench | None = None
    try:
        lockspace = loops.attach(make_file(base / "ls.img", 2 * MiB, allocate=True))
        disks = [loops.attach(make_file(base / f"d{c}.img", 4 * MiB, allocate=True))
                 for c in "abc"]
        format_lockspace(lockspace, LS, 0, io_timeout_s=1)
        state = Bench(DaemonProc(base, "md-bench", 1, 5), disks, -1)
        daemon = state.daemon
        for name, where in state.leases().items():
            format_resource(where[0][0], LS, name.replace(" ", "-"), where[0][1],
                            extra_disks=where[1:])
        daemon.call(client.add_lockspace, LS, 1, lockspace, 0)
        state.fd = daemon.call(client.register)
        state.floors = {"one disk": RawPattern(disks[:1], FLOOR_AT),
                        "three disks": RawPattern(disks, FLOOR_AT)}
        yield state
    finally:
        if daemon is not None:
            daemon.stop()
        if state is not None:
            for floor in state.floors.values():
                floor.close()
        loops.detach_all()


@contextlib.contextmanager
def _slowed(daemon_pid: int, device: str) -> Iterator[None]:
    """The daemon's I/O on `device` limited to SLOW_IOPS (reads and writes each)."""
    group = BLKIO / "leasestore-bench-slow"
    group.mkdir(exist_ok=True)
    major_minor = f"{os.major(os.stat(device).st_rdev)}:{os.minor(os.stat(device).st_rdev)}"
    for limit in ("read_iops_device", "write_iops_device"):
        (group / f"blkio.throttle.{limit}").write_text(f"{major_minor} {SLOW_IOPS}\n")
    (group / "cgroup.procs").write_text(f"{daemon_pid}\n")
    try:
        yield
    finally:
        (BLKIO / "cgroup.procs").write_text(f"{daemon_pid}\n")
        group.rmdir()


def _measure(state: Bench, names: list[str], floors: bool = False
             ) -> dict[str, dict[str, list[float]]]:
    leases = state.leases()
    samples: dict[str, dict[str, list[float]]] = {
        name: {"acquire": [], "release": [], "floor": []} for name in names}
    for name in names:  # warm-up
        state.time_batch(name.replace(" ", "-"), leases[name])
    for _ in range(ROUNDS):
        for name in names:
            acquires, releases = state.time_batch(name.replace(" ", "-"), leases[name])
            samples[name]["acquire"].extend(acquires)
            samples[name]["release"].extend(releases)
            if floors and name in state.floors:
                samples[name]["floor"].extend(state.floors[name].time_once()
                                              for _ in range(BATCH))
    return samples


def test_three_disks_beside_one_then_with_one_disk_slow(bench: Bench) -> None:
    healthy = _measure(bench, ["one disk", "three disks"], floors=True)
    with _slowed(bench.daemon.pid, bench.disks[2]):
        slow = _measure(bench, ["three disks", "slowed disk alone"])
    report: dict[str, Any] = {"rounds": ROUNDS, "batch": BATCH, "slow_iops": SLOW_IOPS}
    for op in ("acquire", "release"):
        one = summary(healthy["one disk"][op])
        three = summary(healthy["three disks"][op])
        three_slow = summary(slow["three disks"][op])
        alone = summary(slow["slowed disk alone"][op])
        report[op] = {
            "one disk": one,
            "three disks": {**three, "ratio_to_one_disk": ratio(three, one)},
            "three disks, one slow": {**three_slow,
                                      "ratio_to_three_healthy": ratio(three_slow, three)},
            "slowed disk alone": {**alone, "ratio_to_one_disk": ratio(alone, one)},
        }
    floor_one, floor_three = (summary(healthy[name]["floor"])
                              for name in ("one disk", "three disks"))
    report["floor_six_ios"] = {
        "one disk": floor_one,
        "three disks": {**floor_three, "ratio_to_one_disk": ratio(floor_three, floor_one)},
        "acquire_over_floor": {
            "one disk": report["acquire"]["one disk"]["median_us"] / floor_one["median_us"],
            "three disks": (report["acquire"]["three disks"]["median_us"]
                            / floor_three["median_us"])}}
    MULTIDISK_REPORTS.append(report)
    Path(__file__).with_name("multidisk_results.json").write_text(json.dumps(report, indent=1))
    assert len(healthy["three disks"]["acquire"]) == ROUNDS * BATCH
