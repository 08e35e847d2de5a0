"""One formal interface for VM lock managers, with independent backends behind it.

A `LockDriver` is loaded once per process (`load_driver(name, config_path)`), declares its
`capabilities`, and makes short-lived `LockManager`s, one per VM object and operation. A manager
collects resources (disks by path, or named leases) and then acquires, releases or inquires.
Durable state lives in the backend (the lock itself, held by the VM process), never in the
manager, so a manager process may restart while the VM runs.

Rules common to every backend, enforced here (`LockManager`):
- resources are added only before acquire; READONLY resources take no lock; a LEASE resource
  names its path and offset (and, for a backend that has them, leases on several disks, its
  further disks in `further_disks`);
- operations a backend did not declare are refused with OperationDenied: passing a state to a
  backend without USES_STATE, locking or unlocking resources of a running object without
  HOTPLUG;
- with `require_lease_for_disks`, writable exclusive disks and no lease are ConfigUnsupported;
- a freed manager refuses every call.
Each backend enforces RESTRICT itself: after acquire(RESTRICT), lock changes made from the VM
process are refused.
"""

from __future__ import annotations

import enum
import importlib.metadata
import uuid as uuidlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from leasestore.errors import UsageError
from leasestore.tomlfile import read_table

ENTRY_POINT_GROUP = "leasestore.lock_drivers"


class LockManagerError(Exception):
    """Base of every plugin error."""


class LockBusy(LockManagerError):
    """Another owner holds the resource."""


class ConfigUnsupported(LockManagerError):
    """The configuration cannot protect what was asked (e.g. writable disks without leases)."""


class OperationDenied(LockManagerError):
    """Restricted, or not declared by the backend's capabilities."""


class OperationInvalid(LockManagerError):
    """Not possible in this state (e.g. the object is not registered)."""


class StateMismatch(LockManagerError):
    """A state (e.g. from migration) names lease versions the storage no longer has."""


class PluginLoadError(LockManagerError):
    """No such backend, or its configuration is invalid."""


class Capability(enum.Enum):
    RESOURCES = "resources"
    HOTPLUG = "hotplug"
    MIGRATION = "migration"
    USES_STATE = "uses_state"


class ResourceType(enum.Enum):
    DISK = "disk"
    LEASE = "lease"


class ResourceFlags(enum.IntFlag):
    READONLY = 1
    SHARED = 2


class AcquireFlags(enum.IntFlag):
    REGISTER_ONLY = 1
    RESTRICT = 2


NO_RESOURCE_FLAGS = ResourceFlags(0)
NO_ACQUIRE_FLAGS = AcquireFlags(0)
FAILURE_ACTIONS = ("default", "poweroff", "restart", "pause", "ignore")


@dataclass(frozen=True)
class Resource:
    type: ResourceType
    name: str
    flags: ResourceFlags = NO_RESOURCE_FLAGS
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def readonly(self) -> bool:
        return bool(self.flags & ResourceFlags.READONLY)

    @property
    def shared(self) -> bool:
        return bool(self.flags & ResourceFlags.SHARED)


@dataclass(frozen=True)
class VmObject:
    uuid: uuidlib.UUID
    name: str
    id: int
    pid: int
    uri: str | None = None
    started: bool = False
    """The object already runs (libvirt's NEW_STARTED): acquires on it are hotplug."""


