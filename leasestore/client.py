"""Python client of the leasestore daemon, over sanlock's client protocol.

The functions mirror the `sanlock` Python binding's names and signatures for the same operations,
so code written for that binding runs by changing the import. Every request is the one libsanlock
sends, plus leasestore's LS_DETAIL flag, so replies carry JSON detail: results with what sanlock's
binary replies leave out, and errors raised as the daemon's own exception classes (all
`LeasestoreError`, aliased `SanlockException`), each with an `errno` property holding its stable
code. The daemon is found through `$LEASESTORE_RUN_DIR` (default /run/leasestore), the directory
of its `sanlock.sock`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import leasestore.daemon.sanlock_proto as sp
from leasestore.daemon import commands
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.direct import read_paxos_leader
from leasestore.errors import ERROR_CLASSES, LeasestoreError, ProtocolError, UsageError
from leasestore.ondisk.names import encode_name

RUN_DIR_ENV = commands.RUN_DIR_ENV
DEFAULT_RUN_DIR = commands.DEFAULT_RUN_DIR
HOST_UNKNOWN = 1
HOST_FREE = 2
HOST_LIVE = 3
HOST_FAIL = 4
HOST_DEAD = 5
LSFLAG_ADD = sp.LSF_ADD
LSFLAG_REM = sp.LSF_REM
RES_LVER = sp.RES_LVER
RES_SHARED = sp.RES_SHARED
SETEV_CUR_GENERATION = sp.SETEV_CUR_GENERATION
SETEV_REPLACE_EVENT = sp.SETEV_REPLACE_EVENT
SETEV_CLEAR_EVENT = sp.SETEV_CLEAR_EVENT
SETEV_ALL_HOSTS = sp.SETEV_ALL_HOSTS
REQ_FORCE = 1
REQ_GRACEFUL = 2
MAX_REPLY_B = 64 << 20

SanlockException = LeasestoreError


_directory: contextvars.ContextVar[str | None] = contextvars.ContextVar("leasestore_run_dir",
                                                                       default=None)


def run_dir() -> str:
    """The daemon's run dir: as `using` set it in this thread's context, else from the
    environment."""
    return _directory.get() or os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR)


@contextlib.contextmanager
def using(directory: str) -> Iterator[None]:
    """Talk to the daemon of this run dir within the block (this thread's context only)."""
    token = _directory.set(directory)
    try:
        yield
    finally:
        _directory.reset(token)


def socket_path(directory: str | None = None) -> str:
    return os.path.join(directory or run_dir(), sp.SOCKET_NAME)


def _error_from(document: Any, code: int) -> LeasestoreError:
    """The exception a reply's error object describes, as its own class (unknown: the base)."""
    details = document.get("error") if isinstance(document, dict) else None
    if not isinstance(details, dict):
        return LeasestoreError(f"daemon error {code}")
    cls = ERROR_CLASSES.get(str(details.get("name")), LeasestoreError)
    error = cls.__new__(cls)
    Exception.__init__(error, str(details.get("message", f"daemon error {code}")))
    return error


class Connection:
    """One connection to the daemon. Requests on it are answered in order."""

    def __init__(self, directory: str | None = None) -> None:
        path = socket_path(directory)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise LeasestoreError(f"cannot reach the leasestore daemon at {path}: "
                                  f"{exc.strerror}") from None

    def call(self, cmd: Cmd, payload: bytes = b"", *, flags: int = 0, data: int = 0,
             data2: int = sp.SELF) -> Any:
        """Send one request; return its result, or raise the error it carries."""
        code, document = self.exchange(cmd, payload, flags=flags, data=data, data2=data2)
        if code < 0:
            raise _error_from(document, code)
        return document.get("result") if isinstance(document, dict) else None

    def exchange(self, cmd: Cmd, payload: bytes = b"", *, flags: int = 0, data: int = 0,
                 data2: int = sp.SELF) -> tuple[int, Any]:
        """(sanlock's result code, the reply's JSON document) of one request."""
        header = Header(sp.SM_MAGIC, sp.SM_PROTO, cmd, flags | sp.LS_DETAIL,
                        sp.HEADER_B + len(payload), 0, data, data2)
        self.sock.sendall(header.encode() + payload)
        reply = Header.decode(self._recv(sp.HEADER_B))
        if reply.magic != sp.SM_MAGIC or not sp.HEADER_B <= reply.length <= MAX_REPLY_B:
            raise ProtocolError("the daemon sent a malformed reply header")
        body = self._recv(reply.length - sp.HEADER_B)
        try:
            document = json.loads(body) if body else None
        except ValueError as exc:
            raise ProtocolError(f"the daemon sent a malformed reply: {exc}") from None
        return reply.data, document

    def _recv(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            if not chunk:
                raise ProtocolError("the daemon closed the connection")
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(cmd: Cmd, payload: bytes = b"", **fields: int) -> Any:
    with Connection() as conn:
        return conn.call(cmd, payload, **fields)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _name(value: str | bytes) -> str:
    text = _text(value)
    encode_name(text)  # raises UsageError: too long, or a NUL
    return text


def _path(value: str | bytes) -> str:
    text = _text(value)
    if len(text.encode()) >= sp.PATH_LEN or "\0" in text:
        raise UsageError(f"path must be under {sp.PATH_LEN} bytes, without NUL: {text!r}")
    return text


def _lockspace(lockspace: str | bytes, host_id: int = 0, path: str | bytes = "",
               offset: int = 0) -> bytes:
    for what, value in (("host_id", host_id), ("offset", offset)):
        if not 0 <= value < 1 << 63:
            raise UsageError(f"{what} out of range: {value}")
    return sp.LockspaceStruct(_name(lockspace), host_id, 0,
                              sp.Disk(_path(path), offset)).encode()


def add_lockspace(lockspace: str | bytes, host_id: int, path: str | bytes, offset: int = 0,
                  iotimeout: int = 0, wait: bool = True) -> None:
    if not 0 <= iotimeout <= 255:
        raise UsageError("io_timeout must be 0..255 seconds")
    call(Cmd.ADD_LOCKSPACE, _lockspace(lockspace, host_id, path, offset),
         flags=0 if wait else sp.ADD_ASYNC, data=iotimeout)


def rem_lockspace(lockspace: str | bytes, host_id: int, path: str | bytes, offset: int = 0,
                  wait: bool = True, unused: bool = False) -> None:
    flags = (0 if wait else sp.REM_ASYNC) | (sp.REM_UNUSED if unused else 0)
    call(Cmd.REM_LOCKSPACE, _lockspace(lockspace, host_id, path, offset), flags=flags)


def set_config(lockspace: str | bytes, used: bool | None = None,
               used_by_orphans: bool | None = None) -> None:
    """Mark the lockspace used by an application (its removal waits until marked unused) or
    unused; `used_by_orphans`: whether its removal waits while it has orphan leases."""
    if (used is None) == (used_by_orphans is None):
        raise UsageError("set_config takes one of used, used_by_orphans")
    command = ({True: sp.CONFIG_USED, False: sp.CONFIG_UNUSED}[used] if used is not None else
               {True: sp.CONFIG_USED_BY_ORPHANS,
                False: sp.CONFIG_UNUSED_BY_ORPHANS}[bool(used_by_orphans)])
    call(Cmd.SET_CONFIG, _lockspace(lockspace), data=command)


def set_event(lockspace: str | bytes, host_id: int, generation: int, event: int,
              data: int = 0, flags: int = 0) -> None:
    """Send host `host_id` an event (sanlock's set_event; flags SETEV_*): our next renewals
    carry it, and its daemon hands it to that lockspace's event listeners."""
    for what, value in (("host_id", host_id), ("generation", generation), ("event", event),
                        ("data", data)):
        if not 0 <= value < 1 << 64:
            raise UsageError(f"{what} out of range: {value}")
    call(Cmd.SET_EVENT, _lockspace(lockspace) + struct.pack("=QQQQ", host_id, generation,
                                                            event, data), flags=flags)


def log_dump() -> str:
    """The daemon's recent log lines (at most 1 MiB), oldest first."""
    found: dict[str, str] = call(Cmd.LOG_DUMP)
    return found["log"]


def inq_lockspace(lockspace: str | bytes, host_id: int, path: str | bytes, offset: int = 0,
                  wait: bool = False) -> bool | None:
    """True: joined; False: not; None: being added or removed (as the sanlock binding)."""
    with Connection() as conn:
        code, document = conn.exchange(Cmd.INQ_LOCKSPACE,
                                       _lockspace(lockspace, host_id, path, offset),
                                       flags=sp.INQ_WAIT if wait else 0)
    if code == 0:
        return True
    if code == -sp.ENOENT:
        return False
    if code == -sp.EINPROGRESS:
        return None
    raise _error_from(document, code)


def get_lockspaces() -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = call(Cmd.GET_LOCKSPACES)
    return result


def get_hosts(lockspace: str | bytes, host_id: int = 0) -> list[dict[str, Any]]:
    """Every host in the lockspace's table as this daemon sees it (free ones too); [] until
    its first renewal has read the area (where the sanlock binding raises EAGAIN)."""
    with Connection() as conn:
        code, document = conn.exchange(Cmd.GET_HOSTS, _lockspace(lockspace, host_id))
    if code == -sp.EAGAIN:
        return []
    if code < 0:
        raise _error_from(document, code)
    result: list[dict[str, Any]] = document["result"]
    return result


def renewal_history(lockspace: str | bytes) -> list[dict[str, Any]]:
    """Every stored renewal, oldest first, with read/write/total times in µs."""
    result: list[dict[str, Any]] = call(Cmd.RENEWAL, _lockspace(lockspace))
    return result


def status() -> dict[str, Any]:
    result: dict[str, Any] = call(Cmd.STATUS)
    return result


def version() -> dict[str, Any]:
    result: dict[str, Any] = call(Cmd.VERSION)
    return result


# --- registration and resource leases ---------------------------------------------------------

_registrations: dict[int, Connection] = {}
_own: dict[str, int] = {}
"""This process's implicit registration with each daemon (by run dir)."""


def register() -> int:
    """Register this process; returns the connection's fd. Leases acquired on it are released
    when it closes, which happens at the latest when the process exits."""
    conn = Connection()
    try:
        conn.call(Cmd.REGISTER, data2=0)
    except BaseException:
        conn.close()
        raise
    conn.sock.set_inheritable(False)
    fd = conn.sock.fileno()
    _registrations[fd] = conn
    return fd


def _own_fd() -> int:
    directory = run_dir()
    if _own.get(directory) not in _registrations:
        _own[directory] = register()
    return _own[directory]


def _call_for(cmd: Cmd, payload: bytes, slkfd: int | None, pid: int | None,
              **fields: int) -> Any:
    """On the registration `slkfd` (default: this process's own), or, given only a pid, on a
    one-shot connection acting for that registered process."""
    if pid is not None and pid > 0 and (slkfd is None or slkfd < 0):
        return call(cmd, payload, data2=pid, **fields)
    fd = slkfd if slkfd is not None and slkfd >= 0 else _own_fd()
    conn = _registrations.get(fd)
    if conn is None:
        raise LeasestoreError(f"fd {fd} is not a registration made by register()")
    return conn.call(cmd, payload, **fields)


def _resource(lockspace: str | bytes, resource: str | bytes,
              disks: list[tuple[str | bytes, int]], flags: int = 0, lver: int = 0,
              with_disks: bool = True) -> bytes:
    if not 1 <= len(disks) <= sp.MAX_DISKS:
        raise UsageError(f"a lease lives on 1..{sp.MAX_DISKS} disks, not {len(disks)}")
    for _where, offset in disks:
        if not 0 <= offset < 1 << 63:
            raise UsageError(f"offset out of range: {offset}")
    if not 0 <= lver < 1 << 64:
        raise UsageError(f"version out of range: {lver}")
    struct = sp.Resource(_name(lockspace), _name(resource), lver, flags=flags,
                         num_disks=len(disks)).encode()
    if not with_disks:
        return struct
    return struct + b"".join(sp.Disk(_path(path), offset).encode() for path, offset in disks)


def acquire(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            slkfd: int | None = None, pid: int | None = None, shared: bool = False,
            version: int | None = None, lvb: bool = False, persistent: bool = False,
            orphan: bool = False, owner_nowait: bool = False) -> dict[str, Any]:
    """Acquire a resource lease for this process (or `slkfd`'s, or, as root, `pid`'s).
    `version`: the lease must be at exactly that lver now (a migration's fencing check).
    `lvb`: read its lock value block, for set_lvb / get_lvb. `persistent`: if the process
    exits holding it, the daemon keeps it as an orphan. `orphan`: adopt such an orphan (in
    the same mode); without it an orphan refuses the acquire (LeaseOrphaned). `owner_nowait`:
    AcquireOwnedRetry instead of waiting to see another owner's host lease renew or expire."""
    flags = ((sp.RES_SHARED if shared else 0) | (0 if version is None else sp.RES_LVER)
             | (sp.RES_PERSISTENT if persistent else 0))
    payload = (_resource(lockspace, resource, disks, flags, version or 0)
               + bytes(sp.OPTIONS_B))
    held: list[dict[str, Any]] = _call_for(
        Cmd.ACQUIRE, payload, slkfd, pid, data=1,
        flags=(sp.ACQUIRE_LVB if lvb else 0) | (sp.ACQUIRE_ORPHAN if orphan else 0)
        | (sp.ACQUIRE_OWNER_NOWAIT if owner_nowait else 0))
    return held[0]


def convert(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            shared: bool = False, slkfd: int | None = None, pid: int | None = None
            ) -> dict[str, Any]:
    """Turn a lease this process (or `slkfd`'s, or, as root, `pid`'s) holds shared or
    exclusive. To exclusive fails with SharedHolders (-EAGAIN) while another live holder has
    it shared; the lease then stays held shared."""
    payload = _resource(lockspace, resource, disks, sp.RES_SHARED if shared else 0,
                        with_disks=False)
    held: dict[str, Any] = _call_for(Cmd.CONVERT, payload, slkfd, pid)
    return held


def release_orphans(lockspace: str | bytes, resource: str | bytes = "",
                    slkfd: int | None = None) -> int:
    """Release the orphans of a lockspace (only `resource`'s, if named) on disk, through the
    registration `slkfd` (default: this process's own; root only). Returns how many."""
    payload = sp.Resource(_name(lockspace), _name(resource)).encode()
    found: dict[str, int] = _call_for(Cmd.RELEASE, payload, slkfd, None, data=1,
                                      flags=sp.REL_ORPHAN)
    return found["released"]


def set_lvb(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            data: bytes) -> None:
    """Copy `data` over the start of the lease's lock value block (held here with the LVB
    flag); it is written to disk when the exclusive holding is released."""
    call(Cmd.SET_LVB, _resource(lockspace, resource, disks, with_disks=False) + data)


def get_lvb(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            size: int = 0) -> bytes:
    """The first `size` bytes of the lease's lock value block (0: its whole sector)."""
    if not 0 <= size <= 4096:
        raise UsageError(f"an LVB read is 0..4096 bytes, not {size}")
    found: dict[str, str] = call(Cmd.GET_LVB, _resource(lockspace, resource, disks,
                                                        with_disks=False), data2=size)
    return bytes.fromhex(found["lvb"])


def release(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            slkfd: int | None = None, pid: int | None = None, rename: str | None = None
            ) -> None:
    """Release a lease; `rename`: the free leader is written under that resource name
    (sanlock's REL_RENAME; exclusive holdings only)."""
    payload = _resource(lockspace, resource, disks, with_disks=False)
    if rename is None:
        _call_for(Cmd.RELEASE, payload, slkfd, pid, data=1)
        return
    renamed = sp.Resource(_name(lockspace), _name(rename)).encode()
    _call_for(Cmd.RELEASE, payload + renamed, slkfd, pid, data=2, flags=sp.REL_RENAME)


def inquire(slkfd: int | None = None, pid: int | None = None) -> list[dict[str, Any]]:
    """The leases held, in the sanlock binding's form (lockspace, resource, flags, version,
    disks) plus the state string."""
    held: list[dict[str, Any]] = _call_for(Cmd.INQUIRE, b"", slkfd, pid)
    return [
        {"lockspace": h["lockspace"].encode(), "resource": h["resource"].encode(),
         "flags": RES_SHARED if h["shared"] else RES_LVER, "version": h["lver"],
         "disks": [(h["path"], h["offset"])], "state": h["state"]}
        for h in held
    ]


def request(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            action: int = REQ_GRACEFUL, version: int | None = None) -> int:
    """Ask the lease's holder to give it up (REQ_FORCE: killed; REQ_GRACEFUL: its killpath or
    SIGTERM). Returns the owner's host_id (0 if the lease was free)."""
    payload = _resource(lockspace, resource, disks, 0 if version is None else sp.RES_LVER,
                        version or 0)
    result: dict[str, int] = call(Cmd.REQUEST, payload, data=action,
                                  flags=sp.REQUEST_NEXT_LVER if version is None else 0)
    return result["owner"]


def _escaped(arg: str) -> str:
    return arg.replace("\\", "\\\\").replace(" ", "\\ ")


def killpath(path: str | bytes, args: list[str | bytes], slkfd: int | None = None) -> None:
    """Run `path args... PID` instead of SIGTERM when this process must give its leases up."""
    text = " ".join(_escaped(_text(a)) for a in args)
    if len(_text(path).encode()) >= sp.HELPER_PATH_LEN or len(text.encode()) >= \
            sp.HELPER_ARGS_LEN:
        raise UsageError(f"killpath program and arguments must each be under "
                         f"{sp.HELPER_PATH_LEN} bytes")
    payload = sp.fixed(_text(path), sp.HELPER_PATH_LEN) + sp.fixed(text, sp.HELPER_ARGS_LEN)
    _call_for(Cmd.KILLPATH, payload, slkfd, None, flags=sp.KILLPATH_PID)


def read_resource(path: str | bytes, offset: int = 0, align: int = 1 << 20,
                  sector: int = 512) -> dict[str, Any]:
    """Read a resource's leader directly from storage: {lockspace, resource, version}."""
    del align, sector  # the leader says what they are
    leader = read_paxos_leader(_text(path), offset)
    return {"lockspace": leader.space_name.encode(), "resource": leader.resource_name.encode(),
            "version": leader.lver}
