"""Area geometry: sector size × align size → max_hosts, and where each record lives.

One lockspace or one resource lease occupies exactly one align-sized area starting at a multiple of
the align size. The max_hosts table is fixed by sanlock (not align/sector): 512/1M and 4096/8M hold
2000 hosts, 4096 with 1M/2M/4M holds 250/500/1000. 512-byte sectors only pair with 1 MiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from leasestore.errors import UsageError
from leasestore.units import MiB, format_size

SECTOR_SIZES = (512, 4096)

_MAX_HOSTS: dict[tuple[int, int], int] = {
    (512, 1 * MiB): 2000,
    (4096, 1 * MiB): 250,
    (4096, 2 * MiB): 500,
    (4096, 4 * MiB): 1000,
    (4096, 8 * MiB): 2000,
}

ALIGN_FLAGS: dict[int, int] = {1 * MiB: 0x10, 2 * MiB: 0x20, 4 * MiB: 0x40, 8 * MiB: 0x80}
ALIGN_FLAG_MASK = 0xF0

LEGACY_ALIGN: dict[int, int] = {512: 1 * MiB, 4096: 8 * MiB}
"""Align size used when none is given (and for leaders without an ALIGN flag)."""

REQUEST_SECTOR = 1
FIRST_DBLOCK_SECTOR = 2
MODE_BLOCK_OFFSET_B = 128
BITMAP_OFFSET_B = 256
BITMAP_SIZE_B = 256


@dataclass(frozen=True)
class Geometry:
    """A valid (sector_size, align_size) pair. Construction fails for any other pair."""

    sector_size: int
    align_size: int

    def __post_init__(self) -> None:
        if (self.sector_size, self.align_size) not in _MAX_HOSTS:
            raise UsageError(
                "invalid sector_size/align_size combination: "
                f"{self.sector_size}/{format_size(self.align_size)} "
                "(valid: 512/1M, 4096/1M, 4096/2M, 4096/4M, 4096/8M)"
            )

    @classmethod
    def default_for(cls, sector_size: int) -> Geometry:
        """The legacy geometry sanlock uses when only the sector size is known."""
        if sector_size not in LEGACY_ALIGN:
            raise UsageError(f"unsupported sector size {sector_size} (512 or 4096)")
        return cls(sector_size, LEGACY_ALIGN[sector_size])

    @classmethod
    def from_leader_fields(cls, sector_size: int, flags: int) -> Geometry:
        """The geometry a leader's sector_size and ALIGN flag name (legacy align if no flag)."""
        align_bits = flags & ALIGN_FLAG_MASK
        for align_size, bit in ALIGN_FLAGS.items():
            if align_bits == bit:
                return cls(sector_size, align_size)
        if align_bits:
            raise UsageError(f"leader has several ALIGN flags set: {flags:#x}")
        return cls.default_for(sector_size)

    @property
    def max_hosts(self) -> int:
        return _MAX_HOSTS[(self.sector_size, self.align_size)]

    @property
    def align_flag(self) -> int:
        return ALIGN_FLAGS[self.align_size]

    @property
    def area_size(self) -> int:
        return self.align_size

    def check_host_id(self, host_id: int) -> None:
        if not 1 <= host_id <= self.max_hosts:
            raise UsageError(f"host_id {host_id} out of range 1..{self.max_hosts}")

    def delta_offset(self, host_id: int) -> int:
        """Byte offset, within a lockspace area, of host_id's delta-lease sector."""
        self.check_host_id(host_id)
        return (host_id - 1) * self.sector_size

    def dblock_offset(self, host_id: int) -> int:
        """Byte offset, within a resource area, of host_id's dblock sector."""
        self.check_host_id(host_id)
        return (FIRST_DBLOCK_SECTOR + host_id - 1) * self.sector_size

    @property
    def request_offset(self) -> int:
        return REQUEST_SECTOR * self.sector_size

    def ballot_read_size(self, num_hosts: int) -> int:
        """Bytes a ballot reads: leader, request and num_hosts dblocks, in whole sectors."""
        return min(self.area_size, (FIRST_DBLOCK_SECTOR + num_hosts) * self.sector_size)

    def __str__(self) -> str:
        return f"{self.sector_size}/{format_size(self.align_size)}"


def all_geometries() -> list[Geometry]:
    return [Geometry(s, a) for (s, a) in _MAX_HOSTS]


def pad_sector(record: bytes, sector_size: int) -> bytes:
    """`record` followed by zeros up to one sector: every record write is a whole sector."""
    if len(record) > sector_size:
        raise ValueError("record larger than a sector")
    return record + bytes(sector_size - len(record))
