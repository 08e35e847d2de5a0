"""On-disk records of sanlock 3.x, as frozen dataclasses with encode()/decode().

Every integer is little-endian; every record write is a whole, zero-padded sector.
"""
