"""The request record (sector 1 of a paxos lease area): "whoever holds lver < L, give it up".

No checksum. force_mode: 0 none, 1 FORCE (SIGKILL the holder), 2 GRACEFUL (killpath or SIGTERM).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from construct import Int32ul, Int64ul, Padding, Struct

from leasestore.errors import BadRequestMagic, BadRequestVersion, TruncatedRecord
from leasestore.ondisk.layout import Packer

REQUEST_MAGIC = 0x08292011
REQUEST_VERSION = 0x00010001

REQUEST_LAYOUT = Struct(
    "magic" / Int32ul,
    "version" / Int32ul,
    "lver" / Int64ul,
    "force_mode" / Int32ul,
    Padding(4),
)
REQUEST_SIZE = REQUEST_LAYOUT.sizeof()
_REQUEST_PACKER = Packer(REQUEST_LAYOUT)


class ForceMode(IntEnum):
    NONE = 0
    FORCE = 1
    GRACEFUL = 2


@dataclass(frozen=True)
class Request:
    lver: int = 0
    force_mode: int = ForceMode.NONE
    magic: int = REQUEST_MAGIC
    version: int = REQUEST_VERSION

    def encode(self) -> bytes:
        return _REQUEST_PACKER.pack(vars(self))


def decode_request(data: bytes | memoryview) -> Request:
    """Decode a request record; raises BadRequestMagic/BadRequestVersion/TruncatedRecord."""
    raw = bytes(data[:REQUEST_SIZE])
    if len(raw) < REQUEST_SIZE:
        raise TruncatedRecord("request", f"{len(raw)} bytes, need {REQUEST_SIZE}")
    parsed = _REQUEST_PACKER.unpack(raw)
    magic, version = parsed["magic"], parsed["version"]
    if magic != REQUEST_MAGIC:
        raise BadRequestMagic(
            "request", f"magic {magic:#010x}, expected {REQUEST_MAGIC:#010x}"
        )
    if version & 0xFFFF0000 != REQUEST_VERSION & 0xFFFF0000:
        raise BadRequestVersion("request", f"version {version:#010x}")
    return Request(**parsed)
