"""Python client of the leasestore daemon.

The functions mirror the `sanlock` Python binding's names and signatures for the same operations,
so code written for that binding runs by changing the import. Names may be str or bytes. Errors
are raised as the daemon's own exception classes (all `LeasestoreError`, aliased
`SanlockException`), each with an `errno` property holding its stable code.
The daemon is found through `$LEASESTORE_RUN_DIR` (default /run/leasestore).
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any

from leasestore.daemon import wire
from leasestore.direct import read_paxos_leader
from leasestore.errors import LeasestoreError, ProtocolError

HOST_UNKNOWN = 1
HOST_FREE = 2
HOST_LIVE = 3
HOST_FAIL = 4
HOST_DEAD = 5
LSFLAG_ADD = 1
LSFLAG_REM = 2
RES_LVER = 0x1
RES_SHARED = 0x4
REQ_FORCE = 1
REQ_GRACEFUL = 2

SanlockException = LeasestoreError
_seq = itertools.count(1)


def run_dir() -> str:
    return os.environ.get(wire.RUN_DIR_ENV, wire.DEFAULT_RUN_DIR)


class Connection:
    """One connection to the daemon. Requests on it are answered in order."""

    def __init__(self, directory: str | None = None) -> None:
        path = os.path.join(directory or run_dir(), wire.SOCKET_NAME)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise LeasestoreError(f"cannot reach the leasestore daemon at {path}: "
                                  f"{exc.strerror}") from None
        self._reader = self.sock.makefile("rb")

    def call(self, command: wire.Command) -> Any:
        seq = next(_seq)
        self.sock.sendall(wire.encode_request(seq, command))
        line = self._reader.readline(wire.MAX_MESSAGE_B * 64)
        if not line:
            raise ProtocolError("the daemon closed the connection")
        return wire.decode_reply(line, seq)

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(command: wire.Command) -> Any:
    with Connection() as conn:
        return conn.call(command)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def add_lockspace(lockspace: str | bytes, host_id: int, path: str | bytes, offset: int = 0,
                  iotimeout: int = 0, wait: bool = True) -> None:
    call(wire.AddLockspace(_text(lockspace), host_id, _text(path), offset, iotimeout, wait))


def rem_lockspace(lockspace: str | bytes, host_id: int, path: str | bytes, offset: int = 0,
                  wait: bool = True, unused: bool = False) -> None:
    call(wire.RemLockspace(_text(lockspace), host_id, _text(path), offset, wait, unused))


def inq_lockspace(lockspace: str | bytes, host_id: int, path: str | bytes, offset: int = 0,
                  wait: bool = False) -> bool | None:
    result: bool | None = call(wire.InqLockspace(_text(lockspace), host_id, _text(path),
                                                 offset, wait))
    return result


def get_lockspaces() -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = call(wire.GetLockspaces())
    return result


def get_hosts(lockspace: str | bytes, host_id: int = 0) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = call(wire.GetHosts(_text(lockspace), host_id))
    return result


def renewal_history(lockspace: str | bytes) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = call(wire.Renewal(_text(lockspace)))
    return result


def status() -> dict[str, Any]:
    result: dict[str, Any] = call(wire.Status())
    return result


# --- registration and resource leases ---------------------------------------------------------

_registrations: dict[int, Connection] = {}
_own: dict[str, int] = {}
"""This process's implicit registration with each daemon (by run dir)."""


def register() -> int:
    """Register this process; returns the connection's fd. Leases acquired on it are released
    when it closes, which happens at the latest when the process exits."""
    conn = Connection()
    conn.call(wire.Register())
    conn.sock.set_inheritable(False)
    fd = conn.sock.fileno()
    _registrations[fd] = conn
    return fd


def _own_fd() -> int:
    directory = run_dir()
    if _own.get(directory) not in _registrations:
        _own[directory] = register()
    return _own[directory]


def _call_for(command: wire.Command, slkfd: int | None, pid: int | None) -> Any:
    if pid is not None and pid > 0 and (slkfd is None or slkfd < 0):
        return call(command)
    fd = slkfd if slkfd is not None and slkfd >= 0 else _own_fd()
    conn = _registrations.get(fd)
    if conn is None:
        raise LeasestoreError(f"fd {fd} is not a registration made by register()")
    return conn.call(command)


def _one_disk(disks: list[tuple[str | bytes, int]]) -> tuple[str, int]:
    if len(disks) != 1:
        raise LeasestoreError("leasestore leases live on exactly one disk")
    path, offset = disks[0]
    return _text(path), offset


def acquire(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            slkfd: int | None = None, pid: int | None = None, shared: bool = False,
            version: int | None = None) -> dict[str, Any]:
    """Acquire a resource lease for this process (or `slkfd`'s, or, as root, `pid`'s).
    `version`: the lease must be at exactly that lver now (a migration's fencing check)."""
    path, offset = _one_disk(disks)
    command = wire.Acquire(_text(lockspace), _text(resource), path, offset, pid or 0, shared,
                           -1 if version is None else version)
    result: dict[str, Any] = _call_for(command, slkfd, pid)
    return result


def release(lockspace: str | bytes, resource: str | bytes, disks: list[tuple[str | bytes, int]],
            slkfd: int | None = None, pid: int | None = None) -> None:
    path, offset = _one_disk(disks)
    _call_for(wire.Release(_text(lockspace), _text(resource), path, offset, pid or 0),
              slkfd, pid)


def inquire(slkfd: int | None = None, pid: int | None = None) -> list[dict[str, Any]]:
    """The leases held, in the sanlock binding's form (lockspace, resource, flags, version,
    disks) plus the state string."""
    held: list[dict[str, Any]] = _call_for(wire.Inquire(pid or 0), slkfd, pid)
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
    path, offset = _one_disk(disks)
    result: dict[str, int] = call(wire.RequestRelease(
        _text(lockspace), _text(resource), path, offset, 0,
        -1 if version is None else version, action))
    return result["owner"]


def killpath(path: str | bytes, args: list[str | bytes], slkfd: int | None = None) -> None:
    """Run `path args... PID` instead of SIGTERM when this process must give its leases up."""
    command = wire.Killpath(_text(path), " ".join(_text(a) for a in args))
    _call_for(command, slkfd, None)


def read_resource(path: str | bytes, offset: int = 0, align: int = 1 << 20,
                  sector: int = 512) -> dict[str, Any]:
    """Read a resource's leader directly from storage: {lockspace, resource, version}."""
    del align, sector  # the leader says what they are
    leader = read_paxos_leader(_text(path), offset)
    return {"lockspace": leader.space_name.encode(), "resource": leader.resource_name.encode(),
            "version": leader.lver}
