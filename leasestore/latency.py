"""What renewal timings say about a device: percentiles, a histogram, and how each io_timeout
would have fared.

A renewal is one whole-area read followed by a one-sector write, each I/O bounded by
io_timeout (sanlock gives every renewal I/O the lockspace's io_timeout). So an io_timeout
would have failed a renewal when either of its I/Os took longer than io_timeout; its margin is
io_timeout minus the slowest single I/O seen. The recommendation is the smallest io_timeout in
1..20 s (beyond 20, host_dead passes three minutes) that leaves at least half of every I/O's
timeout unused: a stall twice as long as the worst one measured is still survived.
Timings are in seconds. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
JUDGED_IO_TIMEOUTS_S = range(1, 21)
HEADROOM = 2.0
"""The recommended io_timeout is at least HEADROOM × the slowest single I/O."""


@dataclass(frozen=True)
class RenewalTiming:
    """One renewal's I/O times; write_s is None when only reads were timed."""

    read_s: float
    write_s: float | None

    @property
    def total_s(self) -> float:
        return self.read_s + (self.write_s or 0.0)

    @property
    def slowest_io_s(self) -> float:
        return max(self.read_s, self.write_s or 0.0)


@dataclass(frozen=True)
class Summary:
    """Percentiles of one kind of timing (p50, p90, p99, p99.9 in PERCENTILES order)."""

    count: int
    percentiles_s: tuple[float, ...]
    max_s: float
    mean_s: float

    @classmethod
    def of(cls, values_s: Sequence[float]) -> Summary:
        if not values_s:
            raise ValueError("no timings to summarise")
        array = np.asarray(values_s, dtype=np.float64)
        return cls(len(values_s), tuple(float(v) for v in np.percentile(array, PERCENTILES)),
                   float(array.max()), float(array.mean()))

    def to_json(self) -> dict[str, float | int]:
        document: dict[str, float | int] = {"count": self.count}
        for pct, value in zip(PERCENTILES, self.percentiles_s, strict=True):
            document[f"p{pct:g}_ms"] = round(value * 1e3, 3)
        document["max_ms"] = round(self.max_s * 1e3, 3)
        document["mean_ms"] = round(self.mean_s * 1e3, 3)
        return document


@dataclass(frozen=True)
class IoTimeoutVerdict:
    """How renewals at this io_timeout would have fared on the timings."""

    io_timeout_s: int
    failed_renewals: int
    """Renewals with an I/O slower than io_timeout (each a failed renewal attempt)."""
    margin_s: float
    """io_timeout minus the slowest single I/O (negative: that I/O would have timed out)."""

    def to_json(self) -> dict[str, float | int]:
        return {"io_timeout": self.io_timeout_s, "failed_renewals": self.failed_renewals,
                "margin_ms": round(self.margin_s * 1e3, 3)}


def io_timeout_verdicts(timings: Sequence[RenewalTiming]) -> list[IoTimeoutVerdict]:
    slowest = np.asarray([t.slowest_io_s for t in timings], dtype=np.float64)
    worst = float(slowest.max()) if slowest.size else 0.0
    return [IoTimeoutVerdict(seconds, int((slowest > seconds).sum()), seconds - worst)
            for seconds in JUDGED_IO_TIMEOUTS_S]


def recommended_io_timeout(timings: Sequence[RenewalTiming]) -> int | None:
    """The smallest judged io_timeout with HEADROOM over the slowest I/O; None if even the
    largest judged has not."""
    if not timings:
        return None
    worst = max(t.slowest_io_s for t in timings)
    seconds = max(JUDGED_IO_TIMEOUTS_S[0], math.ceil(HEADROOM * worst))
    return seconds if seconds in JUDGED_IO_TIMEOUTS_S else None


@dataclass(frozen=True)
class Bucket:
    low_s: float
    high_s: float
    count: int


def histogram(values_s: Sequence[float], buckets: int = 12) -> list[Bucket]:
    """Log-spaced buckets from the fastest to the slowest value (latencies span decades)."""
    if not values_s:
        return []
    low, high = min(values_s), max(values_s)
    low = max(low, 1e-6)
    if high <= low * 1.0001:
        return [Bucket(low, high, len(values_s))]
    edges = np.geomspace(low, high, buckets + 1)
    counts, _ = np.histogram(np.clip(values_s, low, high), bins=edges)
    return [Bucket(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(buckets)]
