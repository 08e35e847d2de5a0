"""The host bitmap of a delta-lease sector (bytes 256..511): bit h-1 set = "I have news for host h".

Host h is byte (h-1)//8, bit (h-1)%8, least significant bit first. 2048 bits.
"""

from __future__ import annotations

from leasestore.ondisk.geometry import BITMAP_OFFSET_B, BITMAP_SIZE_B

MAX_BITMAP_HOSTS = BITMAP_SIZE_B * 8


def _locate(host_id: int) -> tuple[int, int]:
    if not 1 <= host_id <= MAX_BITMAP_HOSTS:
        raise ValueError(f"host_id {host_id} outside the bitmap (1..{MAX_BITMAP_HOSTS})")
    return (host_id - 1) // 8, 1 << ((host_id - 1) % 8)


def set_host_bits(host_ids: set[int] | frozenset[int]) -> bytes:
    """A 256-byte bitmap with exactly these hosts' bits set."""
    bitmap = bytearray(BITMAP_SIZE_B)
    for host_id in host_ids:
        index, mask = _locate(host_id)
        bitmap[index] |= mask
    return bytes(bitmap)


def host_bit_is_set(sector: bytes | memoryview, host_id: int) -> bool:
    """Whether a delta-lease sector's bitmap has host_id's bit set."""
    index, mask = _locate(host_id)
    return bool(sector[BITMAP_OFFSET_B + index] & mask)


def hosts_in_bitmap(sector: bytes | memoryview) -> list[int]:
    """Every host_id whose bit is set in a delta-lease sector's bitmap, ascending."""
    raw = bytes(sector[BITMAP_OFFSET_B:BITMAP_OFFSET_B + BITMAP_SIZE_B])
    return [
        byte_index * 8 + bit + 1
        for byte_index, value in enumerate(raw)
        if value
        for bit in range(8)
        if value & (1 << bit)
    ]
