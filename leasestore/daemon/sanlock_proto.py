"""sanlock's client socket protocol: message header, payload structs and constants.

Messages are C structs in host byte order with natural alignment (x86-64: little-endian), as
libsanlock sends them; every struct here has the byte size sanlock's has, and `decode_*` of
`encode_*` is the identity on every field it carries. Names are fixed-size NUL-padded arrays: a
48-byte name need not end in NUL, and decoding stops at the first NUL; names and paths must be
UTF-8 (ProtocolError otherwise: answered -EINVAL). Nothing here does I/O;
the server (sanlock_server.py) frames messages by these sizes and never by the header's length.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from leasestore.errors import ProtocolError

SM_MAGIC = 0x04282010
SM_PROTO = 0x00000001
SOCKET_NAME = "sanlock.sock"
RUN_DIR_ENV = "SANLOCK_RUN_DIR"
VERSION_WORD = 0x03080500
"""The sanlock release whose protocol we speak (3.8.5), as VERSION reports it."""

NAME_LEN = 48
PATH_LEN = 1024
MAX_RESOURCES = 8
MAX_DISKS = 4
HELPER_PATH_LEN = 128
HELPER_ARGS_LEN = 128
STATE_MAXSTR = 4096
SELF = 0xFFFFFFFF
"""data2 of a command acting for the connection it arrives on."""


class Cmd(enum.IntEnum):
    REGISTER = 1
    ADD_LOCKSPACE = 2
    REM_LOCKSPACE = 3
    SHUTDOWN = 4
    STATUS = 5
    LOG_DUMP = 6
    ACQUIRE = 7
    RELEASE = 8
    INQUIRE = 9
    RESTRICT = 10
    REQUEST = 11
    ALIGN = 12
    EXAMINE_LOCKSPACE = 13
    EXAMINE_RESOURCE = 14
    HOST_STATUS = 15
    INQ_LOCKSPACE = 16
    KILLPATH = 17
    WRITE_LOCKSPACE = 18
    WRITE_RESOURCE = 19
    READ_LOCKSPACE = 20
    READ_RESOURCE = 21
    GET_LOCKSPACES = 22
    GET_HOSTS = 23
    READ_RESOURCE_OWNERS = 24
    SET_LVB = 25
    GET_LVB = 26
    CONVERT = 27
    VERSION = 28
    SHUTDOWN_WAIT = 29
    REG_EVENT = 30
    END_EVENT = 31
    SET_EVENT = 32
    SET_CONFIG = 33
    RENEWAL = 34
    FORMAT_RINDEX = 35
    UPDATE_RINDEX = 36
    LOOKUP_RINDEX = 37
    CREATE_RESOURCE = 38
    DELETE_RESOURCE = 39
    REBUILD_RINDEX = 40


# Resource flags (sanlk_resource.flags)
RES_LVER = 0x1
RES_NUM_HOSTS = 0x2
RES_SHARED = 0x4
RES_PERSISTENT = 0x8
# Align and sector flags, shared by resources (RES_), lockspaces (LSF_) and rindexes
ALIGN_FLAGS = {0x10: 1 << 20, 0x20: 2 << 20, 0x40: 4 << 20, 0x80: 8 << 20}
SECTOR_FLAGS = {0x100: 512, 0x200: 4096}
LSF_ADD = 0x1
LSF_REM = 0x2
# cmd_flags
ACQUIRE_LVB = 0x1
CONFIG_USED = 0x1
CONFIG_UNUSED = 0x2
CONFIG_USED_BY_ORPHANS = 0x4
CONFIG_UNUSED_BY_ORPHANS = 0x8
"""SET_CONFIG commands (sent in the header's data)."""
SETEV_CUR_GENERATION = 0x1
SETEV_CLEAR_HOSTID = 0x2
SETEV_CLEAR_EVENT = 0x4
SETEV_REPLACE_EVENT = 0x8
SETEV_ALL_HOSTS = 0x10
"""SET_EVENT cmd_flags."""
HOST_EVENT_B = 32
SM_CB_PROTO = 1
SM_CB_GET_EVENT = 1
EVENT_CB_B = 80
"""An event callback: a header (version SM_CB_PROTO, cmd SM_CB_GET_EVENT, length 80), the
sanlk_host_event, then the sender's host_id and generation."""
ENOCSI = 50
ACQUIRE_ORPHAN = 0x2
ACQUIRE_ORPHAN_ONLY = 0x4
ACQUIRE_OWNER_NOWAIT = 0x8
CONVERT_OWNER_NOWAIT = 0x8
REL_ALL = 0x1
REL_RENAME = 0x2
REL_ORPHAN = 0x4
REQUEST_NEXT_LVER = 0x1
RESTRICT_ALL = 0x1
RESTRICT_SIGKILL = 0x2
RESTRICT_SIGTERM = 0x4
KILLPATH_PID = 0x1
ADD_ASYNC = 0x1
REM_ASYNC = 0x1
REM_UNUSED = 0x2
INQ_WAIT = 0x1
WRITE_CLEAR = 0x1
LS_DETAIL = 0x40000000
"""leasestore's extension, set only by leasestore's own client: the reply's payload is one
UTF-8 JSON document instead of sanlock's binary payload, {"result": ...} on success or
{"error": {"name": CLASS, "message": TEXT}} on failure; the header's data is sanlock's result
code either way. REGISTER is answered (with {"result": {"pid": PID}}) when it carries the flag.
No sanlock client sets this bit; every sanlock cmd_flags value is below it."""


class StateType(enum.IntEnum):
    DAEMON = 1
    CLIENT = 2
    LOCKSPACE = 3
    RESOURCE = 4
    HOST = 5
    RENEWAL = 6


# Linux errno values sanlock's daemon replies with (negated)
EPERM, ENOENT, ESRCH, E2BIG, EAGAIN, EBUSY, EEXIST = 1, 2, 3, 7, 11, 16, 17
ENODEV, EINVAL, ENOTTY, ENOSPC, ERANGE, EOPNOTSUPP = 19, 22, 25, 28, 34, 95
ENOTCONN, EINPROGRESS, ESTALE = 107, 115, 116

_HEADER = struct.Struct("=8I")
_DISK = struct.Struct(f"={PATH_LEN}sQII")
_RESOURCE = struct.Struct(f"={NAME_LEN}s{NAME_LEN}sQQIIII")
_LOCKSPACE_HEAD = struct.Struct(f"={NAME_LEN}sQI4x")
_OPTIONS = struct.Struct(f"={NAME_LEN}sII")
_HOST = struct.Struct("=QQQII")
_HOST_EVENT = struct.Struct("=QQQQ")
_STATE = struct.Struct(f"=IIIIQ{NAME_LEN}sII")

HEADER_B = _HEADER.size
DISK_B = _DISK.size
RESOURCE_B = _RESOURCE.size
LOCKSPACE_B = _LOCKSPACE_HEAD.size + DISK_B
OPTIONS_B = _OPTIONS.size
HOST_B = _HOST.size
STATE_B = _STATE.size
KILLPATH_B = HELPER_PATH_LEN + HELPER_ARGS_LEN


def _signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _unsigned(value: int) -> int:
    return value & 0xFFFFFFFF


def fixed(text: str | bytes, size: int) -> bytes:
    """A NUL-padded fixed-size field; longer values are cut to `size` bytes."""
    raw = text.encode() if isinstance(text, str) else text
    return raw[:size].ljust(size, b"\0")


def text_of(field: bytes) -> str:
    """The string in a fixed-size field: up to its first NUL (none needed when full).
    Raises ProtocolError for bytes that are not UTF-8 (leasestore names and paths are text)."""
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"not UTF-8: {raw[:64]!r}") from None


