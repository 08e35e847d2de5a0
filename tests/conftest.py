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

MiB = 1 << 20


def _missing(what: str, env: str) -> None:
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} is required ({env}=1) but not available")
    pytest.skip(f"{what} not available")


def make_file(path: Path, size_b: int, allocate: bool = False) -> str:
    """A zero-filled file; sparse unless `allocate` (then every block is really written)."""
    with path.open("wb") as f:
        if allocate:
            chunk = bytes(1 << 20)
            for _ in range(size_b // len(chunk)):
                f.write(chunk)
            f.write(bytes(size_b % len(chunk)))
            os.fsync(f.fileno())
        else:
            f.truncate(size_b)
    return str(path)


@pytest.fixture
def lease_file(tmp_path: Path) -> str:
    """A 16 MiB zero-filled regular file on a filesystem that supports O_DIRECT."""
    return make_file(tmp_path / "lease.img", 16 * MiB)


class LoopDevices:
    """Attaches loop devices over backing files and detaches every one at teardown."""

    def __init__(self) -> None:
        self.attached: list[str] = []

    def attach(self, backing: str, sector_size: int = 512) -> str:
        cmd = ["losetup", "-f", "--show", "--direct-io=on", f"--sector-size={sector_size}", backing]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            cmd.remove("--direct-io=on")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        device = out.stdout.strip()
        self.attached.append(device)
        return device

    def detach_all(self) -> None:
        for device in reversed(self.attached):
            subprocess.run(["blockdev", "--setrw", device], capture_output=True)
            subprocess.run(["losetup", "-d", device], capture_output=True)
        self.attached.clear()


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
