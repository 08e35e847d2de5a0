"""sanlock's resource index (rindex) on disk: records and offsets, no I/O.

An rindex at offset RX takes two areas of the geometry's align size, then its resource slots:
- area 1 (RX): the header in its first sector, then one 64-byte entry per slot from the second
  sector on (entry i at RX + sector_size + 64 i); nothing in it is checksummed;
- area 2 (RX + align): a paxos lease named `rindex_lease` that serialises changes;
- slot i (RX + (2 + i) align): a resource area, named by entry i while the entry is set.

Invariants:
- an entry with offset 0 is free; a set entry's offset is its slot's (sanlock writes the slot's
  offset whatever the entry names);
- the header's lockspace name, sector size and ALIGN flag say which geometry the slots have;
  a header with another magic or major version is never read as an index.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from leasestore.errors import (
    BadRindexMagic,
    BadRindexVersion,
    CorruptRecord,
    RindexOffset,
)
from leasestore.ondisk.geometry import ALIGN_FLAGS, Geometry
from leasestore.ondisk.names import decode_name, encode_name

RINDEX_MAGIC = 0x01042018
RINDEX_VERSION = 0x00010002
HEADER_B = 80
ENTRY_B = 64
DEFAULT_MAX_RESOURCES = 4096
LEASE_NAME = "rindex_lease"
_HEADER = struct.Struct("<IIIIIIQ48s")
_ENTRY = struct.Struct("<QII48s")
_MAX_ENTRIES = {(512, 1 << 20): 16000, (4096, 1 << 20): 16000, (4096, 2 << 20): 32000,
                (4096, 4 << 20): 64000, (4096, 8 << 20): 128000}
"""How many entries fit in area 1 after its first sector, per geometry (sanlock's limits)."""


@dataclass(frozen=True)
class RindexHeader:
    lockspace: str
    geometry: Geometry
    rx_offset_b: int
    max_resources: int = DEFAULT_MAX_RESOURCES

    def encode(self) -> bytes:
        raw = _HEADER.pack(RINDEX_MAGIC, RINDEX_VERSION, ALIGN_FLAGS[self.geometry.align_size] >> 4,
                           self.geometry.sector_size, self.max_resources, 0, self.rx_offset_b,
                           encode_name(self.lockspace))
        return raw.ljust(HEADER_B, b"\0")

    @property
    def slots(self) -> int:
        """How many slots the index has entries for."""
        return min(self.max_resources, _MAX_ENTRIES[(self.geometry.sector_size,
                                                     self.geometry.align_size)])

    def slot_offset(self, slot: int) -> int:
        return self.rx_offset_b + (2 + slot) * self.geometry.align_size

    def slot_of(self, offset_b: int) -> int:
        """The slot whose resource area starts at offset_b (RindexOffset if none)."""
        align = self.geometry.align_size
        first = self.rx_offset_b + 2 * align
        slot, rest = divmod(offset_b - first, align)
        if offset_b < first or rest or slot >= self.slots:
            raise RindexOffset(f"offset {offset_b} is no slot of the index at "
                               f"{self.rx_offset_b}")
        return slot

    def entry_at(self, slot: int) -> int:
        """Byte offset of entry `slot` from the start of area 1."""
        return self.geometry.sector_size + ENTRY_B * slot

    @property
    def lease_offset_b(self) -> int:
        return self.rx_offset_b + self.geometry.align_size


def decode_header(raw: bytes) -> RindexHeader:
    magic, version, flags, sector_size, max_resources, _unused, rx_offset, name = (
        _HEADER.unpack(raw[:_HEADER.size]))
    if magic != RINDEX_MAGIC:
        raise BadRindexMagic("rindex header", f"magic {magic:#010x}, expected "
                                              f"{RINDEX_MAGIC:#010x}")
    if version >> 16 != RINDEX_VERSION >> 16:
        raise BadRindexVersion("rindex header", f"version {version:#010x}")
    align = next((size for size, bit in ALIGN_FLAGS.items() if bit >> 4 == flags), None)
    if align is None:
        raise CorruptRecord("rindex header", f"align flags {flags:#x}")
    return RindexHeader(decode_name(name), Geometry(sector_size, align), rx_offset,
                        max_resources)


@dataclass(frozen=True)
class RindexEntry:
    name: str = ""
    offset_b: int = 0
    flags: int = 0

    @property
    def free(self) -> bool:
        return self.offset_b == 0

    def encode(self) -> bytes:
        return _ENTRY.pack(self.offset_b, self.flags, 0, encode_name(self.name))


def decode_entries(area: bytes, header: RindexHeader) -> list[RindexEntry]:
    """Every slot's entry, from area 1 as read."""
    found = []
    for slot in range(header.slots):
        at = header.entry_at(slot)
        offset_b, flags, _unused, name = _ENTRY.unpack(area[at:at + ENTRY_B])
        found.append(RindexEntry(decode_name(name), offset_b, flags))
    return found


def area1_image(header: RindexHeader, entries: list[RindexEntry] | None = None) -> bytes:
    """Area 1 as format (no entries) or rebuild writes it."""
    image = bytearray(header.geometry.align_size)
    image[:HEADER_B] = header.encode()
    for slot, entry in enumerate(entries or []):
        at = header.entry_at(slot)
        image[at:at + ENTRY_B] = entry.encode()
    return bytes(image)
