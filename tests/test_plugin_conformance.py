"""Both lock-manager backends pass the public conformance suite; plus backend specifics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasestore import client
from leasestore.direct import format_lockspace, format_resource, read_paxos_leader
from leasestore.plugin import (
    Capability,
    ConfigUnsupported,
    LockBusy,
    OperationDenied,
    OperationInvalid,
    ResourceFlags,
    ResourceType,
    load_driver,
)
from leasestore.plugin.diskpaxos import AUTO_LOCKSPACE, DiskPaxosDriver
from leasestore.plugin.fcntl import FcntlDriver
from leasestore.testing.conformance import ConformanceTarget, check_lock_manager
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file

ALL_SCENARIOS = 9


def _disks(base: Path) -> object:
    def disk(name: str) -> str:
        path = base / f"{name}.img"
        path.touch()
        return str(path)
    return disk


def test_fcntl_direct_passes_the_conformance_suite(tmp_path: Path) -> None:
    target = ConformanceTarget(lambda: FcntlDriver({}), _disks(tmp_path))  # type: ignore[arg-type]
    assert len(check_lock_manager(target)) == ALL_SCENARIOS


def test_fcntl_indirect_passes_and_cleans_its_lock_files(tmp_path: Path) -> None:
    lock_dir = tmp_path / "lockspace"
    config = {"file_lockspace_dir": str(lock_dir)}
    target = ConformanceTarget(lambda: FcntlDriver(config), _disks(tmp_path))  # type: ignore[arg-type]
    assert len(check_lock_manager(target)) == ALL_SCENARIOS
    leftovers = sorted(p.name for p in lock_dir.iterdir())
    # Files of locks still held by VMs that were stopped may remain; none is a bare path.
    assert all(len(name) == 64 for name in leftovers)


@pytest.fixture(scope="module")
def diskpaxos_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    if os.geteuid() != 0:
        if os.environ.get("LEASESTORE_REQUIRE_BLOCKDEV") == "1":
            pytest.fail("root is required")
        pytest.skip("the diskpaxos backend acts for VM pids, which needs root")
    daemon = DaemonProc(tmp_path_factory.mktemp("plugin"), "plugin-host", 1, 5)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.mark.slow
def test_diskpaxos_passes_the_conformance_suite(diskpaxos_daemon: DaemonProc,
                                                 tmp_path: Path) -> None:
    config = {"auto_disk_leases": True, "host_id": 1, "io_timeout": 1,
              "disk_lease_dir": str(tmp_path / "leases"), "run_dir": diskpaxos_daemon.run_dir}
    target = ConformanceTarget(lambda: DiskPaxosDriver(config), _disks(tmp_path))  # type: ignore[arg-type]
    assert len(check_lock_manager(target)) == ALL_SCENARIOS
    assert (tmp_path / "leases" / AUTO_LOCKSPACE).exists()


SCENARIO_LEASES = ("excl", "shared", "ro", "death", "pause", "restrict", "boot", "hotplug",
                   "restart", "migrate")


@pytest.mark.slow
@pytest.mark.parametrize("disks", [1, 3])
def test_diskpaxos_passes_with_named_leases_on_loop_devices(
    diskpaxos_daemon: DaemonProc, tmp_path: Path, disks: int
) -> None:
    """Named leases on one loop device, and on three (each lease on all three disks)."""
    loops = LoopDevices()
    try:
        size = (2 + len(SCENARIO_LEASES)) << 20
        devices = [loops.attach(make_file(tmp_path / f"leases{i}.img", size))
                   for i in range(disks)]
        device = devices[0]
        format_lockspace(device, "conf-ls", 0, io_timeout_s=1)
        offsets = {name: (i + 1) << 20 for i, name in enumerate(SCENARIO_LEASES)}
        for name, offset in offsets.items():
            format_resource(device, "conf-ls", name, offset,
                            extra_disks=[(d, offset) for d in devices[1:]])
        diskpaxos_daemon.call(client.add_lockspace, "conf-ls", 1, device, 0)
        config = {"run_dir": diskpaxos_daemon.run_dir}
        target = ConformanceTarget(
            lambda: DiskPaxosDriver(config), lambda name: name,
            lease=lambda name: (name, {"lockspace": "conf-ls", "path": device,
                                       "offset": offsets[name],
                                       "further_disks": [(d, offsets[name])
                                                         for d in devices[1:]]}))
        assert len(check_lock_manager(target)) == ALL_SCENARIOS
        lvers = {name: {read_paxos_leader(d, offset).lver for d in devices}
                 for name, offset in offsets.items()}
        assert all(len(found) == 1 for found in lvers.values()), lvers  # every disk written
        assert any(found != {0} for found in lvers.values())
        diskpaxos_daemon.call(client.rem_lockspace, "conf-ls", 1, device, 0)
    finally:
        loops.detach_all()


def test_load_driver_by_entry_point_with_a_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "qemu-lockd.toml"
    config.write_text(f'file_lockspace_dir = "{tmp_path / "locks"}"\n')
    driver = load_driver("fcntl", str(config))
    assert isinstance(driver, FcntlDriver)
    assert driver.config["file_lockspace_dir"] == str(tmp_path / "locks")
    assert Capability.USES_STATE not in driver.capabilities
    assert Capability.USES_STATE in load_driver("diskpaxos").capabilities
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_option = 1\n")
    with pytest.raises(Exception, match="unknown config key"):
        load_driver("fcntl", str(bad))
    with pytest.raises(Exception, match="no lock driver"):
        load_driver("nope")


def test_fcntl_rules(tmp_path: Path) -> None:
    driver = FcntlDriver({"auto_disk_leases": False})
    manager = driver.new("6f1e9c1e-0000-4000-8000-000000000001", "vm", 1, os.getpid())
    disk = tmp_path / "d.img"
    disk.touch()
    manager.add_resource(ResourceType.DISK, str(disk))
    with pytest.raises(ConfigUnsupported, match="no leases specified"):
        manager.acquire()
    other = FcntlDriver({}).new("6f1e9c1e-0000-4000-8000-000000000002", "vm2", 2, 1)
    other.add_resource(ResourceType.DISK, str(disk))
    with pytest.raises(OperationInvalid, match="VM process itself"):
        other.acquire()
    with pytest.raises(OperationDenied, match="does not use state"):
        other.acquire(state="ls:r:/p:0:1")
    own = FcntlDriver({}).new("6f1e9c1e-0000-4000-8000-000000000003", "vm3", 3, os.getpid())
    own.add_resource(ResourceType.DISK, str(disk), ResourceFlags.SHARED)
    own.acquire()
    with pytest.raises(OperationInvalid, match="only before acquire"):
        own.add_resource(ResourceType.DISK, str(disk))
    again = FcntlDriver({}).new("6f1e9c1e-0000-4000-8000-000000000004", "vm4", 4, os.getpid())
    again.add_resource(ResourceType.DISK, str(disk), ResourceFlags.SHARED)
    with pytest.raises(LockBusy, match="already locked here"):
        again.acquire()
    assert own.release() is None


def test_the_readme_example_runs() -> None:
    example = Path(__file__).resolve().parent.parent / "tools" / "vm_manager_example.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "a second VM on root.img is refused" in out.stdout
    assert "resumed: locks taken again" in out.stdout
