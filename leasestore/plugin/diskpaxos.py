"""diskpaxos backend: leases on shared storage through the leasestore daemon.

The VM process registers with its host's daemon (acquire from the VM process; the returned fd
is the registration, to be inherited by the VM program); its leases are released when that
registration closes, and the daemon kills it if the host loses its lease. Locking from the
manager process acts for the registered VM pid (root only, as sanlock allows).

The state string is sanlock's text form: space-separated
`lockspace:resource:path:offset[:path:offset...]:lver` (`SH` instead of lver when shared). A
LEASE resource on several disks names the further ones in its `further_disks` param. Unlike
libvirt's sanlock driver, acquiring with a state *enforces* each exclusive lease's version: if
the lease moved on since the state was taken (for example another host acquired it during a
migration), acquire raises StateMismatch.

With `auto_disk_leases`, each writable disk gets a lease named by the MD5 of its path in the
`__LEASESTORE_DISKS__` lockspace under `disk_lease_dir`; the lockspace and lease files are
created and formatted on demand, and the host joins with `host_id`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from leasestore import client, direct
from leasestore.errors import (
    AcquireIdLive,
    AcquireLver,
    AcquireOther,
    AcquireOwned,
    LeaseAlreadyHeld,
    LeasestoreError,
    LockspaceExists,
    NotRegistered,
    SharedHolders,
)
from leasestore.plugin.api import (
    AcquireFlags,
    Capability,
    ConfigUnsupported,
    LockBusy,
    LockDriver,
    LockManager,
    LockManagerError,
    OperationDenied,
    OperationInvalid,
    Resource,
    ResourceType,
    StateMismatch,
    VmObject,
)
from leasestore.specs import ResourceSpec
from leasestore.units import MiB

AUTO_LOCKSPACE = "__LEASESTORE_DISKS__"
_Lease = tuple[str, str, tuple[tuple[str, int], ...]]
"""(lockspace, name, disks) of one lease."""
_restricted: set[int] = set()


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Daemon errors as plugin errors."""
    try:
        yield
    except (AcquireIdLive, AcquireOwned, AcquireOther, SharedHolders, LeaseAlreadyHeld) as exc:
        raise LockBusy(str(exc)) from exc
    except AcquireLver as exc:
        raise StateMismatch(str(exc)) from exc
    except NotRegistered as exc:
        raise OperationInvalid(str(exc)) from exc
    except LockManagerError:
        raise
    except LeasestoreError as exc:
        raise LockManagerError(str(exc)) from exc


def _create_area(path: str, formatter: Callable[[], object]) -> None:
    """Create a 1 MiB lease file exclusively and format it; an existing file is left alone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.ftruncate(fd, MiB)
    finally:
        os.close(fd)
    formatter()


class DiskPaxosManager(LockManager):
    driver: DiskPaxosDriver

    def _lease_of(self, resource: Resource) -> _Lease | None:
        """(lockspace, name, disks) for a resource, or None if it takes no lock."""
        if resource.readonly:
            return None
        if resource.type == ResourceType.LEASE:
            lockspace = str(resource.params.get("lockspace") or "")
            if not lockspace:
                raise OperationInvalid(f"lease {resource.name!r} needs a lockspace param")
            return lockspace, resource.name, _lease_disks(resource)
        if not self.driver.config["auto_disk_leases"]:
            return None
        lockspace, name, path, offset = self.driver.disk_lease(resource.name)
        return lockspace, name, ((path, offset),)

    def _leases(self) -> list[tuple[_Lease, Resource]]:
        pairs = [(self._lease_of(r), r) for r in self.resources]
        return [(lease, r) for lease, r in pairs if lease is not None]

    def _is_vm(self) -> bool:
        return self.vm.pid == os.getpid()

    def _for(self) -> dict[str, Any]:
        """Act through our own registration (in the VM) or for the VM's pid (manager)."""
        if self._is_vm():
            return {"slkfd": self.driver.registration()}
        return {"pid": self.vm.pid}

    def _do_acquire(self, state: str | None, flags: AcquireFlags, on_failure: str
                    ) -> int | None:
        if on_failure in ("restart", "ignore"):
            raise ConfigUnsupported(f"failure action {on_failure!r} is not supported")
        fd = self.driver.registration() if self._is_vm() else None
        if self._is_vm() and self.vm.pid in _restricted:
            raise OperationDenied("this process restricted itself from changing locks")
        if not flags & AcquireFlags.REGISTER_ONLY:
            self._lock_all(_parse_state(state))
        if flags & AcquireFlags.RESTRICT and self._is_vm():
            _restricted.add(self.vm.pid)
        return fd

    def _lock_all(self, versions: dict[tuple[str, str], int | None]) -> None:
        leases = self._leases()
        self._check_disks_covered(bool(leases))
        taken: list[_Lease] = []
        try:
            for lease, resource in leases:
                lockspace, name, disks = lease
                version = versions.get((lockspace, name))
                with _errors():
                    client.acquire(lockspace, name, list(disks), shared=resource.shared,
                                   version=version, **self._for())
                taken.append(lease)
        except LockManagerError:
            for lockspace, name, disks in taken:
                with contextlib.suppress(LeasestoreError):
                    client.release(lockspace, name, list(disks), **self._for())
            raise

    def _do_release(self) -> str | None:
        if self._is_vm() and self.vm.pid in _restricted:
            raise OperationDenied("this process restricted itself from changing locks")
        state = self._do_inquire()
        held = _parse_held(state)
        leases = [lease for lease, _ in self._leases()] or list(held.values())
        for lockspace, name, disks in leases:
            if (lockspace, name, disks[0]) in held:
                with _errors():
                    client.release(lockspace, name, list(disks), **self._for())
        return state

    def _do_inquire(self) -> str | None:
        with _errors():
            held = client.inquire(**self._for())
        states = [h["state"] for h in held]
        return " ".join(states) if states else None


