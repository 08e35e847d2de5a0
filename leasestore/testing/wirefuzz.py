"""Hostile messages for the daemon's socket (sanlock's client protocol): every command
malformed in every field.

Each command starts from a baseline whose fields are valid but name things that do not exist
(a lockspace never added, a path under /nonexistent), so that a message which happens to be
well-formed still changes nothing. From each baseline come: hostile header fields (flags,
data, data2, length), payloads cut short, hostile values in every payload field (full-length
names without NUL, non-UTF-8 bytes, unterminated paths, out-of-range ids, counts and offsets),
random payload bytes; then headers sanlock ignores (bad magic, a newer major version, unknown
commands). SHUTDOWN and SHUTDOWN_WAIT are left out (a forced one is no malformation), and no
message targets a real pid: data2 is SELF, 0, 1 or beyond any pid.

`framed` messages keep their payload's framing (every struct complete and counted as sent),
so a reply can be awaited for each on one connection; the others are meant for a connection
of their own, closed for writing after the message.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import leasestore.daemon.sanlock_proto as sp
from leasestore.daemon.sanlock_proto import Cmd, Header

FUZZ_LOCKSPACE = "fuzz-never-added"
FUZZ_PATH = "/nonexistent/leasestore-fuzz"
NO_SUCH_PID = 0x7FFFFFF0
"""Above any pid Linux hands out (pid_max is at most 2^22)."""

LEFT_OUT = frozenset({Cmd.SHUTDOWN, Cmd.SHUTDOWN_WAIT})


@dataclass(frozen=True)
class Message:
    what: str
    raw: bytes
    cmd: int
    framed: bool
    """Complete, with counts as sent: the daemon answers it (unless it ignores the header)."""


def _disk(path: str = FUZZ_PATH, offset: int = 0) -> bytes:
    return sp.Disk(path, offset).encode()


def _lockspace(name: str = FUZZ_LOCKSPACE, host_id: int = 1) -> bytes:
    return sp.LockspaceStruct(name, host_id, 0, sp.Disk(FUZZ_PATH, 0)).encode()


def _resource(num_disks: int = 1) -> bytes:
    return sp.Resource(FUZZ_LOCKSPACE, "fuzz-res", num_disks=num_disks).encode()


def _killpath() -> bytes:
    return sp.fixed("/nonexistent/helper", sp.HELPER_PATH_LEN) + sp.fixed("a b", 128)


BASELINES: dict[Cmd, tuple[int, int, int, bytes]] = {
    # cmd: (cmd_flags, data, data2, payload)
    Cmd.REGISTER: (0, 0, 0, b""),
    Cmd.ADD_LOCKSPACE: (0, 1, 0, _lockspace()),
    Cmd.REM_LOCKSPACE: (0, 0, 0, _lockspace()),
    Cmd.STATUS: (0, 0, 0, b""),
    Cmd.LOG_DUMP: (0, 0, 0, b""),
    Cmd.ACQUIRE: (0, 1, sp.SELF, _resource() + _disk() + bytes(sp.OPTIONS_B)),
    Cmd.RELEASE: (0, 1, sp.SELF, _resource()),
    Cmd.INQUIRE: (0, 0, sp.SELF, b""),
    Cmd.RESTRICT: (0, 0, sp.SELF, b""),
    Cmd.REQUEST: (sp.REQUEST_NEXT_LVER, 2, 0, _resource() + _disk()),
    Cmd.ALIGN: (0, 0, 0, _disk()),
    Cmd.EXAMINE_LOCKSPACE: (0, 0, 0, _lockspace()),
    Cmd.EXAMINE_RESOURCE: (0, 0, 0, _resource()),
    Cmd.HOST_STATUS: (0, 0, 0, _lockspace()),
    Cmd.INQ_LOCKSPACE: (0, 0, 0, _lockspace()),
    Cmd.KILLPATH: (0, 0, sp.SELF, _killpath()),
    Cmd.WRITE_LOCKSPACE: (0, 0, 1, _lockspace()),
    Cmd.WRITE_RESOURCE: (0, 0, 0, _resource() + _disk()),
    Cmd.READ_LOCKSPACE: (0, 0, 0, _lockspace()),
    Cmd.READ_RESOURCE: (0, 0, 0, _resource() + _disk()),
    Cmd.GET_LOCKSPACES: (0, 0, 0, b""),
    Cmd.GET_HOSTS: (0, 0, 0, _lockspace()),
    Cmd.READ_RESOURCE_OWNERS: (0, 0, 0, _resource() + _disk()),
    Cmd.SET_LVB: (0, 0, 0, _resource() + b"lvb"),
    Cmd.GET_LVB: (0, 0, 0, _resource()),
    Cmd.CONVERT: (0, 0, sp.SELF, _resource()),
    Cmd.VERSION: (0, 0, 0, b""),
    Cmd.REG_EVENT: (0, 0, 0, _lockspace() + bytes(32)),
    Cmd.END_EVENT: (0, 0, 0, _lockspace()),
    Cmd.SET_EVENT: (0, 0, 0, _lockspace() + bytes(32)),
    Cmd.SET_CONFIG: (0, 1, 0, _lockspace()),
    Cmd.RENEWAL: (0, 0, 0, _lockspace()),
    Cmd.FORMAT_RINDEX: (0, 0, 0, bytes(1104)),
    Cmd.UPDATE_RINDEX: (0, 0, 0, bytes(1104 + 64)),
    Cmd.LOOKUP_RINDEX: (0, 0, 0, bytes(1104 + 64)),
    Cmd.CREATE_RESOURCE: (0, 0, 0, bytes(1104 + 64)),
    Cmd.DELETE_RESOURCE: (0, 0, 0, bytes(1104 + 64)),
    Cmd.REBUILD_RINDEX: (0, 0, 0, bytes(1104)),
}

HOSTILE_FLAGS = [0xFFFFFFFF, 0x1, 0x2, 0x4, 0x8, 0x10, 0x20000, 0x80000000]
HOSTILE_DATA = [-1, 0, 9, 4, 0x7FFFFFFF, -0x80000000, 1 << 30]
HOSTILE_DATA2 = [0, 1, sp.SELF, NO_SUCH_PID, 0x80000000]
HOSTILE_LENGTHS = [0, 31, 33, 0xFFFFFFFF, 1 << 20]

# Payload field edits: (what, offset within a struct kind, bytes)
_NAME_EDITS = [b"x" * 48, b"\xff\xfe" * 24, b"\0" * 48, b"../../" + b"\0" * 42]
_U64_EDITS = [struct.pack("=Q", v) for v in (0, 2000, 2001, 1 << 63, (1 << 64) - 1, 511)]
_U32_EDITS = [struct.pack("=I", v) for v in (0, 2, 5, 0x7FFFFFFF, 0xFFFFFFFF)]
_PATH_EDITS = [b"/nonexistent/" + b"p" * 1011, b"\0" * 1024,
               b"/nonexistent/\xff\xfe" + b"\0" * 1009]


def _field_edits(cmd: Cmd, payload: bytes) -> Iterator[tuple[str, bytes]]:
    """Payloads with one field replaced, for the structs this command's baseline carries."""
    def at(offset: int, edit: bytes) -> bytes:
        return payload[:offset] + edit + payload[offset + len(edit):]

    kinds = _kinds(cmd)
    base = 0
    for kind in kinds:
        if kind == "lockspace":
            for edit in _NAME_EDITS:
                yield "lockspace name", at(base, edit)
            for edit in _U64_EDITS:
                yield "host_id", at(base + 48, edit)
            for edit in _PATH_EDITS:
                yield "path", at(base + 64, edit)
            for edit in _U64_EDITS:
                yield "offset", at(base + 64 + 1024, edit)
            base += sp.LOCKSPACE_B
        elif kind == "resource":
            for edit in _NAME_EDITS:
                yield "resource lockspace", at(base, edit)
                yield "resource name", at(base + 48, edit)
            for edit in _U64_EDITS:
                yield "lver", at(base + 96, edit)
            for edit in _U32_EDITS:
                yield "resource flags", at(base + 120, edit)
            base += sp.RESOURCE_B
        elif kind == "disk":
            for edit in _PATH_EDITS:
                yield "disk path", at(base, edit)
            for edit in _U64_EDITS:
                yield "disk offset", at(base + 1024, edit)
            base += sp.DISK_B
        elif kind == "killpath":
            yield "killpath unterminated", b"/" * 128 + b"a\\" * 64
            yield "killpath empty", bytes(256)
            base += sp.KILLPATH_B


