"""An in-memory shared disk. Writes are applied whole sectors at a time by the scheduler, which
decides when (and, for torn writes, in what order) each sector lands."""

from __future__ import annotations


class SimDisk:
    def __init__(self, size_b: int, sector_size: int = 512, name: str = "disk") -> None:
        if size_b % sector_size:
            raise ValueError("disk size must be a whole number of sectors")
        self.name = name
        self.sector_size = sector_size
        self.data = bytearray(size_b)
        self.writes_landed = 0

    @property
    def size_b(self) -> int:
        return len(self.data)

    def check(self, offset_b: int, length_b: int) -> None:
        if offset_b % self.sector_size or length_b % self.sector_size or length_b <= 0:
            raise ValueError(f"unaligned I/O at {offset_b} of {length_b} bytes")
        if offset_b + length_b > self.size_b:
            raise ValueError(f"I/O beyond the end of {self.name}")

    def read(self, offset_b: int, length_b: int) -> bytes:
        self.check(offset_b, length_b)
        return bytes(memoryview(self.data)[offset_b:offset_b + length_b])

    def land(self, offset_b: int, data: bytes) -> None:
        self.check(offset_b, len(data))
        self.data[offset_b:offset_b + len(data)] = data
        self.writes_landed += 1

    def corrupt(self, offset_b: int, byte_index: int) -> None:
        """Flip one byte of the sector at offset_b (a media or stray-write error)."""
        self.data[offset_b + byte_index] ^= 0xFF
