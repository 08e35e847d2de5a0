"""libvirt's sanlock lock-driver call sequence, replayed through libsanlock_client.so.1 (ctypes).

Run as a program, in a process of its own (libsanlock reads SANLOCK_RUN_DIR once per process),
it does what libvirtd and its QEMU child do with the lock plugin (SANLOCK-WIRE.md §7) against
whatever daemon SANLOCK_RUN_DIR points at, and prints one JSON object with every call's result:

- auto_disk_leases init: ALIGN, WRITE_LOCKSPACE (host_id 0, flags 0, io_timeout), the lease
  file's WRITE_RESOURCE (sanlock_init with no lockspace), then a blocking ADD_LOCKSPACE;
- VM start: a child registers, sets its killpath, restricts itself (RESTRICT_ALL) and execs a
  stand-in for QEMU that inherits the registered socket;
- the manager probes it by pid (INQUIRE), acquires the disk lease for it by pid with the VM's
  name as owner, inquires its state, a second host's-style acquire of the same lease from
  another registered process is refused, then releases by pid with the count from inquire;
- the VM exits: its socket closes, and a fresh acquire of the lease succeeds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

PATH_LEN = 1024
NAME_LEN = 48
RESTRICT_ALL = 0x1
RES_SHARED = 0x4


class Disk(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char * PATH_LEN), ("offset", ctypes.c_uint64),
                ("pad1", ctypes.c_uint32), ("pad2", ctypes.c_uint32)]


class Resource(ctypes.Structure):
    """sanlk_resource with room for one disk."""

    _fields_ = [("lockspace_name", ctypes.c_char * NAME_LEN), ("name", ctypes.c_char * NAME_LEN),
                ("lver", ctypes.c_uint64), ("data64", ctypes.c_uint64),
                ("data32", ctypes.c_uint32), ("unused", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("num_disks", ctypes.c_uint32),
                ("disks", Disk * 1)]


class Lockspace(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * NAME_LEN), ("host_id", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("host_id_disk", Disk)]


class Options(ctypes.Structure):
    _fields_ = [("owner_name", ctypes.c_char * NAME_LEN), ("flags", ctypes.c_uint32),
                ("len", ctypes.c_uint32)]


def load() -> ctypes.CDLL:
    for name in ("libsanlock_client.so.1", "libsanlock.so.1"):
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise OSError("neither libsanlock_client.so.1 nor libsanlock.so.1 is installed")


def _resource(lockspace: str, name: str, path: str, offset: int) -> Resource:
    res = Resource()
    res.lockspace_name = lockspace.encode()
    res.name = name.encode()
    res.num_disks = 1
    res.disks[0].path = path.encode()
    res.disks[0].offset = offset
    return res


def _lockspace(name: str, host_id: int, path: str) -> Lockspace:
    ls = Lockspace()
    ls.name = name.encode()
    ls.host_id = host_id
    ls.host_id_disk.path = path.encode()
    return ls


class Libvirt:
    """The plugin's calls, each returning libsanlock's int result."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def inquire(self, pid: int) -> tuple[int, int, str | None]:
        count = ctypes.c_int(-1)
        state = ctypes.c_char_p()
        rv = self.lib.sanlock_inquire(-1, pid, 0, ctypes.byref(count), ctypes.byref(state))
        text = state.value.decode() if state.value else None
        return rv, count.value, text

    def acquire(self, pid: int, res: Resource | None, owner: str) -> int:
        options = Options()
        options.owner_name = owner.encode()
        if res is None:  # a VM with no leases: count 0 only names the process
            return int(self.lib.sanlock_acquire(-1, pid, 0, 0, None, ctypes.byref(options)))
        array = (ctypes.POINTER(Resource) * 1)(ctypes.pointer(res))
        return int(self.lib.sanlock_acquire(-1, pid, 0, 1, array, ctypes.byref(options)))

    def release(self, pid: int, res: Resource, count: int) -> int:
        array = (ctypes.POINTER(Resource) * 1)(ctypes.pointer(res))
        return int(self.lib.sanlock_release(-1, pid, 0, count, array))


def vm_child(killpath: str, args: str, program: list[str]) -> None:
    """In the forked VM child: register, set the killpath, restrict, exec the program."""
    lib = load()
    sock = lib.sanlock_register()
    if sock < 0:
        os._exit(100)
    if lib.sanlock_killpath(sock, 0, killpath.encode(), args.encode()) < 0:
        os._exit(101)
    os.set_inheritable(sock, True)
    if lib.sanlock_restrict(sock, RESTRICT_ALL) < 0:
        os._exit(102)
    os.execv(program[0], program)


