"""Paxos dblocks (one sector per host in a resource area) and the mode block inside them.

dblock: mbal, bal, inp (owner host_id), inp2 (its generation), inp3 (its timestamp), lver, then a
CRC over bytes [0, 48) and flags (0x1 RELEASED). An all-zero dblock is valid (never written).
The mode block sits at byte 128 of the same sector: flags (0x1 SHARED), 4 bytes padding, generation.
A plain dblock write is a whole sector, so it clears the writer's own mode block.
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import Int32ul, Int64ul, Padding, Struct

from leasestore.errors import BadDblockChecksum, TruncatedRecord
from leasestore.ondisk.checksum import sanlock_crc
from leasestore.ondisk.geometry import MODE_BLOCK_OFFSET_B, pad_sector
from leasestore.ondisk.layout import Packer

DBLOCK_FLAG_RELEASED = 0x1
MODE_FLAG_SHARED = 0x1

DBLOCK_LAYOUT = Struct(
    "mbal" / Int64ul,
    "bal" / Int64ul,
    "inp" / Int64ul,
    "inp2" / Int64ul,
    "inp3" / Int64ul,
    "lver" / Int64ul,
    "checksum" / Int32ul,
    "flags" / Int32ul,
)
DBLOCK_SIZE = DBLOCK_LAYOUT.sizeof()
DBLOCK_CHECKSUM_OFFSET = 48

MODE_BLOCK_LAYOUT = Struct("flags" / Int32ul, Padding(4), "generation" / Int64ul)
MODE_BLOCK_SIZE = MODE_BLOCK_LAYOUT.sizeof()
_DBLOCK_PACKER = Packer(DBLOCK_LAYOUT)
_MODE_BLOCK_PACKER = Packer(MODE_BLOCK_LAYOUT)


@dataclass(frozen=True)
class Dblock:
    mbal: int = 0
    bal: int = 0
    inp: int = 0
    inp2: int = 0
    inp3: int = 0
    lver: int = 0
    flags: int = 0

    @property
    def released(self) -> bool:
        return bool(self.flags & DBLOCK_FLAG_RELEASED)

    def encode(self) -> bytes:
        raw = bytearray(_DBLOCK_PACKER.pack({**vars(self), "checksum": 0}))
        crc = sanlock_crc(raw[:DBLOCK_CHECKSUM_OFFSET])
        raw[DBLOCK_CHECKSUM_OFFSET:DBLOCK_CHECKSUM_OFFSET + 4] = crc.to_bytes(4, "little")
        return bytes(raw)


@dataclass(frozen=True)
class ModeBlock:
    flags: int = 0
    generation: int = 0

    @property
    def shared(self) -> bool:
        return bool(self.flags & MODE_FLAG_SHARED)

    def encode(self) -> bytes:
        return _MODE_BLOCK_PACKER.pack({"flags": self.flags, "generation": self.generation})


def dblock_checksum_ok(raw: bytes | memoryview) -> bool:
    """Whether the dblock at the start of `raw` verifies: never written (checksum, mbal, bal,
    inp and lver all zero) or carrying a matching checksum."""
    stored = int.from_bytes(raw[DBLOCK_CHECKSUM_OFFSET:DBLOCK_CHECKSUM_OFFSET + 4], "little")
    never_written = stored == 0 and not any(raw[0:24]) and not any(raw[40:48])
    return never_written or sanlock_crc(raw[:DBLOCK_CHECKSUM_OFFSET]) == stored


def decode_dblock(data: bytes | memoryview) -> Dblock:
    """Decode a dblock; raises BadDblockChecksum unless the checksum matches or it is all zero."""
    raw = bytes(data[:DBLOCK_SIZE])
    if len(raw) < DBLOCK_SIZE:
        raise TruncatedRecord("dblock", f"{len(raw)} bytes, need {DBLOCK_SIZE}")
    parsed = _DBLOCK_PACKER.unpack(raw)
    if not dblock_checksum_ok(raw):
        crc = sanlock_crc(raw[:DBLOCK_CHECKSUM_OFFSET])
        raise BadDblockChecksum(
            "dblock", f"checksum mismatch: stored {parsed['checksum']:#010x}, computed {crc:#010x}"
        )
    del parsed["checksum"]
    return Dblock(**parsed)


def decode_mode_block(sector: bytes | memoryview) -> ModeBlock:
    """The mode block of a dblock sector (no checksum: any bytes decode)."""
    raw = bytes(sector[MODE_BLOCK_OFFSET_B:MODE_BLOCK_OFFSET_B + MODE_BLOCK_SIZE])
    if len(raw) < MODE_BLOCK_SIZE:
        raise TruncatedRecord("mode block", f"{len(raw)} bytes, need {MODE_BLOCK_SIZE}")
    return ModeBlock(**_MODE_BLOCK_PACKER.unpack(raw))


def encode_dblock_sector(
    dblock: Dblock, sector_size: int, mode: ModeBlock | None = None
) -> bytes:
    """A whole dblock sector; the mode block is zero unless given."""
    head = dblock.encode().ljust(MODE_BLOCK_OFFSET_B, b"\0")
    if mode is not None:
        head += mode.encode()
    return pad_sector(head, sector_size)