@dataclass(frozen=True)
class Header:
    magic: int
    version: int
    cmd: int
    cmd_flags: int
    length: int
    seq: int
    data: int
    """Signed: a request's argument; a reply's result."""
    data2: int
    """Unsigned 32 bits as sent (SELF is 0xFFFFFFFF)."""

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        magic, version, cmd, flags, length, seq, data, data2 = _HEADER.unpack(raw)
        return cls(magic, version, cmd, flags, length, seq, _signed(data), data2)

    def encode(self) -> bytes:
        return _HEADER.pack(self.magic, self.version, self.cmd, self.cmd_flags, self.length,
                            self.seq, _unsigned(self.data), _unsigned(self.data2))

    def acceptable(self) -> bool:
        """What sanlock's daemon answers at all: the magic, and a protocol major it knows
        (version 0 passes; VERSION is answered whatever the version)."""
        if self.magic != SM_MAGIC:
            return False
        return (self.version == 0 or self.cmd == Cmd.VERSION
                or (self.version & 0xFFFF0000) <= (SM_PROTO & 0xFFFF0000))

    def reply(self, result: int, payload_b: int = 0, data2: int = 0) -> bytes:
        """The reply header to this request: cmd, flags and seq echoed."""
        return Header(SM_MAGIC, SM_PROTO, self.cmd, self.cmd_flags, HEADER_B + payload_b,
                      self.seq, result, data2).encode()