def _kinds(cmd: Cmd) -> list[str]:
    if cmd in (Cmd.ACQUIRE, Cmd.REQUEST, Cmd.WRITE_RESOURCE, Cmd.READ_RESOURCE,
               Cmd.READ_RESOURCE_OWNERS):
        return ["resource", "disk"]
    if cmd in (Cmd.RELEASE, Cmd.EXAMINE_RESOURCE, Cmd.GET_LVB, Cmd.CONVERT):
        return ["resource"]
    if cmd == Cmd.ALIGN:
        return ["disk"]
    if cmd == Cmd.KILLPATH:
        return ["killpath"]
    payload = BASELINES[cmd][3]
    return ["lockspace"] if len(payload) >= sp.LOCKSPACE_B and cmd < Cmd.FORMAT_RINDEX else []


def _message(cmd: int, flags: int, data: int, data2: int, payload: bytes,
             length: int | None = None, magic: int = sp.SM_MAGIC,
             version: int = sp.SM_PROTO) -> bytes:
    size = sp.HEADER_B + len(payload) if length is None else length
    return Header(magic, version, cmd, flags, size & 0xFFFFFFFF, 0, data, data2).encode() + payload


def hostile_messages(seed: int = 0) -> Iterator[Message]:
    """Every hostile message, replayable from `seed` (which only drives the random payloads)."""
    rng = random.Random(seed)
    for cmd, (flags, data, data2, payload) in BASELINES.items():
        name = cmd.name
        for value in HOSTILE_FLAGS:
            yield Message(f"{name} cmd_flags {value:#x}", _message(cmd, value, data, data2,
                                                                   payload), cmd, False)
        for value in HOSTILE_DATA:
            yield Message(f"{name} data {value}", _message(cmd, flags, value, data2, payload),
                          cmd, False)
        for value in HOSTILE_DATA2:
            yield Message(f"{name} data2 {value:#x}", _message(cmd, flags, data, value,
                                                               payload), cmd, True)
        for value in HOSTILE_LENGTHS:
            # (not framed: what a refused request leaves unread is drained by its length)
            yield Message(f"{name} length {value:#x}", _message(cmd, flags, data, data2,
                                                                payload, value), cmd, False)
        for cut in sorted({0, 1, len(payload) // 2, len(payload) - 1}):
            if 0 <= cut < len(payload):
                yield Message(f"{name} payload cut at {cut}",
                              _message(cmd, flags, data, data2, payload[:cut]), cmd, False)
        for what, edited in _field_edits(cmd, payload):
            yield Message(f"{name} {what}", _message(cmd, flags, data, data2, edited), cmd,
                          len(edited) == len(payload))
        if payload:
            noise = bytes(rng.getrandbits(8) for _ in range(len(payload)))
            yield Message(f"{name} random payload", _message(cmd, flags, data, data2, noise),
                          cmd, False)
    yield Message("bad magic", _message(Cmd.STATUS, 0, 0, 0, b"", magic=0x04282011),
                  Cmd.STATUS, False)
    yield Message("newer major version",
                  _message(Cmd.STATUS, 0, 0, 0, b"", version=0x00020000), Cmd.STATUS, False)
    for unknown in (0, 41, 99, 0x7FFFFFFF, 0xFFFFFFFF):
        yield Message(f"unknown cmd {unknown:#x}", _message(unknown, 0, 0, 0, b""), unknown,
                      False)
