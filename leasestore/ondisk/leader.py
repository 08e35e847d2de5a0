"""The leader record: first 200 bytes of a delta-lease sector and of a paxos lease's sector 0.

Checksum: CRC over bytes [0, 168), stored at 168. Readers accept any minor version of the right
major. Delta sectors carry a 256-byte host bitmap at byte 256 (see `bitmap`); everything else in a
sector is zero. `decode` never returns a record whose magic, major version or checksum is wrong: it
raises the matching `CorruptRecord` subclass instead, so a damaged sector can never look free.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from enum import IntEnum

from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

from leasestore.errors import BadChecksum, BadMagic, BadVersion, TruncatedRecord
from leasestore.ondisk.checksum import sanlock_crc
from leasestore.ondisk.geometry import BITMAP_OFFSET_B, Geometry, pad_sector
from leasestore.ondisk.layout import Packer
from leasestore.ondisk.names import decode_name, encode_name


class LeaderMagic(IntEnum):
    DELTA = 0x12212010
    PAXOS = 0x06152010
    PAXOS_CLEAR = 0x11282016


DELTA_VERSION = 0x00030004
PAXOS_VERSION = 0x00060004
_MAJOR_MASK = 0xFFFF0000
_VERSION_FOR_MAGIC = {
    LeaderMagic.DELTA: DELTA_VERSION,
    LeaderMagic.PAXOS: PAXOS_VERSION,
    LeaderMagic.PAXOS_CLEAR: PAXOS_VERSION,
}

_KIND_FOR_MAGIC: dict[int, str] = {
    LeaderMagic.DELTA: "delta",
    LeaderMagic.PAXOS: "paxos",
    LeaderMagic.PAXOS_CLEAR: "paxos-cleared",
}

FLAG_SHORT_HOLD = 0x1
LEADER_SIZE = 200
LEADER_CHECKSUM_OFFSET = 168
LEADER_COMPARE_LEN = 152
"""Bytes compared to decide whether a leader changed, excluding the timestamp and after."""

LEADER_LAYOUT = Struct(
    "magic" / Int32ul,
    "version" / Int32ul,
    "flags" / Int32ul,
    "sector_size" / Int32ul,
    "num_hosts" / Int64ul,
    "max_hosts" / Int64ul,
    "owner_id" / Int64ul,
    "owner_generation" / Int64ul,
    "lver" / Int64ul,
    "space_name" / Bytes(48),
    "resource_name" / Bytes(48),
    "timestamp" / Int64ul,
    "unused1" / Int64ul,
    "checksum" / Int32ul,
    "unused2" / Int16ul,
    "io_timeout" / Int16ul,
    "write_id" / Int64ul,
    "write_generation" / Int64ul,
    "write_timestamp" / Int64ul,
)
assert LEADER_LAYOUT.sizeof() == LEADER_SIZE
_LEADER_PACKER = Packer(LEADER_LAYOUT)
_FIELD_NAMES: tuple[str, ...] = ()


FIRE_TIMEOUT_TAG = 0x4C534657
"""High half of `unused1` in a leasestore host's delta leader ("LSFW"): the low half is that
host's watchdog_fire_timeout in milliseconds. sanlock writes 0 there and ignores the field."""


def fire_timeout_word(fire_timeout_s: float) -> int:
    """The `unused1` value that publishes our watchdog_fire_timeout."""
    return (FIRE_TIMEOUT_TAG << 32) | min(0xFFFFFFFF, round(fire_timeout_s * 1000))


def published_fire_timeout_s(unused1: int) -> float:
    """The fire timeout a delta leader's `unused1` publishes; 0.0 if none (a sanlock host)."""
    if unused1 >> 32 != FIRE_TIMEOUT_TAG:
        return 0.0
    return (unused1 & 0xFFFFFFFF) / 1000


@dataclass(frozen=True)
class Leader:
    """A decoded leader. `resource_name` is the owner's host name in a delta lease.

    Invariant: the fields fit their on-disk widths; `encode()` computes the checksum.
    """

    magic: int
    version: int
    flags: int
    sector_size: int
    num_hosts: int
    max_hosts: int
    owner_id: int
    owner_generation: int
    lver: int
    space_name: str
    resource_name: str
    timestamp: int
    io_timeout: int
    write_id: int = 0
    write_generation: int = 0
    write_timestamp: int = 0
    unused1: int = 0
    unused2: int = 0

    @property
    def fire_timeout_s(self) -> float:
        """The watchdog_fire_timeout this delta leader's owner published (0.0: none)."""
        return published_fire_timeout_s(self.unused1)

    @property
    def kind(self) -> str:
        """'delta', 'paxos' or 'paxos-cleared'."""
        return _KIND_FOR_MAGIC.get(self.magic, "unknown")

    @property
    def is_free(self) -> bool:
        """Nobody holds it: timestamp 0 (released or never acquired)."""
        return self.timestamp == 0

    @property
    def short_hold(self) -> bool:
        return bool(self.flags & FLAG_SHORT_HOLD)

    def geometry(self) -> Geometry:
        """The geometry named by sector_size and the ALIGN flag (UsageError if invalid)."""
        return Geometry.from_leader_fields(self.sector_size, self.flags)

    def replace(self, **changes: object) -> Leader:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def encode(self) -> bytes:
        """The 200 on-disk bytes, checksum included (computed once per record: it is frozen)."""
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        fields = {name: getattr(self, name) for name in _FIELD_NAMES}
        fields["space_name"] = encode_name(self.space_name)
        fields["resource_name"] = encode_name(self.resource_name)
        fields["checksum"] = 0
        raw = bytearray(_LEADER_PACKER.pack(fields))
        crc = sanlock_crc(raw[:LEADER_CHECKSUM_OFFSET])
        raw[LEADER_CHECKSUM_OFFSET:LEADER_CHECKSUM_OFFSET + 4] = crc.to_bytes(4, "little")
        return bytes(raw)

    def compare_key(self) -> bytes:
        """The bytes sanlock compares to see whether a leader changed (all before timestamp)."""
        return self.encode()[:LEADER_COMPARE_LEN]


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Leader))


