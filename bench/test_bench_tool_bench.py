"""`leasestore bench` reports what the device does: its renewal timings beside the raw
O_DIRECT pattern (read the whole area, write one sector) timed on the same device in the same
run, batches alternating A B A B so that the device's drift falls on both alike. The ratio of
medians is the tool's own overhead in what it reports (its AIO path, its Python)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leasestore.ondisk.geometry import Geometry
from leasestore.renewal_timing import Plan, time_renewals
from leasestore.testing.sidebyside import RawRenewal, ratio, summary

from .conftest import path_of

MiB = 1 << 20
ROUNDS, BATCH = 10, 30
GEOMETRIES = [(512, 1 * MiB), (4096, 8 * MiB)]
RESULTS = Path(__file__).with_name("bench_tool_results.json")


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}-{g[1] // MiB}M")
def test_bench_tool_reports_the_raw_pattern(bench_devices: dict[int, str],
                                            geometry: tuple[int, int]) -> None:
    sector_size, align = geometry
    path = str(path_of(bench_devices, sector_size))
    plan = Plan(path, align, Geometry(sector_size, align), False, BATCH, None, 0.0)
    raw = RawRenewal(path, align, sector_size, 100 * sector_size)  # rewrites what it read
    tool_s: list[float] = []
    raw_s: list[float] = []
    try:
        for _ in range(ROUNDS):
            tool_s.extend(t.total_s for t in time_renewals(plan).timings)
            raw_s.extend(raw.time_once() for _ in range(BATCH))
    finally:
        raw.close()
    ours, theirs = summary(tool_s), summary(raw_s)
    r = ratio(ours, theirs)
    reports = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    reports[f"{sector_size}/{align // MiB}M"] = {"leasestore bench": ours, "raw O_DIRECT": theirs,
                                                 "ratio_median": r["median"],
                                                 "ratio_p99": r["p99"]}
    RESULTS.write_text(json.dumps(reports, indent=1))
    print(f"\n{sector_size}/{align // MiB}M: bench reports {ours['median_us']:.0f} us "
          f"(p99 {ours['p99_us']:.0f}), raw {theirs['median_us']:.0f} us "
          f"(p99 {theirs['p99_us']:.0f}): ratio {r['median']:.2f} (p99 {r['p99']:.2f})")
    assert ours["samples"] == theirs["samples"] == ROUNDS * BATCH
