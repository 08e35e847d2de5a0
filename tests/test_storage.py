"""The O_DIRECT device on regular files and loop devices: alignment, bounds, errors, timeouts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from leasestore.errors import (
    DeviceMissing,
    DeviceTooSmall,
    DirectIOUnsupported,
    IOFailed,
    IOTimeout,
    NotAligned,
    StorageError,
)
from leasestore.storage.device import ReadOp, WriteOp
from leasestore.storage.odirect import DirectDevice, probe_path
from leasestore.testing.procs import LoopDevices, make_file

MiB = 1 << 20


def _round_trip(path: str) -> None:
    with DirectDevice(path) as device:
        payload = bytes(range(256)) * (device.sector_size // 256)
        device.write(device.sector_size, payload, 5)
        data = device.read(0, 4 * device.sector_size, 5)
        assert data[device.sector_size:2 * device.sector_size] == payload
        assert data[:device.sector_size] == bytes(device.sector_size)
        # The write went around the page cache and is visible to a plain reader.
        with open(path, "rb") as plain:
            plain.seek(device.sector_size)
            assert plain.read(device.sector_size) == payload


def test_round_trip_on_a_regular_file(lease_file: str) -> None:
    assert probe_path(lease_file) == (False, 512, 16 * MiB)
    _round_trip(lease_file)


def test_round_trip_on_a_loop_device(loop_device: str) -> None:
    is_block, sector, size = probe_path(loop_device)
    assert is_block and sector == 512 and size == 16 * MiB
    _round_trip(loop_device)


def test_loop_device_with_4k_sectors(loop_devices: LoopDevices, tmp_path: Path) -> None:
    device_path = loop_devices.attach(make_file(tmp_path / "4k.img", 8 * MiB), sector_size=4096)
    with DirectDevice(device_path) as device:
        assert device.sector_size == 4096
        with pytest.raises(NotAligned):
            device.read(512, 512, 5)
    _round_trip(device_path)


def test_batch_returns_each_outcome(lease_file: str) -> None:
    with DirectDevice(lease_file) as device:
        outcomes = device.submit(
            [WriteOp(0, b"\x01" * 512), WriteOp(1024, b"\x02" * 512), ReadOp(512, 512)], 5
        )
        assert outcomes == [None, None, bytes(512)]
        assert device.read(1024, 512, 5) == b"\x02" * 512


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DeviceMissing, match="no such file"):
        DirectDevice(str(tmp_path / "absent.img"))


def test_directory_is_not_a_device(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="neither a block device nor a regular file"):
        DirectDevice(str(tmp_path))


def test_misaligned_io_is_refused_before_any_io(lease_file: str) -> None:
    with DirectDevice(lease_file) as device:
        with pytest.raises(NotAligned):
            device.read(100, 512, 5)
        with pytest.raises(NotAligned):
            device.write(0, b"x" * 100, 5)


def test_io_beyond_the_end_is_refused(tmp_path: Path, loop_devices: LoopDevices) -> None:
    small = make_file(tmp_path / "small.img", 4096)
    with DirectDevice(small) as device, pytest.raises(DeviceTooSmall, match="beyond the end"):
        device.read(0, 8192, 5)
    assert os.path.getsize(small) == 4096
    loop = loop_devices.attach(make_file(tmp_path / "small-loop.img", 1 * MiB))
    with DirectDevice(loop) as device, pytest.raises(DeviceTooSmall):
        device.write(MiB, bytes(512), 5)


def test_filesystem_without_o_direct_is_reported(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    # ramfs has no direct I/O support; mounting it needs root, as loop devices do.
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mountpoint)], check=True)
    try:
        target = make_file(mountpoint / "lease.img", MiB)
        with pytest.raises(DirectIOUnsupported, match="rejects O_DIRECT"):
            DirectDevice(target)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_read_only_loop_device_fails_writes(loop_device: str) -> None:
    subprocess.run(["blockdev", "--setro", loop_device], check=True)
    with DirectDevice(loop_device) as device:
        with pytest.raises(IOFailed, match="write at 0 failed"):
            device.write(0, bytes(512), 5)
        assert device.read(0, 512, 5) == bytes(512)


def test_timed_out_io_is_abandoned_and_its_buffer_pinned(loop_device: str) -> None:
    with DirectDevice(loop_device) as device:
        # A deadline already passed: the I/O is submitted, then abandoned unreaped.
        with pytest.raises(IOTimeout, match="abandoned"):
            device.read(0, 8 * MiB, 0)
        assert device.abandoned_ios == 1
        # A later I/O reaps the abandoned completion, releasing its buffer to the collector.
        assert device.read(0, 512, 5) == bytes(512)
        assert device.abandoned_ios == 0


def test_timeout_in_a_batch_is_a_value(lease_file: str) -> None:
    with DirectDevice(lease_file) as device:
        outcomes = device.submit([ReadOp(0, MiB), ReadOp(MiB, MiB)], 0)
        assert all(isinstance(o, IOTimeout) for o in outcomes)
        assert device.read(0, 512, 5) == bytes(512)


def test_a_newer_write_never_lands_under_an_abandoned_older_one(loop_device: str) -> None:
    with DirectDevice(loop_device) as device:
        with pytest.raises(IOTimeout):
            device.write(0, b"\x01" * 512, 0)  # abandoned: it may still land later
        assert device.abandoned_ios == 1
        device.write(0, b"\x02" * 512, 5)  # waits for the older write before it is issued
        assert device.abandoned_ios == 0
        assert device.read(0, 512, 5) == b"\x02" * 512


def test_a_lent_view_never_changes_under_its_holder(lease_file: str) -> None:
    """read_view lends the AIO buffer itself; the buffer is reused only once no view of it
    (nor anything made from it) is alive, so later reads never rewrite what a holder sees."""
    with DirectDevice(lease_file) as device:
        first_bytes, second_bytes = b"\x11" * 512, b"\x22" * 512
        device.write(0, first_bytes, 5)
        first = device.read_view(0, 4096, 5)
        assert isinstance(first, memoryview) and first.readonly
        assert first[:512] == first_bytes
        device.write(0, second_bytes, 5)
        slice_of_first = first[:512]
        del first  # a slice keeps the whole buffer lent
        second = device.read_view(0, 4096, 5)
        assert second[:512] == second_bytes
        assert slice_of_first == first_bytes
        del second, slice_of_first
        # Every view is gone: reads cycle through the pooled buffers instead of growing it.
        addresses = set()
        for _ in range(8):
            view = device.read_view(0, 4096, 5)
            addresses.add(np.frombuffer(view, dtype=np.uint8).ctypes.data)
            del view
        assert len(addresses) == 1
        assert device.read(0, 512, 5) == second_bytes  # a plain read is a copy: bytes