def decode_leader(data: bytes | memoryview, magics: tuple[int, ...] | None = None) -> Leader:
    """Decode and verify the leader at the start of `data`.

    `magics` restricts which record kinds are acceptable (default: any leader kind).
    Raises TruncatedRecord, BadMagic, BadVersion or BadChecksum; nothing else.
    """
    raw = bytes(data[:LEADER_SIZE])
    if len(raw) < LEADER_SIZE:
        raise TruncatedRecord("leader", f"{len(raw)} bytes, need {LEADER_SIZE}")
    parsed = _LEADER_PACKER.unpack(raw)
    magic, version = parsed["magic"], parsed["version"]
    allowed = magics if magics is not None else tuple(_VERSION_FOR_MAGIC)
    if magic not in allowed:
        names = "/".join(f"{m:#010x}" for m in allowed)
        raise BadMagic("leader", f"magic {magic:#010x}, expected {names}")
    expected_version = _VERSION_FOR_MAGIC[LeaderMagic(magic)]
    if version & _MAJOR_MASK != expected_version & _MAJOR_MASK:
        raise BadVersion(
            "leader", f"version {version:#010x}, expected major {expected_version >> 16}"
        )
    crc = sanlock_crc(raw[:LEADER_CHECKSUM_OFFSET])
    if crc != parsed["checksum"]:
        raise BadChecksum(
            "leader", f"checksum mismatch: stored {parsed['checksum']:#010x}, computed {crc:#010x}"
        )
    del parsed["checksum"]
    parsed["space_name"] = decode_name(parsed["space_name"])
    parsed["resource_name"] = decode_name(parsed["resource_name"])
    return Leader(**parsed)


def decode_leader_unverified(data: bytes | memoryview) -> Leader:
    """The leader fields at the start of `data` as they lie, checksum and magic not verified
    (for repair: `decode_leader` is the only reader whose result may be trusted)."""
    raw = bytes(data[:LEADER_SIZE])
    if len(raw) < LEADER_SIZE:
        raise TruncatedRecord("leader", f"{len(raw)} bytes, need {LEADER_SIZE}")
    parsed = _LEADER_PACKER.unpack(raw)
    del parsed["checksum"]
    parsed["space_name"] = bytes(parsed["space_name"]).split(b"\0", 1)[0].decode(
        "utf-8", "replace")
    parsed["resource_name"] = bytes(parsed["resource_name"]).split(b"\0", 1)[0].decode(
        "utf-8", "replace")
    return Leader(**parsed)


def encode_delta_sector(leader: Leader, sector_size: int, bitmap: bytes = b"") -> bytes:
    """A whole delta-lease sector: leader, zeros, the host bitmap at byte 256, zeros."""
    head = leader.encode().ljust(BITMAP_OFFSET_B, b"\0")
    return pad_sector(head + bitmap, sector_size)


def new_delta_leader(space_name: str, geometry: Geometry, io_timeout_s: int) -> Leader:
    """The free delta leader `direct init -s` writes in every host sector."""
    return Leader(
        magic=LeaderMagic.DELTA,
        version=DELTA_VERSION,
        flags=geometry.align_flag,
        sector_size=geometry.sector_size,
        num_hosts=0,
        max_hosts=1,
        owner_id=0,
        owner_generation=0,
        lver=0,
        space_name=space_name,
        resource_name="",
        timestamp=0,
        io_timeout=io_timeout_s,
    )


def new_paxos_leader(
    space_name: str, resource_name: str, geometry: Geometry, num_hosts: int = 0
) -> Leader:
    """The free paxos leader `direct init -r` writes (num_hosts 0 means max_hosts)."""
    return Leader(
        magic=LeaderMagic.PAXOS,
        version=PAXOS_VERSION,
        flags=geometry.align_flag,
        sector_size=geometry.sector_size,
        num_hosts=num_hosts or geometry.max_hosts,
        max_hosts=geometry.max_hosts,
        owner_id=0,
        owner_generation=0,
        lver=0,
        space_name=space_name,
        resource_name=resource_name,
        timestamp=0,
        io_timeout=0,
    )
