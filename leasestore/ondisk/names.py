"""48-byte name fields: NUL-padded, not necessarily NUL-terminated, compared up to the first NUL."""

from __future__ import annotations

from leasestore.errors import UsageError

NAME_SIZE = 48


def encode_name(name: str) -> bytes:
    """`name` as its 48-byte on-disk field. Raises UsageError if it does not fit."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > NAME_SIZE:
        raise UsageError(f"name longer than {NAME_SIZE} bytes: {name!r}")
    if b"\0" in raw:
        raise UsageError(f"name contains a NUL byte: {name!r}")
    return raw.ljust(NAME_SIZE, b"\0")


def decode_name(field: bytes) -> str:
    """The name a 48-byte field holds (bytes up to the first NUL, like strncmp sees it)."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
