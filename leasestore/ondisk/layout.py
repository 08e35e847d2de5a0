"""Fast codecs derived from the construct layouts, so that each record's layout is written once.

The construct `Struct`s in the record modules are the readable specification. `Packer` turns one
into a `struct.Struct` producing the same bytes (a parse or build costs a few microseconds instead
of tens), and `numpy_fields` into the field list of a numpy structured dtype for bulk views.
Only little-endian integers, `Bytes(n)` and `Padding(n)` occur in sanlock's records.
"""

from __future__ import annotations

import struct
from typing import Any

from construct import Bytes, FormatField, Padded, Renamed, Struct

_NUMPY_FOR_STRUCT = {"B": "u1", "H": "<u2", "L": "<u4", "I": "<u4", "Q": "<u8"}


def _parts(layout: Struct) -> list[tuple[str | None, str, int]]:
    """(field name or None for padding, struct code, size) of each subcon, in order."""
    parts: list[tuple[str | None, str, int]] = []
    for sub in layout.subcons:
        name = sub.name if isinstance(sub, Renamed) else None
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        if isinstance(inner, FormatField) and inner.fmtstr[0] == "<":
            code = inner.fmtstr[1:]
        elif isinstance(inner, Bytes):
            code = f"{inner.sizeof()}s"
        elif isinstance(inner, Padded) and name is None:
            code = f"{inner.sizeof()}x"
        else:
            raise TypeError(f"layout field {name!r}: {type(inner).__name__} has no fixed codec")
        parts.append((name, code, inner.sizeof()))
    return parts


class Packer:
    """A layout's named fields packed and unpacked in order, with the layout's exact bytes."""

    def __init__(self, layout: Struct) -> None:
        parts = _parts(layout)
        self.names: tuple[str, ...] = tuple(name for name, _, _ in parts if name is not None)
        self.codec = struct.Struct("<" + "".join(code for _, code, _ in parts))
        assert self.codec.size == layout.sizeof()

    def pack(self, fields: dict[str, Any]) -> bytes:
        """The record's bytes; every named field must be given."""
        return self.codec.pack(*(fields[name] for name in self.names))

    def unpack(self, raw: bytes | memoryview) -> dict[str, Any]:
        """Field values from the first `size` bytes of `raw`."""
        return dict(zip(self.names, self.codec.unpack_from(raw), strict=True))

    @property
    def size(self) -> int:
        return self.codec.size


def numpy_fields(
    layout: Struct, base_offset: int = 0, prefix: str = ""
) -> tuple[tuple[str, str, int], ...]:
    """(prefix + name, numpy format, byte offset) of each named field, for a structured dtype."""
    fields = []
    offset = base_offset
    for name, code, size in _parts(layout):
        if name is not None:
            fmt = f"S{size}" if code.endswith("s") else _NUMPY_FOR_STRUCT[code]
            fields.append((prefix + name, fmt, offset))
        offset += size
    return tuple(fields)
