"""Timing the host-lease renewal I/O pattern on an operator's device, as the daemon issues it.

One renewal: the whole area read with O_DIRECT into our buffer, then one sector written with
O_DIRECT|O_SYNC, each through the same AIO path and timeout as the daemon's renewals.

Invariants:
- Nothing is written unless the target area is unused: every byte zero, except that its first
  sector may hold the bench stamp an interrupted earlier run left. An area holding any lease
  record, or any other data, is refused for writing (reads only with `read_only`).
- Writes go to the area's first sector only, and when the run ends, however it ends, that
  sector is written back to zeros.
- With `read_only` the device is opened read-only: nothing can be written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from leasestore import direct
from leasestore.errors import (
    AreaInUse,
    CorruptRecord,
    DeviceTooSmall,
    IOTimeout,
    NotAligned,
    UsageError,
)
from leasestore.latency import RenewalTiming
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import decode_leader
from leasestore.storage.odirect import DirectDevice

IO_TIMEOUT_S = 60.0
"""Bound on each timed I/O; one that outlives it is counted at this value (a lower bound)."""
STAMP = b"leasestore bench scratch sector\n"


@dataclass(frozen=True)
class Plan:
    """What to time: where, at what geometry, how many renewals or for how long, how often."""

    path: str
    offset_b: int
    geometry: Geometry | None
    """None: the area's own geometry if it is formatted, else the device's default."""
    read_only: bool
    count: int | None
    seconds: float | None
    interval_s: float
    """Between renewal starts; 0: back to back."""


@dataclass(frozen=True)
class Run:
    path: str
    offset_b: int
    geometry: Geometry
    read_only: bool
    holds: str | None
    """What the area holds (records found), when it is formatted."""
    timings: list[RenewalTiming]
    elapsed_s: float
    timed_out_ios: int


def _stamp_sector(sector_size: int) -> bytes:
    return STAMP + bytes(sector_size - len(STAMP))


def _geometry(device: DirectDevice, offset_b: int, chosen: Geometry | None
              ) -> tuple[Geometry, str | None]:
    """The geometry to time (as chosen, else the area's own if it is formatted, else the
    device's default) and a description of the records the area holds (None: none)."""
    if offset_b % device.sector_size:
        raise NotAligned(f"offset {offset_b} is not a multiple of {device.sector_size}")
    if offset_b >= device.size_b:
        raise DeviceTooSmall(f"{device.path} is {device.size_b} bytes; offset {offset_b} "
                             "is beyond")
    own: Geometry | None = None  # stays None for an unformatted area, or no area at all
    with contextlib.suppress(CorruptRecord, UsageError):
        own = decode_leader(device.read(offset_b, device.sector_size, IO_TIMEOUT_S)).geometry()
    geometry = chosen or own or Geometry.default_for(device.sector_size)
    if offset_b + geometry.area_size > device.size_b:
        raise DeviceTooSmall(f"{device.path} is {device.size_b} bytes; an area of "
                             f"{geometry.area_size} at {offset_b} does not fit")
    found = [r for r in direct.scan_range(device, offset_b, geometry.area_size)
             if r.error is None]
    return geometry, direct.describe_records(found) if found else None


def _refuse_unless_unused(device: DirectDevice, offset_b: int, geometry: Geometry,
                          holds: str | None) -> None:
    where = f"{device.path}:{offset_b}"
    if holds is not None:
        raise AreaInUse(f"{where} holds {holds}; bench writes only to an unused area "
                        "(--read-only times the reads alone); nothing was written")
    area = device.read(offset_b, geometry.area_size, IO_TIMEOUT_S)
    ss = geometry.sector_size
    first = area[:ss]
    if (first.strip(b"\0") and first != _stamp_sector(ss)) or area[ss:].strip(b"\0"):
        raise AreaInUse(f"{where}: the area holds data that is no lease record; bench writes "
                        "only to an area of zeros (--read-only times the reads alone); "
                        "nothing was written")


def time_renewals(plan: Plan, on_timing: Callable[[RenewalTiming], None] = lambda _: None,
                  monotonic: Callable[[], float] = time.perf_counter,
                  sleep: Callable[[float], None] = time.sleep) -> Run:
    """Time renewals as `plan` says; `on_timing` sees each one as it ends."""
    if plan.count is None and plan.seconds is None:
        raise ValueError("a plan needs a count or a duration")
    with DirectDevice(plan.path, readonly=plan.read_only) as device:
        geometry, holds = _geometry(device, plan.offset_b, plan.geometry)
        if not plan.read_only:
            _refuse_unless_unused(device, plan.offset_b, geometry, holds)
        sector = _stamp_sector(geometry.sector_size)
        timings: list[RenewalTiming] = []
        timed_out = 0

        def timed(io: Callable[[], object]) -> float:
            nonlocal timed_out
            began = monotonic()
            try:
                io()
            except IOTimeout:
                timed_out += 1
                return IO_TIMEOUT_S
            return monotonic() - began

        started = monotonic()
        try:
            while ((plan.count is None or len(timings) < plan.count)
                   and (plan.seconds is None or monotonic() - started < plan.seconds)):
                if plan.interval_s and timings:
                    due = started + len(timings) * plan.interval_s
                    if (wait := due - monotonic()) > 0:
                        sleep(wait)
                read_s = timed(lambda: device.read_view(plan.offset_b, geometry.area_size,
                                                        IO_TIMEOUT_S).release())
                write_s = None if plan.read_only else timed(
                    lambda: device.write(plan.offset_b, sector, IO_TIMEOUT_S))
                timing = RenewalTiming(read_s, write_s)
                timings.append(timing)
                on_timing(timing)
        finally:
            if not plan.read_only:
                device.write(plan.offset_b, bytes(geometry.sector_size), IO_TIMEOUT_S)
        return Run(plan.path, plan.offset_b, geometry, plan.read_only, holds, timings,
                   monotonic() - started, timed_out)
