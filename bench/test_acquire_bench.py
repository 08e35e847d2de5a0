"""Acquire + release of a free resource lease, each daemon on its own loop device (over files
on one filesystem), interleaved in batches A B C A B C so that drift cancels: python3-sanlock
against sanlock's daemon (the baseline), the same python3-sanlock against leasestore's daemon
(the daemons compared through one client), and leasestore's own client against leasestore.

Every side runs the same kind of helper process, which registers once and then times every
acquire and release with perf_counter; the binding's helpers run under /usr/bin/python3 (where
the binding lives). Results: bench/acquire_results.json and the terminal summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leasestore.testing.sidebyside import Helper, prerequisites_missing, ratio, summary, twins

from .conftest import ACQUIRE_REPORTS

ROUNDS = 10
BATCH = 20


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Helper]]:
    missing = prerequisites_missing()
    if missing:
        pytest.skip(missing)
    with twins(tmp_path_factory.mktemp("acquire")) as pair:
        yield pair.start_helpers()


def test_acquire_release_beside_sanlock(helpers: dict[str, Helper]) -> None:
    samples: dict[str, dict[str, list[float]]] = {
        side: {"acquire": [], "release": []} for side in helpers}
    for helper in helpers.values():
        helper.batch(5)  # warm-up
    for _ in range(ROUNDS):
        for side, helper in helpers.items():
            batch = helper.batch(BATCH)
            for op in ("acquire", "release"):
                samples[side][op].extend(batch[op])
    report: dict[str, Any] = {"rounds": ROUNDS, "batch": BATCH}
    for op in ("acquire", "release"):
        theirs = summary(samples["sanlock"][op])
        row: dict[str, Any] = {"sanlock": theirs}
        for side in ("binding→leasestore", "leasestore"):
            ours = summary(samples[side][op])
            r = ratio(ours, theirs)
            row[side] = {**ours, "ratio_median": r["median"], "ratio_p99": r["p99"]}
        report[op] = row
    ACQUIRE_REPORTS.append(report)
    Path(__file__).with_name("acquire_results.json").write_text(json.dumps(report, indent=1))
    assert len(samples["leasestore"]["acquire"]) == ROUNDS * BATCH