def _parse_state(state: str | None) -> dict[tuple[str, str], int | None]:
    """(lockspace, resource) -> lver from a state string (None for shared entries)."""
    versions: dict[tuple[str, str], int | None] = {}
    for item in (state or "").split():
        spec = ResourceSpec.parse(item)
        versions[(spec.lockspace, spec.name)] = None if spec.shared else spec.lver
    return versions


def _parse_held(state: str | None) -> dict[tuple[str, str, tuple[str, int]], _Lease]:
    """The leases a state string names, by (lockspace, name, first disk)."""
    specs = (ResourceSpec.parse(item) for item in (state or "").split())
    return {(s.lockspace, s.name, s.disks[0]): (s.lockspace, s.name, s.disks) for s in specs}


def _lease_disks(resource: Resource) -> tuple[tuple[str, int], ...]:
    """A LEASE resource's disks: its `path` and `offset`, then those of its optional
    `further_disks` param ([(path, offset), ...]: a lease on several disks, 4 at most)."""
    disks = ((str(resource.params["path"]), int(resource.params["offset"])),
             *((str(path), int(offset))
               for path, offset in resource.params.get("further_disks", ())))
    if len(disks) > 4:
        raise OperationInvalid(f"lease {resource.name!r} names {len(disks)} disks; 4 at most")
    return disks


class DiskPaxosDriver(LockDriver):
    name = "diskpaxos"
    capabilities = frozenset({Capability.RESOURCES, Capability.HOTPLUG, Capability.MIGRATION,
                              Capability.USES_STATE})
    defaults: dict[str, Any] = {
        "auto_disk_leases": False,
        "require_lease_for_disks": None,
        "disk_lease_dir": "/var/lib/leasestore/diskpaxos",
        "host_id": None,
        "io_timeout": 10,
        "run_dir": None,
    }

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        if self.config["run_dir"]:
            os.environ["LEASESTORE_RUN_DIR"] = str(self.config["run_dir"])
        self._registration: tuple[int, int] | None = None
        if self.config["auto_disk_leases"]:
            self._join_auto_lockspace()

    def registration(self) -> int:
        """This process's registration with the daemon (made once per process, kept for its
        lifetime; a forked child registers anew, never reusing its parent's)."""
        if self._registration is None or self._registration[0] != os.getpid():
            with _errors():
                fd = client.register()
            os.set_inheritable(fd, True)
            self._registration = (os.getpid(), fd)
        return self._registration[1]

    @property
    def lease_dir(self) -> str:
        return str(self.config["disk_lease_dir"])

    def disk_lease(self, disk_path: str) -> tuple[str, str, str, int]:
        name = hashlib.md5(disk_path.encode()).hexdigest()  # fits the 48-byte name field
        path = os.path.join(self.lease_dir, name)
        _create_area(path, lambda: direct.format_resource(path, AUTO_LOCKSPACE, name, 0))
        return AUTO_LOCKSPACE, name, path, 0

    def _join_auto_lockspace(self) -> None:
        host_id = self.config["host_id"]
        if not host_id or not 1 <= int(host_id) <= 2000:
            raise ConfigUnsupported("auto_disk_leases needs host_id (1..2000, unique per host)")
        os.makedirs(self.lease_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.lease_dir, AUTO_LOCKSPACE)
        _create_area(path, lambda: direct.format_lockspace(
            path, AUTO_LOCKSPACE, 0, io_timeout_s=int(self.config["io_timeout"])))
        try:
            client.add_lockspace(AUTO_LOCKSPACE, int(host_id), path, 0,
                                 int(self.config["io_timeout"]))
        except LockspaceExists:
            pass
        except LeasestoreError as exc:
            if getattr(exc, "errno", 0) != -errno.EEXIST:
                raise ConfigUnsupported(f"cannot join {AUTO_LOCKSPACE}: {exc}") from exc

    def _manager(self, vm: VmObject) -> LockManager:
        return DiskPaxosManager(self, vm)