class LockManager(ABC):
    """A short-lived manager for one VM object. Subclasses implement the `_do_*` steps."""

    def __init__(self, driver: LockDriver, vm: VmObject) -> None:
        self.driver = driver
        self.vm = vm
        self.resources: list[Resource] = []
        self.acquired = False
        self.freed = False

    def add_resource(self, type: ResourceType, name: str, flags: ResourceFlags = NO_RESOURCE_FLAGS,
                     params: dict[str, Any] | None = None) -> None:
        self._check_live()
        if self.acquired:
            raise OperationInvalid("resources can be added only before acquire")
        if type == ResourceType.LEASE:
            missing = {"path", "offset"} - set(params or {})
            if missing:
                raise OperationInvalid(f"lease {name!r} needs params {sorted(missing)}")
        self.resources.append(Resource(type, name, flags, dict(params or {})))

    def acquire(self, state: str | None = None, flags: AcquireFlags = NO_ACQUIRE_FLAGS,
                on_failure: str = "default") -> int | None:
        """Register the object and (unless REGISTER_ONLY) lock its resources. May return an fd
        the VM process must inherit (its registration)."""
        self._check_live()
        if on_failure not in FAILURE_ACTIONS:
            raise ConfigUnsupported(f"unknown failure action {on_failure!r}")
        if state is not None and Capability.USES_STATE not in self.driver.capabilities:
            raise OperationDenied(f"backend {self.driver.name!r} does not use state")
        if self.vm.started and self.lockable and not flags & AcquireFlags.REGISTER_ONLY:
            self._require(Capability.HOTPLUG, "locking resources of a running object")
        fd = self._do_acquire(state, flags, on_failure)
        self.acquired = True
        return fd

    def release(self) -> str | None:
        """Unlock the object's resources (all of them, or the hot-unplugged ones added here);
        returns the state to resume with, if the backend uses state."""
        self._check_live()
        if self.vm.started and self.resources:
            self._require(Capability.HOTPLUG, "unlocking resources of a running object")
        return self._do_release()

    def inquire(self) -> str | None:
        self._check_live()
        return self._do_inquire()

    def free(self) -> None:
        self.freed = True

    # -- helpers for backends ------------------------------------------------------------------

    @property
    def lockable(self) -> list[Resource]:
        return [r for r in self.resources if not r.readonly]

    def _require(self, capability: Capability, what: str) -> None:
        if capability not in self.driver.capabilities:
            raise OperationDenied(f"backend {self.driver.name!r} did not declare "
                                  f"{capability.value}: {what} is refused")

    def _check_live(self) -> None:
        if self.freed:
            raise OperationInvalid("this manager was freed")

    def _check_disks_covered(self, locked_any: bool) -> None:
        needs = self.driver.config.get("require_lease_for_disks")
        writable_disks = [r for r in self.resources
                          if r.type == ResourceType.DISK and not r.readonly and not r.shared]
        if needs and writable_disks and not locked_any:
            raise ConfigUnsupported("read/write, exclusive access, disks were present, but no "
                                    "leases specified")

    @abstractmethod
    def _do_acquire(self, state: str | None, flags: AcquireFlags, on_failure: str
                    ) -> int | None: ...

    @abstractmethod
    def _do_release(self) -> str | None: ...

    @abstractmethod
    def _do_inquire(self) -> str | None: ...


class LockDriver(ABC):
    name: str = ""
    capabilities: frozenset[Capability] = frozenset()
    defaults: dict[str, Any] = {}

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        values = dict(self.defaults)
        unknown = set(config or {}) - set(values)
        if unknown:
            raise PluginLoadError(f"{self.name}: unknown config key(s) {sorted(unknown)}")
        values.update(config or {})
        if values.get("require_lease_for_disks") is None:
            values["require_lease_for_disks"] = not values.get("auto_disk_leases", False)
        self.config = values

    def new(self, uuid: uuidlib.UUID | str, name: str, id: int, pid: int, uri: str | None = None,
            started: bool = False) -> LockManager:
        vm = VmObject(uuidlib.UUID(str(uuid)), name, id, pid, uri, started)
        return self._manager(vm)

    def deinit(self) -> None:  # noqa: B027 - optional hook; most drivers hold nothing
        """Release driver-wide resources."""

    @abstractmethod
    def _manager(self, vm: VmObject) -> LockManager: ...


def load_driver(name: str, config_path: str | None = None) -> LockDriver:
    """The backend registered under `name` in the leasestore.lock_drivers entry points."""
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        raise PluginLoadError(f"no lock driver {name!r} (known: {sorted(found)})")
    config: dict[str, Any] = {}
    if config_path is not None:
        try:
            config = read_table(config_path)
        except UsageError as exc:
            raise PluginLoadError(str(exc)) from None
    cls = found[name].load()
    driver: LockDriver = cls(config)
    return driver
