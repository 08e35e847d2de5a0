"""sanlock's checksum: CRC-32C (Castagnoli, reflected), register seeded 0xFFFFFFFE, no final xor.

It covers the little-endian on-disk bytes: [0, 168) of a leader, [0, 48) of a dblock.
"""

from __future__ import annotations

from collections.abc import Callable

import crcmod

_crc: Callable[[bytes], int] = crcmod.mkCrcFun(
    0x11EDC6F41, initCrc=0xFFFFFFFE, rev=True, xorOut=0
)


def sanlock_crc(data: bytes | bytearray | memoryview) -> int:
    """The 32-bit checksum sanlock stores for `data`."""
    return int(_crc(bytes(data)))
