"""Hostile request lines for the daemon's wire protocol: every message malformed in every field.

Each command starts from a baseline whose arguments are valid but name things that do not exist
(a lockspace never added, a path that is not there), so that a line which happens to be
well-formed still changes nothing. From each baseline: every field replaced by every hostile
value, every field missing, an unknown field added, and args of the wrong kind; then envelope
damage (version, sequence number, command name) and lines that are not JSON at all.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

from leasestore.daemon.wire import COMMANDS, MAX_MESSAGE_B, PROTOCOL_VERSION

FUZZ_LOCKSPACE = "fuzz-never-added"
FUZZ_PATH = "/nonexistent/leasestore-fuzz"

BASELINES: dict[str, dict[str, Any]] = {
    "add_lockspace": {"lockspace": FUZZ_LOCKSPACE, "host_id": 1, "path": FUZZ_PATH,
                      "offset": 0, "io_timeout": 1, "wait": True},
    "rem_lockspace": {"lockspace": FUZZ_LOCKSPACE, "host_id": 1, "path": FUZZ_PATH,
                      "offset": 0, "wait": True, "unused": False},
    "inq_lockspace": {"lockspace": FUZZ_LOCKSPACE, "host_id": 1, "path": FUZZ_PATH,
                      "offset": 0, "wait": False},
    "get_lockspaces": {},
    "get_hosts": {"lockspace": FUZZ_LOCKSPACE, "host_id": 0},
    "renewal": {"lockspace": FUZZ_LOCKSPACE},
    "register": {},
    "acquire": {"lockspace": FUZZ_LOCKSPACE, "resource": "r", "path": FUZZ_PATH, "offset": 0,
                "pid": 0, "shared": False, "lver": -1},
    "release": {"lockspace": FUZZ_LOCKSPACE, "resource": "r", "path": FUZZ_PATH, "offset": 0,
                "pid": 0},
    "request": {"lockspace": FUZZ_LOCKSPACE, "resource": "r", "path": FUZZ_PATH, "offset": 0,
                "pid": 0, "lver": -1, "force_mode": 2},
    "killpath": {"path": FUZZ_PATH, "args": ""},
    "inquire": {"pid": 0},
    "status": {},
    "version": {},
}

HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 7, 2**31, 2**63, -(2**63), 2**64, 10**40, 1.5, -0.0, "",
    "x" * 5000, "\x00", "a\nb", "../../../etc/passwd", "é" * 30, "1", "-1", [], [1, 2], {},
    {"a": 1},
]


def _line(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _envelope(seq: int, cmd: Any, args: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "seq": seq, "cmd": cmd, "args": args}


def hostile_lines() -> Iterator[bytes]:
    """Every hostile request line, each ending in a newline."""
    assert set(BASELINES) == set(COMMANDS), "a command has no fuzz baseline"
    seq = 0
    for name, baseline in BASELINES.items():
        fields = [f.name for f in dataclasses.fields(COMMANDS[name])]
        for field in fields:
            for value in HOSTILE_VALUES:
                seq += 1
                yield _line(_envelope(seq, name, {**baseline, field: value}))
            seq += 1
            yield _line(_envelope(seq, name, {k: v for k, v in baseline.items() if k != field}))
        seq += 1
        yield _line(_envelope(seq, name, {**baseline, "unexpected": 1}))
        wrong_kinds: list[Any] = [None, [], "args", 5]
        for args in wrong_kinds:
            seq += 1
            yield _line(_envelope(seq, name, args))
    for value in HOSTILE_VALUES:
        seq += 1
        yield _line({"v": value, "seq": seq, "cmd": "status", "args": {}})
        yield _line({"v": PROTOCOL_VERSION, "seq": value, "cmd": "status", "args": {}})
        yield _line({"v": PROTOCOL_VERSION, "seq": seq, "cmd": value, "args": {}})
    yield from GARBAGE_LINES


GARBAGE_LINES: list[bytes] = [
    b"\n",
    b"not json\n",
    b"\xff\xfe\xfd\n",
    b'{"v":1,"seq":1,"cmd":"status"\n',
    b"[" * 30_000 + b"\n",
    b"[" * 100_000 + b"\n",
    b'{"a":' * 50_000 + b"\n",
    b'{"v":1,"seq":1e999,"cmd":"status"}\n',
    b'{"v":1,"seq":NaN,"cmd":"status"}\n',
    b'{"v":1,"seq":1,"cmd":"status","cmd":"register"}\n',
    b"\x00" * 1000 + b"\n",
    b"{" + b" " * (MAX_MESSAGE_B + 10) + b"}\n",
]