@dataclass(frozen=True)
class Disk:
    path: str
    offset: int
    pad1: int = 0
    pad2: int = 0

    @classmethod
    def decode(cls, raw: bytes) -> Disk:
        path, offset, pad1, pad2 = _DISK.unpack(raw)
        return cls(text_of(path), offset, pad1, pad2)

    def encode(self) -> bytes:
        return _DISK.pack(fixed(self.path, PATH_LEN - 1), self.offset, self.pad1, self.pad2)


@dataclass(frozen=True)
class Resource:
    lockspace: str
    name: str
    lver: int = 0
    data64: int = 0
    data32: int = 0
    flags: int = 0
    num_disks: int = 1

    @classmethod
    def decode(cls, raw: bytes) -> Resource:
        lockspace, name, lver, data64, data32, _unused, flags, num_disks = _RESOURCE.unpack(raw)
        return cls(text_of(lockspace), text_of(name), lver, data64, data32, flags, num_disks)

    def encode(self) -> bytes:
        return _RESOURCE.pack(fixed(self.lockspace, NAME_LEN), fixed(self.name, NAME_LEN),
                              self.lver, self.data64, self.data32, 0, self.flags,
                              self.num_disks)


@dataclass(frozen=True)
class LockspaceStruct:
    name: str
    host_id: int
    flags: int
    disk: Disk

    @classmethod
    def decode(cls, raw: bytes) -> LockspaceStruct:
        head = _LOCKSPACE_HEAD.size
        name, host_id, flags = _LOCKSPACE_HEAD.unpack(raw[:head])
        return cls(text_of(name), host_id, flags, Disk.decode(raw[head:head + DISK_B]))

    def encode(self) -> bytes:
        return (_LOCKSPACE_HEAD.pack(fixed(self.name, NAME_LEN), self.host_id, self.flags)
                + self.disk.encode())


_RINDEX_HEAD = struct.Struct(f"=IIQ{NAME_LEN}s")
_RENTRY = struct.Struct(f"={NAME_LEN}sQII")
RINDEX_B = _RINDEX_HEAD.size + DISK_B
RENTRY_B = _RENTRY.size
RX_NO_LOCKSPACE = 0x1
RXUP_ADD = 0x10000
RXUP_REM = 0x20000


@dataclass(frozen=True)
class RindexStruct:
    """sanlk_rindex: which index (lockspace, disk) and, for FORMAT, its geometry flags and
    max_resources (0: the default)."""

    flags: int
    max_resources: int
    lockspace: str
    disk: Disk

    @classmethod
    def decode(cls, raw: bytes) -> RindexStruct:
        head = _RINDEX_HEAD.size
        flags, max_resources, _unused, name = _RINDEX_HEAD.unpack(raw[:head])
        return cls(flags, max_resources, text_of(name), Disk.decode(raw[head:head + DISK_B]))


