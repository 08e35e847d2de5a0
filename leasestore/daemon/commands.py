"""The daemon's operations as typed commands, whatever protocol front end decoded them.

Each command is one frozen dataclass; `validate` checks the names' and paths' limits and the
numbers' ranges, and raises ProtocolError with a reason, so a malformed request is refused
before it reaches a handler. The caller's pid and uid are never in a command: the daemon takes
them from SO_PEERCRED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from leasestore.errors import ProtocolError, UsageError
from leasestore.ondisk.names import encode_name
from leasestore.specs import MAX_PATH_B

PID_FILE_NAME = "leasestore.pid"
DEFAULT_RUN_DIR = "/run/leasestore"
RUN_DIR_ENV = "LEASESTORE_RUN_DIR"
"""Where clients find the daemon's run dir (its sanlock.sock)."""


@dataclass(frozen=True)
class Command:
    """Base of every request. `name` is the wire name; fields are the arguments."""

    name: ClassVar[str] = ""

    def validate(self) -> None:
        """Field-level checks beyond types; raise ProtocolError."""


def _check_name(value: str, what: str) -> None:
    if not value:
        raise ProtocolError(f"{what} must not be empty")
    try:
        encode_name(value)
    except UsageError as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def _check_path(value: str) -> None:
    if not value or len(value.encode()) > MAX_PATH_B or "\0" in value:
        raise ProtocolError(f"path must be 1..{MAX_PATH_B} bytes without NUL")


def _check_lver(lver: int) -> None:
    """-1 (none / next) or a valid u64 lease version."""
    if lver < -1 or lver >= 1 << 63:
        raise ProtocolError(f"lver out of range: {lver}")


def _check_non_negative(**values: int) -> None:
    for what, value in values.items():
        if value < 0 or value >= 1 << 63:
            raise ProtocolError(f"{what} out of range: {value}")


@dataclass(frozen=True)
class LockspaceCommand(Command):
    lockspace: str
    host_id: int
    path: str
    offset: int = 0

    def validate(self) -> None:
        _check_name(self.lockspace, "lockspace")
        _check_path(self.path)
        _check_non_negative(host_id=self.host_id, offset=self.offset)
        if not 1 <= self.host_id <= 2000:
            raise ProtocolError(f"host_id must be 1..2000, not {self.host_id}")


@dataclass(frozen=True)
class AddLockspace(LockspaceCommand):
    name: ClassVar[str] = "add_lockspace"
    io_timeout: int = 0
    wait: bool = True

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.io_timeout <= 255:
            raise ProtocolError("io_timeout must be 0..255 seconds")


@dataclass(frozen=True)
class RemLockspace(LockspaceCommand):
    name: ClassVar[str] = "rem_lockspace"
    wait: bool = True
    unused: bool = False


@dataclass(frozen=True)
class InqLockspace(LockspaceCommand):
    name: ClassVar[str] = "inq_lockspace"
    wait: bool = False


@dataclass(frozen=True)
class Register(Command):
    """Make this connection the calling process's registration: its leases live while it is open."""

    name: ClassVar[str] = "register"


@dataclass(frozen=True)
class ResourceCommand(Command):
    lockspace: str
    resource: str
    path: str
    offset: int = 0
    pid: int = 0
    """0: the registered caller itself; otherwise (root only) another registered process."""
    extra_disks: tuple[tuple[str, int], ...] = ()
    """A lease on several disks: (path, offset) of each after the first (at most 3 more)."""

    def validate(self) -> None:
        _check_name(self.lockspace, "lockspace")
        _check_name(self.resource, "resource")
        _check_path(self.path)
        _check_non_negative(offset=self.offset, pid=self.pid)
        if len(self.extra_disks) > 3:
            raise ProtocolError(f"at most 4 disks per lease, not {1 + len(self.extra_disks)}")
        for path, offset in self.extra_disks:
            _check_path(path)
            _check_non_negative(offset=offset)
        disks = [(self.path, self.offset), *self.extra_disks]
        if len(set(disks)) < len(disks):
            raise ProtocolError("a lease's disks repeat")


@dataclass(frozen=True)
class Acquire(ResourceCommand):
    name: ClassVar[str] = "acquire"
    shared: bool = False
    lver: int = -1
    """-1: any version; otherwise the lease must be at exactly this lver (holding lver + 1)."""
    lvb: bool = False
    persistent: bool = False
    """Kept as an orphan when the holder exits without releasing it."""
    adopt: bool = False
    """Adopt an orphan of the lease in the same mode (otherwise an orphan refuses)."""
    owner_nowait: bool = False
    """Refuse (-247) rather than wait to see an owner's host lease renew or expire."""
    """Read the lease's lock value block after the grant, for set_lvb / get_lvb (lvb.py)."""

    def validate(self) -> None:
        super().validate()
        _check_lver(self.lver)


@dataclass(frozen=True)
class Release(ResourceCommand):
    name: ClassVar[str] = "release"
    rename: str = ""
    """The resource name the free leader is written with (sanlock's REL_RENAME)."""


@dataclass(frozen=True)
class RequestRelease(ResourceCommand):
    """Ask whoever holds the lease to give it up (sanlock's request)."""

    name: ClassVar[str] = "request"
    lver: int = -1
    """-1: the next version."""
    force_mode: int = 2

    def validate(self) -> None:
        super().validate()
        if self.force_mode not in (0, 1, 2):
            raise ProtocolError("force_mode must be 0 (clear), 1 (force) or 2 (graceful)")
        _check_lver(self.lver)


@dataclass(frozen=True)
class Status(Command):
    name: ClassVar[str] = "status"


