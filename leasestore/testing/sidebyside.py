"""leasestore beside sanlock on twin loop devices: the set-up and timing helpers that the benches
and tools/vs_sanlock.py share.

Each side gets its own loop device over a fully written file on one filesystem (a sparse file's
holes read without physical I/O), formatted alike, with io_timeout 1 s. The raw baseline of a
renewal (`RawRenewal`: the same O_DIRECT I/O pattern with no lease logic at all) is timed on the
device of the side it is compared with.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leasestore import client
from leasestore.direct import format_lockspace, format_resource
from leasestore.testing.procs import DaemonProc, LoopDevices, SanlockProc, make_file

MiB = 1 << 20
LOCKSPACE = "twin-ls"
RESOURCE = "res"
RESOURCE_AT = MiB
SANLOCK_PYTHON = "/usr/bin/python3"
"""The interpreter that has the python3-sanlock binding (Debian's)."""

HELPER = r"""
import json, sys, time
MODULE = sys.argv[1]
if MODULE == "sanlock":
    import sanlock as api
else:
    from leasestore import client as api
lockspace, resource, path, offset = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
fd = api.register()
disks = [(path, offset)]
ls, res = lockspace.encode(), resource.encode()
print("ready", flush=True)
for line in sys.stdin:
    count = int(line)
    acquire, release = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        api.acquire(ls, res, disks, slkfd=fd)
        t1 = time.perf_counter()
        api.release(ls, res, disks, slkfd=fd)
        t2 = time.perf_counter()
        acquire.append(t1 - t0)
        release.append(t2 - t1)
    print(json.dumps({"acquire": acquire, "release": release}), flush=True)
"""


class Helper:
    """A registered client process that times acquire + release of one free lease."""

    def __init__(self, python: str, module: str, env: dict[str, str], device: str) -> None:
        self.proc = subprocess.Popen(
            [python, "-c", HELPER, module, LOCKSPACE, RESOURCE, device, str(RESOURCE_AT)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def batch(self, count: int) -> dict[str, list[float]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()
        result: dict[str, list[float]] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summary(times_s: list[float]) -> dict[str, float]:
    """Median and p99 in µs."""
    ordered = sorted(times_s)
    return {"median_us": statistics.median(ordered) * 1e6,
            "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
            "samples": len(ordered)}


def ratio(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    return {"median": ours["median_us"] / theirs["median_us"],
            "p99": ours["p99_us"] / theirs["p99_us"]}


@dataclass
class Twins:
    devices: dict[str, str]
    sanlock: SanlockProc
    ours: DaemonProc
    helpers: dict[str, Helper] = field(default_factory=dict)
    joined: set[str] = field(default_factory=set)

    def join(self, side: str) -> None:
        """Add the lockspace to the daemon of `side` ("sanlock" or "leasestore")."""
        if side in self.joined:
            return
        if side == "sanlock":
            self.sanlock.client("add_lockspace", "-s",
                                f"{LOCKSPACE}:1:{self.devices['sanlock']}:0", "-o", "1")
        else:
            self.ours.call(client.add_lockspace, LOCKSPACE, 1, self.devices["leasestore"], 0)
        self.joined.add(side)

    def start_helpers(self) -> dict[str, Helper]:
        """Three timed clients: python3-sanlock against sanlock ("sanlock") and against
        leasestore ("binding→leasestore": the same client, so the daemons are compared), and
        leasestore's own client against leasestore ("leasestore")."""
        self.helpers = {
            "sanlock": Helper(SANLOCK_PYTHON, "sanlock", self.sanlock.env,
                              self.devices["sanlock"]),
            "binding→leasestore": Helper(
                SANLOCK_PYTHON, "sanlock", {**os.environ, "SANLOCK_RUN_DIR": self.ours.run_dir},
                self.devices["leasestore"]),
            "leasestore": Helper(sys.executable, "leasestore",
                                 {**os.environ, "LEASESTORE_RUN_DIR": self.ours.run_dir},
                                 self.devices["leasestore"]),
        }
        return self.helpers


def prerequisites_missing() -> str | None:
    """Why twins cannot run here (None when they can)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return "needs root and losetup"
    if shutil.which("sanlock") is None:
        return "needs the sanlock daemon (apt-get install sanlock)"
    probe = subprocess.run([SANLOCK_PYTHON, "-c", "import sanlock"], capture_output=True)
    if probe.returncode != 0:
        return "needs python3-sanlock under /usr/bin/python3"
    return None


def lease_name(index: int) -> str:
    """The twins' resource leases: RESOURCE at RESOURCE_AT, then one per MiB after it."""
    return RESOURCE if index == 0 else f"{RESOURCE}{index}"


@contextlib.contextmanager
def twins(base: Path, join: tuple[str, ...] = ("sanlock", "leasestore"),
          leases: int = 1) -> Iterator[Twins]:
    """Both daemons running, those named in `join` joined to a lockspace on their own twin
    device (`Twins.join` adds the others later), each device with `leases` resource leases
    (`lease_name(i)` at RESOURCE_AT + i MiB). Stops every process it started and detaches
    every loop device."""
    sanlock_bin = shutil.which("sanlock")
    assert sanlock_bin is not None
    loops = LoopDevices()
    started: list[SanlockProc | DaemonProc] = []
    made: Twins | None = None
    try:
        devices = {}
        for side in ("sanlock", "leasestore"):
            size_b = max(4 * MiB, RESOURCE_AT + (leases + 1) * MiB)
            device = loops.attach(make_file(base / f"{side}.img", size_b, allocate=True))
            format_lockspace(device, LOCKSPACE, 0, io_timeout_s=1)
            for index in range(leases):
                format_resource(device, LOCKSPACE, lease_name(index),
                                RESOURCE_AT + index * MiB)
            devices[side] = device
        theirs = SanlockProc(base, "twin-slk", sanlock_bin)
        started.append(theirs)
        ours = DaemonProc(base, "twin-ours", io_timeout_s=1, watchdog_fire_timeout_s=60)
        started.append(ours)
        made = Twins(devices, theirs, ours)
        for side in join:
            made.join(side)
        yield made
    finally:
        if made is not None:
            for helper in made.helpers.values():
                helper.close()
        for proc in reversed(started):
            proc.stop()
        loops.detach_all()


# --- renewal ------------------------------------------------------------------------------------


class RawRenewal:
    """The raw baseline of a renewal: read `area_b` bytes at 0, then write back `write_b` bytes
    at `write_at`, O_DIRECT|O_SYNC, into buffers allocated (and touched) once, as a daemon's
    are."""

    def __init__(self, device: str, area_b: int, write_b: int, write_at: int) -> None:
        self._fd = os.open(device, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
        self._area = mmap.mmap(-1, area_b)
        self._sector = mmap.mmap(-1, max(write_b, mmap.PAGESIZE))
        self._area.write(bytes(area_b))  # fault every page in before timing
        self._write_b, self._write_at = write_b, write_at

    def time_once(self) -> float:
        start = time.perf_counter()
        os.preadv(self._fd, [self._area], 0)
        self._sector[:self._write_b] = self._area[self._write_at:self._write_at + self._write_b]
        os.pwritev(self._fd, [memoryview(self._sector)[:self._write_b]], self._write_at)
        return time.perf_counter() - start

    def close(self) -> None:
        os.close(self._fd)


_SANLOCK_RENEWAL = re.compile(r"timestamp=(\d+) read_ms=(\d+) write_ms=(\d+)")


def sanlock_renewals_s(proc: SanlockProc) -> list[float]:
    """read + write time of each renewal in sanlock's history (it keeps milliseconds)."""
    out = proc.client("renewal", "-s", LOCKSPACE).stdout
    return [(int(r) + int(w)) / 1e3 for _ts, r, w in _SANLOCK_RENEWAL.findall(out)]


def our_renewals_s(proc: DaemonProc, since_s: float = 0.0) -> list[float]:
    """read + write time of each successful renewal in our daemon's history that started at or
    after `since_s` (time.monotonic(): the daemon's history uses the same clock)."""
    history: list[dict[str, Any]] = proc.call(client.renewal_history, LOCKSPACE)
    return [(h["read_us"] + h["write_us"]) / 1e6 for h in history
            if not h.get("error") and h["time"] >= since_s]
