"""Acquire + release of a free resource lease through the daemon, beside sanlock's through
python3-sanlock, in the same run, each daemon on its own loop device (over files on one
filesystem), interleaved in batches A B A B so that drift cancels.

Both sides run the same kind of helper process, which registers once and then times every
acquire and release with perf_counter; the helper for sanlock runs under /usr/bin/python3 (where
the binding lives). Results: bench/acquire_results.json and the terminal summary.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leasestore import client
from leasestore.direct import format_lockspace, format_resource
from leasestore.testing.procs import DaemonProc, LoopDevices, SanlockProc, make_file

from .conftest import ACQUIRE_REPORTS

MiB = 1 << 20
LS = "bench-ls"
ROUNDS = 10
BATCH = 20

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
    def __init__(self, python: str, module: str, env: dict[str, str], device: str) -> None:
        self.proc = subprocess.Popen(
            [python, "-c", HELPER, module, LS, "res", device, str(MiB)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
        self.proc.wait(30)


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Helper]]:
    sanlock_bin = shutil.which("sanlock")
    if os.geteuid() != 0 or sanlock_bin is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root, loop devices, sanlock and python3-sanlock")
    base = tmp_path_factory.mktemp("acquire")
    loops = LoopDevices()
    stack: list[Any] = []
    try:
        devices = {}
        for side in ("sanlock", "leasestore"):
            device = loops.attach(make_file(base / f"{side}.img", 4 * MiB, allocate=True))
            format_lockspace(device, LS, 0, io_timeout_s=1)
            format_resource(device, LS, "res", MiB)
            devices[side] = device
        theirs = SanlockProc(base, "bench-slk", sanlock_bin)
        stack.append(theirs)
        theirs.client("add_lockspace", "-s", f"{LS}:1:{devices['sanlock']}:0", "-o", "1")
        ours = DaemonProc(base, "bench-ours", io_timeout_s=1, watchdog_fire_timeout_s=60)
        stack.append(ours)
        ours.call(client.add_lockspace, LS, 1, devices["leasestore"], 0)
        helpers = {
            "sanlock": Helper("/usr/bin/python3", "sanlock", theirs.env, devices["sanlock"]),
            "leasestore": Helper(sys.executable, "leasestore",
                                 {**os.environ, "LEASESTORE_RUN_DIR": ours.run_dir},
                                 devices["leasestore"]),
        }
        stack.extend(helpers.values())
        yield helpers
    finally:
        for item in reversed(stack):
            item.close() if isinstance(item, Helper) else item.stop()
        loops.detach_all()


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_us": statistics.median(ordered) * 1e6,
            "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6}


def test_acquire_release_beside_sanlock(helpers: dict[str, Helper]) -> None:
    samples: dict[str, dict[str, list[float]]] = {
        side: {"acquire": [], "release": []} for side in helpers}
    for helper in helpers.values():
        helper.batch(5)  # warm-up
    for _ in range(ROUNDS):
        for side in ("sanlock", "leasestore"):
            batch = helpers[side].batch(BATCH)
            for op in ("acquire", "release"):
                samples[side][op].extend(batch[op])
    report: dict[str, Any] = {"rounds": ROUNDS, "batch": BATCH}
    for op in ("acquire", "release"):
        ours, theirs = _summary(samples["leasestore"][op]), _summary(samples["sanlock"][op])
        report[op] = {"leasestore": ours, "sanlock": theirs,
                      "ratio_median": ours["median_us"] / theirs["median_us"],
                      "ratio_p99": ours["p99_us"] / theirs["p99_us"]}
    ACQUIRE_REPORTS.append(report)
    Path(__file__).with_name("acquire_results.json").write_text(json.dumps(report, indent=1))
    assert len(samples["leasestore"]["acquire"]) == ROUNDS * BATCH
