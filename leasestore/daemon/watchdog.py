"""Watchdogs the daemon pets only while every lockspace's host lease is valid.

`none` never resets the machine (unsafe, as sanlock's `-w 0`: a hung host's lease holders can
outlive its lease). `/dev/watchdog` (or any watchdog device path) is opened with its timeout set to
watchdog_fire_timeout; if petting stops, the hardware resets the host that many seconds later,
which is before other hosts may take over (host_dead = 8 × io_timeout + watchdog_fire_timeout).
A clean shutdown writes the magic 'V' so that closing the device disarms it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from typing import Protocol

log = logging.getLogger(__name__)
WDIOC_SETTIMEOUT = 0xC0045706


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


class DeviceWatchdog:
    def __init__(self, path: str, fire_timeout_s: float) -> None:
        self.path = path
        self.pets = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", max(1, int(fire_timeout_s))))
        except OSError as exc:
            log.warning("watchdog %s: cannot set timeout: %s", path, exc)

    def pet(self) -> None:
        os.write(self._fd, b"\0")
        self.pets += 1

    def close(self, clean: bool) -> None:
        if self._fd < 0:
            return
        if clean:
            os.write(self._fd, b"V")
        os.close(self._fd)
        self._fd = -1

    def describe(self) -> str:
        return self.path


def open_watchdog(spec: str, fire_timeout_s: float) -> Watchdog:
    if spec == "none":
        return NoWatchdog()
    return DeviceWatchdog(spec, fire_timeout_s)
