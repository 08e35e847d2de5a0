"""The lock value block (LVB): one opaque sector of a resource area, at sector 2002 as sanlock
fixes it, that holders of the lease pass on to the next holder.

Invariants (sanlock 3.8.5's behaviour, observed):
- a holding acquired with the LVB flag reads the sector once, after its grant; set and get
  then work on that copy, and a set copies its bytes over the start of the copy without
  clearing the rest;
- the copy is written back only when an exclusive holding that set it is released (on disk,
  before the leader is freed, so the next holder reads it); a shared holding's set is never
  written;
- the sector must lie inside the area: a 4K/1M area (256 sectors) has none, where sanlock
  would write past its area; there acquiring with the LVB flag is refused.
"""

from __future__ import annotations

from leasestore.effects import Algorithm, Read, Write
from leasestore.errors import LvbUnavailable
from leasestore.ondisk.geometry import Geometry, pad_sector
from leasestore.paxos import PaxosParams

LVB_SECTOR = 2002


def lvb_offset(geometry: Geometry) -> int:
    """Byte offset of the LVB within a resource area (LvbUnavailable if it lies outside)."""
    at = LVB_SECTOR * geometry.sector_size
    if at >= geometry.area_size:
        raise LvbUnavailable(f"a {geometry} resource area has no lock value block (sector "
                             f"{LVB_SECTOR} lies outside its {geometry.area_size} bytes)")
    return at


def read_lvb(p: PaxosParams) -> Algorithm[bytearray]:
    raw = yield Read(p.device, p.offset_b + lvb_offset(p.geometry), p.geometry.sector_size,
                     p.io_timeout_s)
    return bytearray(raw)


def write_lvb(p: PaxosParams, data: bytes) -> Algorithm[None]:
    yield Write(p.device, p.offset_b + lvb_offset(p.geometry),
                pad_sector(data, p.geometry.sector_size), p.io_timeout_s)