def run(lockspace: str, host_id: int, lockspace_path: str, lease_path: str,
        io_timeout_s: int) -> dict[str, Any]:
    lib = load()
    plugin = Libvirt(lib)
    out: dict[str, Any] = {}
    ls = _lockspace(lockspace, 0, lockspace_path)
    out["align"] = lib.sanlock_align(ctypes.byref(ls.host_id_disk))
    out["write_lockspace"] = lib.sanlock_write_lockspace(ctypes.byref(ls), 0, 0, io_timeout_s)
    disk_lease = _resource(lockspace, "0123456789abcdef0123456789abcdef", lease_path, 0)
    out["init_resource"] = lib.sanlock_init(None, ctypes.byref(disk_lease), 0, 0)
    ls.host_id = host_id
    started = time.monotonic()
    out["add_lockspace"] = lib.sanlock_add_lockspace_timeout(ctypes.byref(ls), 0, io_timeout_s)
    out["add_lockspace_s"] = round(time.monotonic() - started, 1)
    out["add_again"] = lib.sanlock_add_lockspace_timeout(ctypes.byref(ls), 0, io_timeout_s)
    out["inq_lockspace"] = lib.sanlock_inq_lockspace(ctypes.byref(ls), 0)

    vm = subprocess.Popen(
        [sys.executable, __file__, "--vm-child", "/usr/lib/libvirt/libvirt_sanlock_helper",
         "qemu:///system 5c3f0e53-uuid poweroff", "/bin/sleep", "60"])
    try:
        deadline = time.monotonic() + 20
        while True:  # the child registers, then execs: probe until the manager sees it
            probe = plugin.inquire(vm.pid)
            if probe[0] >= 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out["probe"] = list(probe)
        out["probe_unknown_pid"] = plugin.inquire(0x7FFFFFF0)[0]
        out["acquire_none"] = plugin.acquire(vm.pid, None, "vm-demo")
        out["acquire"] = plugin.acquire(vm.pid, disk_lease, "vm-demo")
        rv, count, state = plugin.inquire(vm.pid)
        out["inquire"] = [rv, count, state]
        other = subprocess.Popen(["/bin/sleep", "60"])
        try:
            out["other_acquire"] = _acquire_as_registered(lockspace, lease_path)
        finally:
            other.kill()
            other.wait()
        out["release"] = plugin.release(vm.pid, disk_lease, count)
        out["inquire_after_release"] = list(plugin.inquire(vm.pid))
        out["reacquire"] = plugin.acquire(vm.pid, disk_lease, "vm-demo")
    finally:
        vm.send_signal(signal.SIGKILL)
        vm.wait()
    deadline = time.monotonic() + 20
    while True:  # the VM's exit closed its socket: the daemon releases its lease
        taken = _acquire_as_registered(lockspace, lease_path)
        if taken == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    out["acquire_after_vm_exit"] = taken
    out["rem_lockspace"] = lib.sanlock_rem_lockspace(ctypes.byref(ls), 0)
    return out


def _acquire_as_registered(lockspace: str, lease_path: str) -> int:
    """Another process registers and tries the lease for itself (then exits, releasing it)."""
    probe = subprocess.run(
        [sys.executable, __file__, "--acquire-self", lockspace, lease_path],
        capture_output=True, text=True, timeout=60, check=False)
    return int(probe.stdout.strip() or "-9999")


def acquire_self(lockspace: str, lease_path: str) -> int:
    lib = load()
    sock = lib.sanlock_register()
    if sock < 0:
        return int(sock)
    res = _resource(lockspace, "0123456789abcdef0123456789abcdef", lease_path, 0)
    array = (ctypes.POINTER(Resource) * 1)(ctypes.pointer(res))
    return int(lib.sanlock_acquire(sock, -1, 0, 1, array, None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vm-child", nargs=argparse.REMAINDER)
    parser.add_argument("--acquire-self", nargs=2, metavar=("LOCKSPACE", "LEASE_FILE"))
    parser.add_argument("--lockspace", default="__LIBVIRT__DISKS__")
    parser.add_argument("--host-id", type=int, default=1)
    parser.add_argument("--lockspace-path")
    parser.add_argument("--lease-path")
    parser.add_argument("--io-timeout", type=int, default=1)
    args = parser.parse_args(argv)
    if args.vm_child:
        killpath, kill_args, *program = args.vm_child
        vm_child(killpath, kill_args, program)
        return 0
    if args.acquire_self:
        print(acquire_self(*args.acquire_self))
        return 0
    if not args.lockspace_path or not args.lease_path:
        parser.error("--lockspace-path and --lease-path are required")
    print(json.dumps(run(args.lockspace, args.host_id, args.lockspace_path, args.lease_path,
                         args.io_timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
