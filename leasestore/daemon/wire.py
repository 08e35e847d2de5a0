"""The client ⇄ daemon protocol: newline-delimited JSON over a Unix stream socket.

Request:  {"v": 1, "seq": N, "cmd": NAME, "args": {...}}
Reply:    {"v": 1, "seq": N, "ok": true, "result": ...}
      or  {"v": 1, "seq": N, "ok": false, "error": {"name": CLASS, "code": INT, "message": TEXT}}

Each command is one frozen dataclass; `parse_request` validates every field's presence and type
(bool is not an int here) and the names' and paths' limits, and raises ProtocolError with a reason
for anything else, so a malformed request gets an error reply and never reaches a handler.
The caller's pid and uid are never in a message: the daemon takes them from SO_PEERCRED.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from leasestore.errors import ERROR_CLASSES, LeasestoreError, ProtocolError, UsageError
from leasestore.ondisk.names import encode_name
from leasestore.specs import MAX_PATH_B

PROTOCOL_VERSION = 1
MAX_MESSAGE_B = 64 * 1024
SOCKET_NAME = "leasestore.sock"
PID_FILE_NAME = "leasestore.pid"
DEFAULT_RUN_DIR = "/run/leasestore"
RUN_DIR_ENV = "LEASESTORE_RUN_DIR"


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
class GetLockspaces(Command):
    name: ClassVar[str] = "get_lockspaces"


@dataclass(frozen=True)
class GetHosts(Command):
    name: ClassVar[str] = "get_hosts"
    lockspace: str
    host_id: int = 0

    def validate(self) -> None:
        _check_name(self.lockspace, "lockspace")
        _check_non_negative(host_id=self.host_id)


@dataclass(frozen=True)
class Renewal(Command):
    name: ClassVar[str] = "renewal"
    lockspace: str

    def validate(self) -> None:
        _check_name(self.lockspace, "lockspace")


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

    def validate(self) -> None:
        _check_name(self.lockspace, "lockspace")
        _check_name(self.resource, "resource")
        _check_path(self.path)
        _check_non_negative(offset=self.offset, pid=self.pid)


@dataclass(frozen=True)
class Acquire(ResourceCommand):
    name: ClassVar[str] = "acquire"
    shared: bool = False
    lver: int = -1
    """-1: any version; otherwise the lease must be at exactly this lver (holding lver + 1)."""

    def validate(self) -> None:
        super().validate()
        _check_lver(self.lver)


@dataclass(frozen=True)
class Release(ResourceCommand):
    name: ClassVar[str] = "release"


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
class Killpath(Command):
    """The program the daemon runs (with the holder's pid appended) instead of SIGTERM."""

    name: ClassVar[str] = "killpath"
    path: str
    args: str = ""

    def validate(self) -> None:
        _check_path(self.path)
        if len(self.args.encode()) > 128 or "\0" in self.args:
            raise ProtocolError("killpath args must be at most 128 bytes")


@dataclass(frozen=True)
class Inquire(Command):
    name: ClassVar[str] = "inquire"
    pid: int = 0

    def validate(self) -> None:
        _check_non_negative(pid=self.pid)


@dataclass(frozen=True)
class Status(Command):
    name: ClassVar[str] = "status"


@dataclass(frozen=True)
class Version(Command):
    name: ClassVar[str] = "version"


COMMANDS: dict[str, type[Command]] = {
    cls.name: cls
    for cls in (AddLockspace, RemLockspace, InqLockspace, GetLockspaces, GetHosts, Renewal,
                Register, Acquire, Release, RequestRelease, Killpath, Inquire, Status, Version)
}


_FIELD_TYPES: dict[type[Command], dict[str, Any]] = {}


def _field_types(cls: type[Command]) -> dict[str, Any]:
    """Each field's type (resolving the hints is slow: done once per command class)."""
    types = _FIELD_TYPES.get(cls)
    if types is None:
        hints = typing.get_type_hints(cls)
        types = _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return types


def _type_ok(value: Any, expected: Any) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    return False


def command_from(name: Any, args: Any) -> Command:
    """Build and validate a command from its wire name and arguments."""
    if not isinstance(name, str) or name not in COMMANDS:
        raise ProtocolError(f"unknown command {name!r}")
    if not isinstance(args, dict):
        raise ProtocolError("args must be an object")
    cls = COMMANDS[name]
    types = _field_types(cls)
    unknown = set(args) - set(types)
    if unknown:
        raise ProtocolError(f"{name}: unknown argument(s) {sorted(unknown)}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - set(args)
    if missing:
        raise ProtocolError(f"{name}: missing argument(s) {sorted(missing)}")
    for key, value in args.items():
        if not _type_ok(value, types[key]):
            raise ProtocolError(f"{name}: {key} must be {types[key].__name__}")
    command = cls(**args)
    command.validate()
    return command


def encode_request(seq: int, command: Command) -> bytes:
    args = {f.name: getattr(command, f.name) for f in dataclasses.fields(command)}
    return _line({"v": PROTOCOL_VERSION, "seq": seq, "cmd": command.name, "args": args})


def parse_envelope(line: bytes) -> tuple[int, Any, Any]:
    """(seq, command name, args) of one request line; raises ProtocolError."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("a request must be a JSON object")
    seq = message.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError("seq must be an integer")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    return seq, message.get("cmd"), message.get("args", {})


def parse_request(line: bytes) -> tuple[int, Command]:
    """(seq, command) from one request line; raises ProtocolError."""
    seq, name, args = parse_envelope(line)
    return seq, command_from(name, args)


def encode_result(seq: int, result: Any) -> bytes:
    return _line({"v": PROTOCOL_VERSION, "seq": seq, "ok": True, "result": result})


def encode_error(seq: int, error: LeasestoreError) -> bytes:
    return _line({"v": PROTOCOL_VERSION, "seq": seq, "ok": False,
                  "error": {"name": type(error).__name__, "code": error.code,
                            "message": str(error)}})


def decode_reply(line: bytes, seq: int) -> Any:
    """The result of a reply line, or raise the error it carries as its own class."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"daemon sent a malformed reply: {exc}") from None
    if not isinstance(message, dict) or message.get("seq") != seq:
        raise ProtocolError("daemon reply does not match the request")
    if message.get("ok"):
        return message.get("result")
    raise rebuild_error(message.get("error"))


def rebuild_error(error: Any) -> LeasestoreError:
    """The exception a reply's error object describes, as its own class (unknown: the base)."""
    details = error if isinstance(error, dict) else {}
    cls = ERROR_CLASSES.get(str(details.get("name")), LeasestoreError)
    rebuilt = cls.__new__(cls)
    Exception.__init__(rebuilt, str(details.get("message", "unknown error")))
    return rebuilt


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
