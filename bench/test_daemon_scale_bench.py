"""One daemon at scale: its memory while holding 1,000 resource leases, and 100 lockspaces
renewing at once without a missed renewal. Results: bench/daemon_scale_results.json.

The areas live on one loop device over a sparse file: lockspace areas at 0..99 MiB, resource
areas after them. Each area gets its leader (and request) sectors as `init` writes them; the
rest of a fresh sparse file already reads as zeros, which is what `init` would write there.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leasestore import client
from leasestore.ondisk.areas import lockspace_area_image, resource_area_image
from leasestore.ondisk.geometry import Geometry
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file, poll
from leasestore.timeouts import Timeouts

MiB = 1 << 20
GEO = Geometry(512, MiB)
LOCKSPACES = 100
LEASES = 1000
RESOURCES_AT = LOCKSPACES * MiB
RESULTS = Path(__file__).with_name("daemon_scale_results.json")
HOLDER = r"""
import sys
from leasestore import client
path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = client.register()
for i in range(count):
    client.acquire("ls0", f"r{i}", [(path, first + i * (1 << 20))], slkfd=fd)
print("held", flush=True)
sys.stdin.read()
"""


def _head(image: bytes) -> bytes:
    return image[:2 * GEO.sector_size]


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a loop device")
    base = tmp_path_factory.mktemp("scale")
    loops = LoopDevices()
    try:
        path = loops.attach(make_file(base / "scale.img", RESOURCES_AT + LEASES * MiB))
        fd = os.open(path, os.O_WRONLY)
        try:
            for n in range(LOCKSPACES):
                os.pwrite(fd, lockspace_area_image(f"ls{n}", GEO, 1), n * MiB)
            for i in range(LEASES):
                os.pwrite(fd, _head(resource_area_image("ls0", f"r{i}", GEO)),
                          RESOURCES_AT + i * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        yield path
    finally:
        loops.detach_all()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _save(key: str, value: dict[str, Any]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[key] = {**value, "date": time.strftime("%Y-%m-%d")}
    RESULTS.write_text(json.dumps(results, indent=1))


def test_rss_while_holding_1000_leases_then_100_lockspaces_renewing(
        device: str, tmp_path: Path) -> None:
    daemon = DaemonProc(tmp_path, "scale", io_timeout_s=1, watchdog_fire_timeout_s=60)
    holder: subprocess.Popen[str] | None = None
    try:
        daemon.call(client.add_lockspace, "ls0", 1, device, 0)
        idle_kib = _rss_kib(daemon.pid)
        started = time.monotonic()
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, device, str(RESOURCES_AT), str(LEASES)],
            env={**os.environ, "LEASESTORE_RUN_DIR": daemon.run_dir},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        acquire_s = time.monotonic() - started
        held = [h for h in daemon.call(client.status)["leases"] if h["pid"] == holder.pid]
        assert len(held) == LEASES
        holding_kib = _rss_kib(daemon.pid)
        _save("rss_1000_leases", {"idle_kib": idle_kib, "holding_kib": holding_kib,
                                  "leases": LEASES, "acquire_all_s": round(acquire_s, 1)})
        print(f"\ndaemon RSS: {idle_kib / 1024:.1f} MiB with one lockspace, "
              f"{holding_kib / 1024:.1f} MiB holding {LEASES} leases "
              f"(acquired in {acquire_s:.1f} s)")

        # 99 more lockspaces, all joining at once; then watch every renewal for a while.
        for n in range(1, LOCKSPACES):
            daemon.call(client.add_lockspace, f"ls{n}", 1, device, n * MiB, wait=False)
        poll(lambda: all(ls["state"] == "held" for ls in daemon.call(client.get_lockspaces)),
             120, interval_s=0.5, what="100 lockspaces joined")
        watch_from = time.monotonic()
        time.sleep(30)  # the measurement window: renewals happen on their own schedule
        timeouts = Timeouts(1, 60)
        worst_gap_s, failures, renewals = 0.0, 0, 0
        for n in range(LOCKSPACES):
            history = daemon.call(client.renewal_history, f"ls{n}")
            times = [h["time"] for h in history if h["time"] >= watch_from - 2]
            failures += sum(1 for h in history if h.get("error"))
            renewals += len(times)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            worst_gap_s = max([worst_gap_s, *gaps])
        all_kib = _rss_kib(daemon.pid)
        _save("100_lockspaces", {"lockspaces": LOCKSPACES, "window_s": 30,
                                 "renewals": renewals, "failed": failures,
                                 "worst_gap_s": round(worst_gap_s, 3),
                                 "id_renewal_s": timeouts.id_renewal_s,
                                 "rss_kib": all_kib})
        print(f"{LOCKSPACES} lockspaces: {renewals} renewals in 30 s, {failures} failed, worst "
              f"gap {worst_gap_s:.2f} s (renewal every {timeouts.id_renewal_s} s, fail after "
              f"{timeouts.id_renewal_fail_s} s); RSS {all_kib / 1024:.1f} MiB")
        assert failures == 0 and worst_gap_s < timeouts.id_renewal_fail_s
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        daemon.stop()
