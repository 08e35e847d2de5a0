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
from leasestore.errors import LeasestoreError, ProtocolError

HOST_UNKNOWN = 1
HOST_FREE = 2
HOST_LIVE = 3
HOST_FAIL = 4
HOST_DEAD = 5
LSFLAG_ADD = 1
LSFLAG_REM = 2

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
