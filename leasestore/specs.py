"""sanlock's text forms for lockspaces and resources.

lockspace: `NAME:HOST_ID:PATH:OFFSET`;
resource: `LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...][:LVER|:SH]`;
resource index: `LOCKSPACE:PATH:OFFSET`, an entry `NAME[:OFFSET]` (or `:OFFSET`).
A colon inside a path is written `\\:`. Names are at most 48 bytes; offsets are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from leasestore.errors import UsageError
from leasestore.ondisk.names import encode_name
from leasestore.units import is_decimal

MAX_PATH_B = 1024


def split_escaped(text: str) -> list[str]:
    """Split on ':' except where escaped as '\\:' (the escape is removed)."""
    parts, current, i = [], [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] == ":":
            current.append(":")
            i += 2
            continue
        if text[i] == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def escape_path(path: str) -> str:
    return path.replace(":", "\\:")


def _int_field(value: str, what: str, text: str) -> int:
    if not is_decimal(value):
        raise UsageError(f"{what} must be a non-negative integer in {text!r}, not {value!r}")
    return int(value)


def _path_field(value: str, text: str) -> str:
    if not value:
        raise UsageError(f"empty path in {text!r}")
    if len(value.encode()) > MAX_PATH_B:
        raise UsageError(f"path longer than {MAX_PATH_B} bytes in {text!r}")
    return value


@dataclass(frozen=True)
class LockspaceSpec:
    name: str
    host_id: int
    path: str
    offset_b: int

    @classmethod
    def parse(cls, text: str) -> LockspaceSpec:
        parts = split_escaped(text)
        if len(parts) != 4:
            raise UsageError(f"lockspace must be NAME:HOST_ID:PATH:OFFSET, not {text!r}")
        name, host_id, path, offset = parts
        encode_name(name)
        if not name:
            raise UsageError(f"empty lockspace name in {text!r}")
        return cls(
            name,
            _int_field(host_id, "host_id", text),
            _path_field(path, text),
            _int_field(offset, "offset", text),
        )

    def __str__(self) -> str:
        return f"{self.name}:{self.host_id}:{escape_path(self.path)}:{self.offset_b}"


@dataclass(frozen=True)
class ResourceSpec:
    lockspace: str
    name: str
    disks: tuple[tuple[str, int], ...]
    lver: int | None = None
    shared: bool = False

    @classmethod
    def parse(cls, text: str) -> ResourceSpec:
        parts = split_escaped(text)
        lver: int | None = None
        shared = False
        if len(parts) % 2 == 1 and len(parts) >= 5:
            suffix = parts.pop()
            if suffix == "SH":
                shared = True
            else:
                lver = _int_field(suffix, "lver", text)
        if len(parts) < 4 or len(parts) % 2:
            raise UsageError(
                f"resource must be LOCKSPACE:NAME:PATH:OFFSET[:LVER|:SH], not {text!r}"
            )
        lockspace, name = parts[0], parts[1]
        for field in (lockspace, name):
            if not field:
                raise UsageError(f"empty name in {text!r}")
            encode_name(field)
        disks = tuple(
            (_path_field(parts[i], text), _int_field(parts[i + 1], "offset", text))
            for i in range(2, len(parts), 2)
        )
        if len(disks) > 4:
            raise UsageError(f"at most 4 disks per resource in {text!r}")
        return cls(lockspace, name, disks, lver, shared)

    @property
    def path(self) -> str:
        return self.disks[0][0]

    @property
    def offset_b(self) -> int:
        return self.disks[0][1]

    def __str__(self) -> str:
        disks = ":".join(f"{escape_path(p)}:{o}" for p, o in self.disks)
        suffix = ":SH" if self.shared else (f":{self.lver}" if self.lver is not None else "")
        return f"{self.lockspace}:{self.name}:{disks}{suffix}"


@dataclass(frozen=True)
class RindexSpec:
    lockspace: str
    path: str
    offset_b: int

    @classmethod
    def parse(cls, text: str) -> RindexSpec:
        parts = split_escaped(text)
        if len(parts) != 3 or not parts[0]:
            raise UsageError(f"resource index must be LOCKSPACE:PATH:OFFSET, not {text!r}")
        encode_name(parts[0])
        return cls(parts[0], _path_field(parts[1], text), _int_field(parts[2], "offset", text))


def parse_rindex_entry(text: str) -> tuple[str, int]:
    """`NAME`, `NAME:OFFSET` or `:OFFSET` as (name, offset; 0 when not given)."""
    name, sep, offset = text.rpartition(":") if ":" in text else (text, "", "")
    if sep and not name and not offset:
        raise UsageError(f"entry must be NAME[:OFFSET], not {text!r}")
    encode_name(name)
    return name, _int_field(offset, "offset", text) if sep else 0
