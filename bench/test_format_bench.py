"""Formatting many resource leases in one command beside `dd` of the same bytes: 64 and 256
leases at 512/1M (64 and 256 MiB) on one loop device. `format_resources` (what `leasestore
format -r LS:vm{}:DEV:OFF --count N --force` runs) against `dd if=/dev/zero bs=16M
oflag=direct` over the same range (our writes are 16 MiB too), rounds alternating. The ratio of
medians is what the images, our O_DIRECT path (a copy into aligned buffers) and opening and
closing the AIO context cost over the device's write speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasestore.direct import format_resources
from leasestore.testing.procs import LoopDevices, make_file
from leasestore.testing.sidebyside import ratio, summary

MiB = 1 << 20
LEASES_MAX, ROUNDS = 256, 5
RESULTS = Path(__file__).with_name("format_results.json")


@pytest.fixture
def big_device(tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.fail("the format bench needs root and losetup (a loop device)")
    loops = LoopDevices()
    try:
        yield loops.attach(make_file(tmp_path / "format.img", (LEASES_MAX + 1) * MiB,
                                     allocate=True))
    finally:
        loops.detach_all()


@pytest.mark.parametrize("leases", [64, LEASES_MAX])
def test_format_many_leases_beside_dd(big_device: str, leases: int) -> None:
    names = [f"vm{i}" for i in range(leases)]
    ours_s: list[float] = []
    dd_s: list[float] = []
    dd = ["dd", "if=/dev/zero", f"of={big_device}", "bs=16M", f"count={leases // 16}",
          f"seek={MiB}", "oflag=direct,seek_bytes", "conv=notrunc", "status=none"]
    for _ in range(ROUNDS):
        started = time.perf_counter()
        format_resources(big_device, "LS", names, MiB, force=True)
        ours_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(dd, check=True)
        dd_s.append(time.perf_counter() - started)
    ours, theirs = summary(ours_s), summary(dd_s)
    r = ratio(ours, theirs)
    reports = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    reports[str(leases)] = {"leasestore format": ours, "dd": theirs, "ratio_median": r["median"]}
    RESULTS.write_text(json.dumps(reports, indent=1))
    print(f"\n{leases} leases: format {ours['median_us'] / 1e3:.1f} ms, dd of the same "
          f"{leases} MiB {theirs['median_us'] / 1e3:.1f} ms: ratio {r['median']:.2f}")
    assert ours["samples"] == theirs["samples"] == ROUNDS
