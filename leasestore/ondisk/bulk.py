"""Whole-area decoding with one numpy structured dtype: no per-sector Python loop.

`scan_leaders` views an area buffer as an array of leaders, one per sector, without copying.
Checksums are not verified in bulk; callers verify the rows whose contents drive a decision
(`leader_checksum_ok`), as sanlock does for the sectors it acts on.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

from leasestore.ondisk.checksum import sanlock_crc
from leasestore.ondisk.dblock import DBLOCK_LAYOUT, MODE_BLOCK_LAYOUT
from leasestore.ondisk.geometry import MODE_BLOCK_OFFSET_B
from leasestore.ondisk.layout import numpy_fields
from leasestore.ondisk.leader import LEADER_CHECKSUM_OFFSET, LEADER_LAYOUT

_LEADER_FIELDS = numpy_fields(LEADER_LAYOUT)
_DBLOCK_FIELDS = numpy_fields(DBLOCK_LAYOUT) + numpy_fields(
    MODE_BLOCK_LAYOUT, MODE_BLOCK_OFFSET_B, prefix="mode_"
)


LEADER_SPAN_B = 200
"""Bytes at the start of a sector that hold every leader field (through write_timestamp)."""


def _dtype(fields: tuple[tuple[str, str, int], ...], itemsize: int) -> np.dtype[np.void]:
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields],
            "itemsize": itemsize,
        }
    )


@cache
def leader_dtype(sector_size: int) -> np.dtype[np.void]:
    """One leader per `sector_size` bytes (LEADER_SPAN_B for a compact copy of the fields)."""
    return _dtype(_LEADER_FIELDS, sector_size)


@cache
def dblock_dtype(sector_size: int) -> np.dtype[np.void]:
    """One dblock (with its mode block) per sector."""
    return _dtype(_DBLOCK_FIELDS, sector_size)


def scan_leaders(buf: bytes | memoryview, sector_size: int, count: int) -> npt.NDArray[np.void]:
    """A read-only array view of the first `count` sectors of `buf` as leaders."""
    return np.frombuffer(buf, dtype=leader_dtype(sector_size), count=count)


def scan_dblocks(
    buf: bytes | memoryview, sector_size: int, first_sector: int, count: int
) -> npt.NDArray[np.void]:
    """A read-only array view of `count` dblock sectors starting at sector `first_sector`."""
    return np.frombuffer(
        buf, dtype=dblock_dtype(sector_size), count=count, offset=first_sector * sector_size
    )


def leader_checksum_ok(buf: bytes | memoryview, sector_size: int, index: int) -> bool:
    """Whether the leader in sector `index` of `buf` carries a matching checksum."""
    start = index * sector_size
    view = memoryview(buf)[start:start + LEADER_CHECKSUM_OFFSET + 4]
    stored = int.from_bytes(view[LEADER_CHECKSUM_OFFSET:], "little")
    return sanlock_crc(view[:LEADER_CHECKSUM_OFFSET]) == stored
