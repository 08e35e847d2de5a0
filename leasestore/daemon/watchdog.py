"""Watchdogs the daemon pets only while every lockspace's host lease is valid.

`none` never resets the machine (unsafe, as sanlock's `-w 0`: a hung host's lease holders can
outlive its lease). A watchdog device (`/dev/watchdog`, a character device) is opened with its
timeout set to watchdog_fire_timeout and read back: a device that refuses that timeout (below
its minimum, above its maximum) or reports another is refused, so that the host is never fenced
later than host_dead = 8 × io_timeout + watchdog_fire_timeout assumes. If petting stops, the
hardware resets the host that many seconds after the last pet.

Disarming (the magic 'V' before close) happens only on a clean close: when no process holds a
lease that the watchdog protects. Every other close (a failed lockspace with holders, a crash,
a daemon killed outright) leaves the timer running, so a dead or stuck daemon still fences.
A FIFO stands in for the device in tests (a reader decides when it "fires"); it takes no
timeout and says so in the log.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Callable
from typing import Protocol

from leasestore.errors import UsageError

log = logging.getLogger(__name__)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
MAGIC_CLOSE = b"V"
Ioctl = Callable[[int, int, bytes], bytes]


class Watchdog(Protocol):
    pets: int

    def pet(self) -> None: ...

    def close(self, clean: bool) -> None: ...

    def describe(self) -> str: ...


class NoWatchdog:
    def __init__(self) -> None:
        self.pets = 0

    def pet(self) -> None:
        self.pets += 1

    def close(self, clean: bool) -> None:
        del clean

    def describe(self) -> str:
        return "none"


def _whole_seconds(fire_timeout_s: float) -> int:
    if fire_timeout_s != int(fire_timeout_s) or fire_timeout_s < 1:
        raise UsageError(f"a watchdog device takes whole seconds: watchdog_fire_timeout "
                         f"{fire_timeout_s} will not do")
    return int(fire_timeout_s)


class DeviceWatchdog:
    def __init__(self, path: str, fire_timeout_s: float, ioctl: Ioctl = fcntl.ioctl) -> None:
        self.path = path
        self.pets = 0
        self.emulated = False
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise UsageError(f"watchdog {path}: {exc.strerror}") from None
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            raise UsageError(f"watchdog {path} is not a watchdog device")
        wanted_s = _whole_seconds(fire_timeout_s) if stat.S_ISCHR(mode) else 0
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"watchdog {path}: {exc.strerror}") from None
        if stat.S_ISFIFO(mode):
            self.emulated = True
            log.warning("watchdog %s is a FIFO: an emulated watchdog, for tests only", path)
            return
        try:
            self._set_timeout(wanted_s, ioctl)
        except UsageError:
            # Nothing relies on a watchdog we are refusing: disarm what opening it started.
            self.close(clean=True)
            raise

    def _set_timeout(self, wanted_s: int, ioctl: Ioctl) -> None:
        try:
            ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", wanted_s))
            (actual_s,) = struct.unpack("i", ioctl(self._fd, WDIOC_GETTIMEOUT, bytes(4)))
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise UsageError(f"watchdog {self.path} does not support a timeout of "
                                 f"{wanted_s} s (watchdog_fire_timeout)") from None
            raise UsageError(f"watchdog {self.path}: cannot set its timeout: "
                             f"{exc.strerror}") from None
        if actual_s != wanted_s:
            raise UsageError(f"watchdog {self.path} took a timeout of {actual_s} s, not the "
                             f"{wanted_s} s asked (watchdog_fire_timeout)")

    def pet(self) -> None:
        os.write(self._fd, b"\0")
        self.pets += 1

    def close(self, clean: bool) -> None:
        """Close; disarm only if `clean` (nothing left for the watchdog to protect)."""
        if self._fd < 0:
            return
        if clean:
            os.write(self._fd, MAGIC_CLOSE)
        os.close(self._fd)
        self._fd = -1

    def describe(self) -> str:
        return f"{self.path} (emulated)" if self.emulated else self.path


def open_watchdog(spec: str, fire_timeout_s: float) -> Watchdog:
    if spec == "none":
        return NoWatchdog()
    return DeviceWatchdog(spec, fire_timeout_s)
