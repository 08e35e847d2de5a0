#!/usr/bin/env python3
"""How a VM manager uses the lock-manager interface: start, pause, resume, hotplug, stop.

Runs with the zero-config fcntl backend on image files in a temp dir:
    python3 tools/vm_manager_example.py
(With `--driver diskpaxos --config FILE`, the same code uses leases on shared storage through
the leasestore daemon.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from pathlib import Path

from leasestore.plugin import (
    AcquireFlags,
    LockBusy,
    ResourceFlags,
    ResourceType,
    load_driver,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", default="fcntl")
    parser.add_argument("--config")
    args = parser.parse_args()
    driver = load_driver(args.driver, args.config)
    print(f"driver {driver.name}: capabilities "
          f"{sorted(c.value for c in driver.capabilities)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root.img"
        data = Path(tmp) / "data.img"
        iso = Path(tmp) / "install.iso"
        for image in (root, data, iso):
            image.touch()
        vm = uuid.uuid4()

        # Start: here the VM process itself registers and locks its disks (the fcntl backend
        # keeps locks in the VM process, so they vanish if it dies).
        manager = driver.new(vm, "demo-vm", 1, os.getpid())
        manager.add_resource(ResourceType.DISK, str(root))
        manager.add_resource(ResourceType.DISK, str(iso), ResourceFlags.READONLY)
        manager.acquire()
        manager.free()
        print("started: root.img locked, install.iso read-only (no lock)")

        # A second VM wanting the same image is refused.
        intruder = driver.new(uuid.uuid4(), "other-vm", 2, os.getpid())
        intruder.add_resource(ResourceType.DISK, str(root))
        try:
            intruder.acquire()
        except LockBusy as exc:
            print(f"a second VM on root.img is refused: {exc}")
        intruder.free()

        # Hotplug: a manager for the running VM with only the new disk.
        hotplug = driver.new(vm, "demo-vm", 1, os.getpid(), started=True)
        hotplug.add_resource(ResourceType.DISK, str(data))
        hotplug.acquire()
        hotplug.free()
        print("hotplugged data.img (locked)")

        # Pause: release everything and keep the state; resume: acquire with it.
        pause = driver.new(vm, "demo-vm", 1, os.getpid())
        pause.add_resource(ResourceType.DISK, str(root))
        pause.add_resource(ResourceType.DISK, str(data))
        state = pause.release()
        pause.free()
        print(f"paused: locks released, state {state!r}")
        resume = driver.new(vm, "demo-vm", 1, os.getpid())
        resume.add_resource(ResourceType.DISK, str(root))
        resume.add_resource(ResourceType.DISK, str(data))
        resume.acquire(state=state, flags=AcquireFlags(0))
        resume.free()
        print("resumed: locks taken again")

        stop = driver.new(vm, "demo-vm", 1, os.getpid())
        stop.add_resource(ResourceType.DISK, str(root))
        stop.add_resource(ResourceType.DISK, str(data))
        stop.release()
        stop.free()
        print("stopped: all locks released")
    driver.deinit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
