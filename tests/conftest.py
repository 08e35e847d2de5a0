"""Shared fixtures: lease files, loop devices, and the real sanlock.

Prerequisites that are missing skip a test locally, but fail it when CI demands them with
LEASESTORE_REQUIRE_BLOCKDEV=1 / LEASESTORE_REQUIRE_SANLOCK=1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasestore.testing.procs import LoopDevices, make_file

MiB = 1 << 20


def _missing(what: str, env: str) -> None:
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} is required ({env}=1) but not available")
    pytest.skip(f"{what} not available")


@pytest.fixture
def lease_file(tmp_path: Path) -> str:
    """A 16 MiB zero-filled regular file on a filesystem that supports O_DIRECT."""
    return make_file(tmp_path / "lease.img", 16 * MiB)


@pytest.fixture
def loop_devices() -> Iterator[LoopDevices]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        _missing("root and losetup", "LEASESTORE_REQUIRE_BLOCKDEV")
    loops = LoopDevices()
    try:
        yield loops
    finally:
        loops.detach_all()


@pytest.fixture
def loop_device(loop_devices: LoopDevices, tmp_path: Path) -> str:
    """A 16 MiB loop device with 512-byte sectors over a file in tmp_path."""
    return loop_devices.attach(make_file(tmp_path / "loop.img", 16 * MiB))


@pytest.fixture(scope="session")
def sanlock_bin() -> str:
    path = shutil.which("sanlock")
    if path is None:
        _missing("the sanlock binary", "LEASESTORE_REQUIRE_SANLOCK")
    assert path is not None
    return path
