"""Benchmark support: a device per run, and a summary of each group's ratio to its baseline.

Each benchmark puts itself in a group and says in extra_info["role"] whether it is the
"baseline" (raw O_DIRECT I/O of the same pattern, or sanlock) or "leasestore".
"""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leasestore.testing.procs import LoopDevices, make_file

MiB = 1 << 20
ACQUIRE_REPORTS: list[dict[str, Any]] = []
"""Filled by test_acquire_bench (measured outside pytest-benchmark, interleaved with sanlock)."""
STORM_REPORTS: list[dict[str, Any]] = []
"""Filled by test_boot_storm_bench (100 processes at once, python3-sanlock to either daemon)."""
RENEWAL_REPORTS: list[dict[str, Any]] = []
"""Filled by test_renewal_interleaved_with_raw (raw and leasestore rounds alternating)."""
MULTIDISK_REPORTS: list[dict[str, Any]] = []
"""Filled by test_multidisk_bench (three disks beside one, then one of the three slowed)."""


@pytest.fixture(scope="session")
def bench_devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, str]]:
    """{sector_size: path}: loop devices when root, else regular files (512 only).

    Backing files are fully written first: reading a hole of a sparse file costs no physical
    I/O, which would make any baseline measured on it meaninglessly fast.
    """
    base = tmp_path_factory.mktemp("bench")
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        yield {512: make_file(base / "bench512.img", 16 * MiB, allocate=True)}
        return
    loops = LoopDevices()
    try:
        yield {
            512: loops.attach(make_file(base / "bench512.img", 16 * MiB, allocate=True), 512),
            4096: loops.attach(make_file(base / "bench4k.img", 16 * MiB, allocate=True), 4096),
        }
    finally:
        loops.detach_all()


def _stats(bench: Any) -> tuple[float, float]:
    data = sorted(bench.stats.data)
    p99 = data[min(len(data) - 1, int(len(data) * 0.99))]
    return statistics.median(data), p99


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    if RENEWAL_REPORTS:
        terminalreporter.section("renewal vs raw O_DIRECT (interleaved, median / p99)")
    for report in RENEWAL_REPORTS:
        ours, raw = report["leasestore"], report["raw O_DIRECT"]
        terminalreporter.write_line(
            f"{report['geometry']:<8} raw {raw['median_us']:8.0f} us (p99 {raw['p99_us']:8.0f})"
            f"  leasestore {ours['median_us']:8.0f} us (p99 {ours['p99_us']:8.0f})"
            f"  ratio {report['ratio_median']:5.2f} (p99 {report['ratio_p99']:5.2f})")
    for report in ACQUIRE_REPORTS:
        terminalreporter.section("acquire/release vs sanlock (interleaved, median / p99)")
        for op in ("acquire", "release"):
            row = report[op]
            terminalreporter.write_line(
                f"{op:<8} python3-sanlock → sanlock {row['sanlock']['median_us']:8.0f} us "
                f"(p99 {row['sanlock']['p99_us']:8.0f})")
            for side in ("binding→leasestore", "leasestore"):
                ours = row[side]
                terminalreporter.write_line(
                    f"{'':<8} {side:<24} {ours['median_us']:8.0f} us (p99 "
                    f"{ours['p99_us']:8.0f})  ratio {ours['ratio_median']:5.2f} "
                    f"(p99 {ours['ratio_p99']:5.2f})")
        floor = report["floor_six_ios"]
        terminalreporter.write_line(
            f"{'':<8} the six I/Os raw from Python {floor['median_us']:8.0f} us: acquire "
            f"(python3-sanlock → leasestore) / floor {floor['acquire_ratio_median']:5.2f}")
    for report in STORM_REPORTS:
        terminalreporter.section(f"boot storm: {report['processes']} processes at once "
                                 "(python3-sanlock, median of rounds)")
        for metric, unit in (("acquire_all_s", "s"), ("release_all_s", "s"),
                             ("daemon_cpu_ms_per_lease", "ms")):
            row = report[metric]
            terminalreporter.write_line(
                f"{metric:<24} sanlock {row['sanlock']:8.3f} {unit}  leasestore "
                f"{row['leasestore']:8.3f} {unit}  ratio {row['ratio']:5.2f}")
    for report in MULTIDISK_REPORTS:
        terminalreporter.section("leases on three disks vs one disk (same devices, median / p99)")
        for op in ("acquire", "release"):
            row = report[op]
            for side, baseline in (("one disk", ""), ("three disks", "ratio_to_one_disk"),
                                   ("three disks, one slow", "ratio_to_three_healthy"),
                                   ("slowed disk alone", "ratio_to_one_disk")):
                ours = row[side]
                against = (f"  {baseline} {ours[baseline]['median']:5.2f} "
                           f"(p99 {ours[baseline]['p99']:5.2f})" if baseline else "")
                terminalreporter.write_line(
                    f"{op:<8} {side:<22} {ours['median_us']:8.0f} us (p99 "
                    f"{ours['p99_us']:8.0f}){against}")
        floor = report["floor_six_ios"]
        terminalreporter.write_line(
            f"{'floor':<8} six raw I/Os: one disk {floor['one disk']['median_us']:8.0f} us, "
            f"three disks {floor['three disks']['median_us']:8.0f} us (ratio "
            f"{floor['three disks']['ratio_to_one_disk']['median']:5.2f}); acquire / floor: "
            f"one disk {floor['acquire_over_floor']['one disk']:5.2f}, three disks "
            f"{floor['acquire_over_floor']['three disks']:5.2f}")
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, Any]] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or bench.name, {})[bench.extra_info.get("role", "")] = bench
    terminalreporter.section("leasestore vs baseline (median, p99)")
    for group, roles in sorted(groups.items()):
        if ("baseline" not in roles or "leasestore" not in roles
                or not roles["baseline"].stats.data or not roles["leasestore"].stats.data):
            continue
        base_med, base_p99 = _stats(roles["baseline"])
        ours_med, ours_p99 = _stats(roles["leasestore"])
        terminalreporter.write_line(
            f"{group:<28} baseline {base_med * 1e6:9.1f} us (p99 {base_p99 * 1e6:9.1f})  "
            f"leasestore {ours_med * 1e6:9.1f} us (p99 {ours_p99 * 1e6:9.1f})  "
            f"ratio {ours_med / base_med:5.2f} (p99 {ours_p99 / base_p99:5.2f})"
        )


def path_of(devices: dict[int, str], sector_size: int) -> Path:
    if sector_size not in devices:
        pytest.skip(f"no {sector_size}-byte device (needs root and losetup)")
    return Path(devices[sector_size])
