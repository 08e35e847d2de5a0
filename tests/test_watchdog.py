"""Watchdog device handling: a device that does not take our timeout is refused, and only a
clean close disarms."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from leasestore.daemon.watchdog import (
    MAGIC_CLOSE,
    WDIOC_GETTIMEOUT,
    WDIOC_SETTIMEOUT,
    DeviceWatchdog,
    open_watchdog,
)
from leasestore.errors import UsageError


class FakeWatchdogIoctl:
    """Stands in for a watchdog driver behind a character device (/dev/null)."""

    def __init__(self, min_s: int = 1, max_s: int = 600, rounds_to: int | None = None) -> None:
        self.min_s, self.max_s, self.rounds_to = min_s, max_s, rounds_to
        self.timeout_s = 60

    def __call__(self, fd: int, request: int, arg: bytes) -> bytes:
        if request == WDIOC_SETTIMEOUT:
            (wanted,) = struct.unpack("i", arg)
            if not self.min_s <= wanted <= self.max_s:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            self.timeout_s = self.rounds_to if self.rounds_to is not None else wanted
            return struct.pack("i", self.timeout_s)
        if request == WDIOC_GETTIMEOUT:
            return struct.pack("i", self.timeout_s)
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))


def test_a_device_that_takes_the_timeout_is_used() -> None:
    fake = FakeWatchdogIoctl()
    watchdog = DeviceWatchdog("/dev/null", 5, ioctl=fake)
    assert fake.timeout_s == 5
    watchdog.pet()
    assert watchdog.pets == 1
    watchdog.close(clean=True)


def test_a_fire_timeout_below_the_device_minimum_is_an_error() -> None:
    with pytest.raises(UsageError, match="does not support a timeout of 2 s"):
        DeviceWatchdog("/dev/null", 2, ioctl=FakeWatchdogIoctl(min_s=5))


def test_a_device_reporting_another_timeout_is_refused() -> None:
    with pytest.raises(UsageError, match="took a timeout of 30 s, not the 5 s"):
        DeviceWatchdog("/dev/null", 5, ioctl=FakeWatchdogIoctl(rounds_to=30))


def test_a_character_device_that_is_no_watchdog_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot set its timeout"):
        open_watchdog("/dev/null", 5)


@pytest.mark.parametrize("fire_timeout_s", [0.5, 2.5])
def test_a_device_takes_whole_seconds_only(fire_timeout_s: float) -> None:
    with pytest.raises(UsageError, match="whole seconds"):
        DeviceWatchdog("/dev/null", fire_timeout_s, ioctl=FakeWatchdogIoctl())


def test_a_regular_file_or_missing_path_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "watchdog"
    plain.write_bytes(b"")
    with pytest.raises(UsageError, match="not a watchdog device"):
        open_watchdog(str(plain), 5)
    with pytest.raises(UsageError, match="No such file"):
        open_watchdog(str(tmp_path / "missing"), 5)


def test_only_a_clean_close_disarms(tmp_path: Path) -> None:
    fifo = tmp_path / "wd"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        armed = DeviceWatchdog(str(fifo), 5)
        armed.pet()
        armed.close(clean=False)
        assert os.read(reader, 100) == b"\0"
        disarmed = DeviceWatchdog(str(fifo), 5)
        disarmed.close(clean=True)
        assert os.read(reader, 100) == MAGIC_CLOSE
    finally:
        os.close(reader)
