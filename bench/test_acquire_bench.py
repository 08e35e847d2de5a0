"""Acquire + release of a free resource lease, each daemon on its own loop device (over files
on one filesystem), interleaved in batches A B C A B C so that drift cancels: python3-sanlock
against sanlock's daemon (the baseline), the same python3-sanlock against leasestore's daemon
(the daemons compared through one client), and leasestore's own client against leasestore.

Every side runs the same kind of helper process, which registers once and then times every
acquire and release with perf_counter; the binding's helpers run under /usr/bin/python3 (where
the binding lives). Results: bench/acquire_results.json and the terminal summary.

Beside them, the physical floor of an uncontended acquire: the same six I/Os issued back to
back from Python on the leasestore twin device, in the same rounds (three reads of the whole
1 MiB area and three one-sector writes, O_DIRECT|O_SYNC, at a free area of that device).
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leasestore.testing.sidebyside import (
    RESOURCE_AT,
    Helper,
    prerequisites_missing,
    ratio,
    summary,
    twins,
)
from leasestore.units import MiB

from .conftest import ACQUIRE_REPORTS

ROUNDS = 10
BATCH = 20


FLOOR_AT = RESOURCE_AT + MiB
"""A free area of the twin device (the lease is at RESOURCE_AT): the floor's I/Os go there."""


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[dict[str, Helper], RawSixIos]]:
    missing = prerequisites_missing()
    if missing:
        pytest.skip(missing)
    with twins(tmp_path_factory.mktemp("acquire")) as pair:
        raw = RawSixIos(pair.devices["leasestore"], FLOOR_AT)
        try:
            yield pair.start_helpers(), raw
        finally:
            raw.close()


class RawSixIos:
    """The floor: read the 1 MiB area at `at`, write one sector of it back, three times, with
    O_DIRECT|O_SYNC into buffers allocated (and touched) once."""

    def __init__(self, device: str, at: int) -> None:
        self._fd = os.open(device, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
        self._area = mmap.mmap(-1, MiB)
        self._area.write(bytes(MiB))  # fault every page in before timing
        self._sector = mmap.mmap(-1, mmap.PAGESIZE)
        self._at = at

    def time_once(self) -> float:
        start = time.perf_counter()
        for _ in range(3):
            os.preadv(self._fd, [self._area], self._at)
            self._sector[:512] = self._area[512:1024]
            os.pwritev(self._fd, [memoryview(self._sector)[:512]], self._at + 512)
        return time.perf_counter() - start

    def close(self) -> None:
        os.close(self._fd)


def test_acquire_release_beside_sanlock(sides: tuple[dict[str, Helper], RawSixIos]) -> None:
    helpers, raw = sides
    samples: dict[str, dict[str, list[float]]] = {
        side: {"acquire": [], "release": []} for side in helpers}
    floor: list[float] = []
    for helper in helpers.values():
        helper.batch(5)  # warm-up
    for _ in range(ROUNDS):
        for side, helper in helpers.items():
            batch = helper.batch(BATCH)
            for op in ("acquire", "release"):
                samples[side][op].extend(batch[op])
        floor.extend(raw.time_once() for _ in range(BATCH))
    report: dict[str, Any] = {"rounds": ROUNDS, "batch": BATCH}
    for op in ("acquire", "release"):
        theirs = summary(samples["sanlock"][op])
        row: dict[str, Any] = {"sanlock": theirs}
        for side in ("binding→leasestore", "leasestore"):
            ours = summary(samples[side][op])
            r = ratio(ours, theirs)
            row[side] = {**ours, "ratio_median": r["median"], "ratio_p99": r["p99"]}
        report[op] = row
    six = summary(floor)
    report["floor_six_ios"] = {**six, "acquire_ratio_median": (
        report["acquire"]["binding→leasestore"]["median_us"] / six["median_us"])}
    ACQUIRE_REPORTS.append(report)
    Path(__file__).with_name("acquire_results.json").write_text(json.dumps(report, indent=1))
    assert len(samples["leasestore"]["acquire"]) == ROUNDS * BATCH
