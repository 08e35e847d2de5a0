"""The lease holders of this host, recorded in the run dir so that they outlive the daemon.

A daemon that dies (SIGKILL, a crash) leaves its holders running, and the watchdog it had armed
counting down: unless something pets it, the host is reset before any other host may take
those holders' leases (host_dead). A daemon started again on the same run dir must not pet that
watchdog while those holders live. So every process that holds, or is acquiring, a lease is
recorded here (pid and kernel start time, which tells a reused pid apart) before its acquire's
first I/O, and dropped once it holds nothing (the resource service says when: its
`on_holders_changed` seam); and a starting daemon kills every recorded process still alive, and
opens its watchdog only once they are all gone (`ending_previous_holders`). That rule takes the
record and the processes as seams, so the daemon and the simulator run the same code.

The record lives in the run dir (normally tmpfs): it must survive a daemon restart, not a
reboot, and a reboot ends the holders too. Each version is one pwrite at offset 0 of the whole
JSON document, padded with spaces to the longest version written so far (no stale bytes after
it): one system call per change, on the acquire path. A daemon killed mid-write leaves at worst
a document that does not parse, and a starting daemon refuses to run on that (fail closed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from leasestore.effects import Algorithm, Sleep
from leasestore.errors import UsageError

RECORD_NAME = "holders.json"


@dataclass(frozen=True, order=True)
class HolderProcess:
    pid: int
    start_ticks: int
    """/proc/PID/stat starttime: with the pid, names one process for good."""

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.start_ticks


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of process `pid` (clock ticks since boot), None if none runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(b")")[2].split()
    try:
        if fields[0] == b"Z":  # exited, not yet reaped: it holds nothing any more
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def holder(pid: int) -> HolderProcess | None:
    ticks = process_start_ticks(pid)
    return None if ticks is None else HolderProcess(pid, ticks)


class HolderRecord:
    """The file `<run_dir>/holders.json`. Callers serialise `write` calls."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, RECORD_NAME)
        self._written: frozenset[HolderProcess] | None = None
        self._fd: int | None = None
        self._longest_b = 0

    def write(self, holders: Iterable[HolderProcess]) -> None:
        current = frozenset(holders)
        if current == self._written:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                               0o644)
        document = json.dumps({"holders": [[h.pid, h.start_ticks] for h in sorted(current)]})
        raw = document.encode().ljust(self._longest_b)
        os.pwrite(self._fd, raw, 0)
        self._longest_b = len(raw)
        self._written = current

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> list[HolderProcess]:
        """What a previous daemon recorded; a missing or unreadable record holds nobody, an
        unreadable one is reported by ValueError."""
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.path}: {exc}") from None
        try:
            return [HolderProcess(int(pid), int(ticks)) for pid, ticks in data["holders"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: malformed ({exc})") from None


class Record(Protocol):
    """Where the holders are recorded: survives the daemon, not the host."""

    def read(self) -> list[HolderProcess]: ...
    def write(self, holders: Iterable[HolderProcess]) -> None: ...


class Processes(Protocol):
    """The host's processes, as a starting daemon sees them."""

    def alive(self, holder: HolderProcess) -> bool: ...
    def kill(self, holder: HolderProcess) -> None: ...


class PreviousHoldersAlive(UsageError):
    """Holders an earlier daemon left did not exit after SIGKILL: this daemon must not start
    (and so must not open the watchdog the earlier one may have armed)."""


EXIT_POLL_S = 0.05
EXIT_WAIT_S = 10.0
"""How long a daemon waits for SIGKILLed holders to exit (at start, removal and shutdown)."""


def ending_previous_holders(record: Record, processes: Processes,
                            wait_s: float) -> Algorithm[list[HolderProcess]]:
    """Before a daemon opens its watchdog: SIGKILL every holder an earlier daemon recorded
    that is still alive, wait up to `wait_s` for them to go, then clear the record. Returns the
    holders killed. Raises PreviousHoldersAlive if some outlive the wait (the record is kept),
    UsageError if the record cannot be read (fail closed)."""
    try:
        previous = record.read()
    except ValueError as exc:
        raise UsageError(f"cannot tell whether an earlier daemon left lease holders: {exc}"
                         ) from None
    killed = [h for h in previous if processes.alive(h)]
    for h in killed:
        processes.kill(h)
    alive = list(killed)
    waited_s = 0.0
    while alive and waited_s < wait_s:
        yield Sleep(EXIT_POLL_S)
        waited_s += EXIT_POLL_S
        alive = [h for h in alive if processes.alive(h)]
    if alive:
        raise PreviousHoldersAlive(
            "lease holders of an earlier daemon did not exit after SIGKILL (pids "
            f"{', '.join(str(h.pid) for h in alive)}); not opening the watchdog, which resets "
            "this host if that daemon had armed it")
    record.write([])
    return killed


class HostProcesses:
    """This host's processes, by /proc and signals."""

    def alive(self, holder: HolderProcess) -> bool:
        return holder.alive()

    def kill(self, holder: HolderProcess) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(holder.pid, signal.SIGKILL)
