"""Shared fixtures: lease files, loop devices, and the real sanlock.

Prerequisites that are missing skip a test locally, but fail it when CI demands them with
LEASESTORE_REQUIRE_BLOCKDEV=1 / LEASESTORE_REQUIRE_SANLOCK=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasestore.testing.procs import LoopDevices, make_file
from leasestore.testing.sanlock_clients import SANLOCK_PYTHON
from tests.prereq import missing, require_blockdev

MiB = 1 << 20


@pytest.fixture
def lease_file(tmp_path: Path) -> str:
    """A 16 MiB zero-filled regular file on a filesystem that supports O_DIRECT."""
    return make_file(tmp_path / "lease.img", 16 * MiB)


@pytest.fixture
def loop_devices() -> Iterator[LoopDevices]:
    require_blockdev()
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
        missing("the sanlock binary", "LEASESTORE_REQUIRE_SANLOCK")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def sanlock_python() -> str:
    """/usr/bin/python3 with the sanlock binding (python3-sanlock)."""
    found = os.path.exists(SANLOCK_PYTHON) and subprocess.run(
        [SANLOCK_PYTHON, "-c", "import sanlock"], capture_output=True, check=False
    ).returncode == 0
    if not found:
        missing(f"{SANLOCK_PYTHON} with python3-sanlock", "LEASESTORE_REQUIRE_SANLOCK")
    return SANLOCK_PYTHON