@dataclass(frozen=True)
class Rentry:
    """sanlk_rentry: a resource name and its offset."""

    name: str
    offset: int = 0
    flags: int = 0

    @classmethod
    def decode(cls, raw: bytes) -> Rentry:
        name, offset, flags, _unused = _RENTRY.unpack(raw)
        return cls(text_of(name), offset, flags)

    def encode(self) -> bytes:
        return _RENTRY.pack(fixed(self.name, NAME_LEN), self.offset, self.flags, 0)


def decode_options(raw: bytes) -> str:
    """The owner name an ACQUIRE's options carry."""
    owner, _flags, _length = _OPTIONS.unpack(raw)
    return text_of(owner)


@dataclass(frozen=True)
class Host:
    host_id: int
    generation: int
    timestamp: int
    io_timeout: int
    flags: int

    def encode(self) -> bytes:
        return _HOST.pack(self.host_id, self.generation, self.timestamp, self.io_timeout,
                          self.flags)

    @classmethod
    def decode(cls, raw: bytes) -> Host:
        return cls(*_HOST.unpack(raw))


def state_record(kind: StateType, name: str, text: str, data32: int = 0,
                 data64: int = 0) -> bytes:
    """One STATUS / HOST_STATUS / RENEWAL record and its NUL-terminated text (at most
    STATE_MAXSTR bytes with the NUL); the caller appends a binary part where the type has one."""
    raw = text.encode()[:STATE_MAXSTR - 1] + b"\0"
    return _STATE.pack(kind, 0, _unsigned(data32), 0, data64, fixed(name, NAME_LEN),
                       len(raw), 0) + raw


def decode_killpath(raw: bytes) -> tuple[str, list[str]]:
    """(path, args) of a KILLPATH body: args split on unescaped whitespace, a backslash
    escaping the character after it."""
    path = text_of(raw[:HELPER_PATH_LEN][:HELPER_PATH_LEN - 1])
    text = text_of(raw[HELPER_PATH_LEN:KILLPATH_B][:HELPER_ARGS_LEN - 1])
    args: list[str] = []
    word: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if word:
                args.append("".join(word))
                word = []
        else:
            word.append(char)
    if word:
        args.append("".join(word))
    return path, args


def geometry_flags(flags: int) -> tuple[int | None, int | None]:
    """(sector size, align size) named by a struct's flags; None where it names none."""
    sector = next((size for bit, size in SECTOR_FLAGS.items() if flags & bit), None)
    align = next((size for bit, size in ALIGN_FLAGS.items() if flags & bit), None)
    return sector, align


def flags_of_geometry(sector_size: int, align_b: int) -> int:
    """The align and sector flags that name a geometry."""
    flags = 0
    for bit, size in SECTOR_FLAGS.items():
        if size == sector_size:
            flags |= bit
    for bit, size in ALIGN_FLAGS.items():
        if size == align_b:
            flags |= bit
    return flags


def decode_host_event(raw: bytes) -> tuple[int, int, int, int]:
    """sanlk_host_event: (host_id, generation, event, data)."""
    host_id, generation, event, data = _HOST_EVENT.unpack(raw[:HOST_EVENT_B])
    return host_id, generation, event, data


def encode_event_cb(host_id: int, generation: int, event: int, data: int, from_host_id: int,
                    from_generation: int) -> bytes:
    """The 80 bytes a registered event listener receives."""
    header = Header(SM_MAGIC, SM_CB_PROTO, SM_CB_GET_EVENT, 0, EVENT_CB_B, 0, 0, 0).encode()
    return (header + _HOST_EVENT.pack(host_id, generation, event, data)
            + struct.pack("=QQ", from_host_id, from_generation))
