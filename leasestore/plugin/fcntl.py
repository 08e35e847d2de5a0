"""fcntl backend: zero-config, host-local locks that vanish with the process holding them.

Each lockable resource maps to a lock file: the disk path itself (direct), or, with
`file_lockspace_dir`, a file there named by the SHA-256 of the disk path (indirect, created on
demand). A lease resource locks its `path` (offset must be 0). The lock is an open-file-
description lock on byte 0, length 1 (exclusive = write lock, SHARED = read lock), taken by the
VM process itself, on an fd it keeps (inheritable, so it survives exec of the VM program). The
kernel drops the lock when the VM process dies. Locks are kept in a process-wide table, so they
outlive the short-lived managers that took them.

Protects two VMs on one host from one image; on a shared filesystem whose locks are coherent
across hosts it also protects across hosts (no protection for shared block devices).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl as _fcntl
import hashlib
import os
import struct
from typing import Any

from leasestore.plugin.api import (
    AcquireFlags,
    Capability,
    LockBusy,
    LockDriver,
    LockManager,
    OperationDenied,
    OperationInvalid,
    Resource,
    ResourceType,
    VmObject,
)

_FLOCK = "hh4xqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid
_held: dict[str, tuple[int, bool]] = {}
"""Lock file path -> (fd, autocreated) for the locks this process holds."""
_restricted: set[int] = set()
"""Pids whose own lock changes are refused (acquire with RESTRICT)."""


def _lock(fd: int, exclusive: bool) -> bool:
    kind = _fcntl.F_WRLCK if exclusive else _fcntl.F_RDLCK
    try:
        _fcntl.fcntl(fd, _fcntl.F_OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _open_locked(path: str, exclusive: bool, autocreate: bool, owner: str) -> int:
    """Open and lock `path`; with autocreate, retry if the file was replaced meanwhile."""
    while True:
        # Indirect lock files are ours: always writable, so a shared holder can later try the
        # exclusive upgrade that decides whether the file may be removed.
        writable = exclusive or autocreate
        flags = (os.O_RDWR if writable else os.O_RDONLY) | (os.O_CREAT if autocreate else 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            raise OperationInvalid(f"lock file {path} does not exist") from None
        if not _lock(fd, exclusive):
            os.close(fd)
            raise LockBusy(f"resource {owner!r} is locked ({path})")
        if not autocreate:
            return fd
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # unlinked or replaced between open and lock: take the new file


class FcntlManager(LockManager):
    def _target(self, resource: Resource) -> tuple[str, bool] | None:
        """(lock file, autocreated) for a resource, or None if it takes no lock."""
        config = self.driver.config
        if resource.readonly:
            return None
        if resource.type == ResourceType.LEASE:
            if int(resource.params.get("offset", 0)) != 0:
                raise OperationInvalid("offset must be zero for this lock manager")
            return str(resource.params["path"]), False
        if not config["auto_disk_leases"]:
            return None
        directory = config.get("file_lockspace_dir")
        if directory:
            digest = hashlib.sha256(resource.name.encode()).hexdigest()
            return os.path.join(directory, digest), True
        return resource.name, False

    def _check_own_process(self) -> None:
        if self.vm.pid != os.getpid():
            raise OperationInvalid("fcntl locks are held by the VM process itself: acquire and "
                                   "release them from it")
        if self.vm.pid in _restricted:
            raise OperationDenied("this process restricted itself from changing locks")

    def _do_acquire(self, state: str | None, flags: AcquireFlags, on_failure: str
                    ) -> int | None:
        del state, on_failure
        if flags & AcquireFlags.REGISTER_ONLY:
            if flags & AcquireFlags.RESTRICT:
                _restricted.add(self.vm.pid)
            return None
        self._check_own_process()
        taken: list[str] = []
        try:
            for resource in self.resources:
                target = self._target(resource)
                if target is None:
                    continue
                path, autocreated = target
                if path in _held:
                    raise LockBusy(f"resource {resource.name!r} is already locked here")
                fd = _open_locked(path, not resource.shared, autocreated, resource.name)
                os.set_inheritable(fd, True)
                _held[path] = (fd, autocreated)
                taken.append(path)
        except BaseException:
            for path in taken:
                self._unlock(path)
            raise
        self._check_disks_covered(bool(taken))
        if flags & AcquireFlags.RESTRICT:
            _restricted.add(self.vm.pid)
        return None

    @staticmethod
    def _unlock(path: str) -> None:
        fd, autocreated = _held.pop(path)
        if autocreated and _lock(fd, exclusive=True):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # nobody else holds it: the indirect lock file can go
        os.close(fd)

    def _do_release(self) -> str | None:
        self._check_own_process()
        targets = [self._target(r) for r in self.resources] if self.resources else [
            (path, auto) for path, (_, auto) in _held.items()]
        for target in targets:
            if target is not None and target[0] in _held:
                self._unlock(target[0])
        return None

    def _do_inquire(self) -> str | None:
        return None


class FcntlDriver(LockDriver):
    name = "fcntl"
    capabilities = frozenset({Capability.RESOURCES, Capability.HOTPLUG, Capability.MIGRATION})
    defaults: dict[str, Any] = {
        "auto_disk_leases": True,
        "require_lease_for_disks": None,
        "file_lockspace_dir": None,
    }

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        directory = self.config.get("file_lockspace_dir")
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def _manager(self, vm: VmObject) -> LockManager:
        return FcntlManager(self, vm)
