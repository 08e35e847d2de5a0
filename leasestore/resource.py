"""Resource leases this host holds, on top of its lockspaces.

Each acquire or release runs the Disk Paxos algorithm through a real driver. Devices are opened
once per path and shared by every thread, so that each path's record of abandoned writes
sees all of them (their waits still overlap). A lease can be acquired only in a
lockspace whose host lease is HELD, with the lockspace's current host generation; the takeover
rule reads other hosts' delta sectors and asks the lockspace's host table what it last saw.
Holders are recorded by key (lockspace, resource, path, offset); the daemon maps them to
processes.

A release whose I/O fails leaves the lease owned by this live host on disk, where no other
host could ever take it; it is retried every io_timeout in the background until it succeeds,
the lease is found taken over, or the lockspace stops being held (then the lease dies with the
host lease). Until then the key counts as busy here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from leasestore.delta import PROBE_SIZE_B
from leasestore.errors import (
    CorruptRecord,
    LeaseAlreadyHeld,
    LeaseNotHeld,
    LockspaceNotJoined,
    StorageError,
)
from leasestore.lockspace import Lockspace, LockspaceState
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import LeaderMagic, decode_leader
from leasestore.ondisk.request import Request
from leasestore.paxos import HeldLease, PaxosParams, acquire, read_request, release, request
from leasestore.specs import escape_path
from leasestore.storage.direct import DirectDevice
from leasestore.storage.driver import Driver

log = logging.getLogger(__name__)
ResourceKey = tuple[str, str, str, int]
RES_DEVICE = "resource"
LS_DEVICE = "lockspace"


@dataclass
class HeldResource:
    key: ResourceKey
    lease: HeldLease
    params: PaxosParams
    pid: int
    sharers: set[int] = field(default_factory=set)
    """Local pids holding this shared lease; the disk lease is released with the last one."""

    @property
    def state(self) -> str:
        """sanlock's state string: LOCKSPACE:RESOURCE:PATH:OFFSET:LVER (or :SH)."""
        lockspace, resource, path, offset = self.key
        suffix = "SH" if self.lease.shared else str(self.lease.lver)
        return f"{lockspace}:{resource}:{escape_path(path)}:{offset}:{suffix}"

    def to_json(self) -> dict[str, object]:
        lockspace, resource, path, offset = self.key
        return {"lockspace": lockspace, "resource": resource, "path": path, "offset": offset,
                "lver": self.lease.lver, "shared": self.lease.shared, "pid": self.pid,
                "state": self.state}


class ResourceService:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, DirectDevice] = {}
        self._geometries: dict[tuple[str, int], Geometry] = {}
        self.held: dict[ResourceKey, HeldResource] = {}
        self._busy: set[ResourceKey] = set()
        """Keys being acquired, or whose failed release is being retried."""
        self._closed = threading.Event()

    def _device(self, path: str) -> DirectDevice:
        with self._lock:
            device = self._devices.get(path)
            if device is None:
                device = self._devices[path] = DirectDevice(path)
            return device

    def _geometry(self, path: str, offset_b: int, io_timeout_s: float) -> Geometry:
        cached = self._geometries.get((path, offset_b))
        if cached is not None:
            return cached
        raw = self._device(path).read(offset_b, PROBE_SIZE_B, io_timeout_s)
        try:
            leader = decode_leader(raw, (LeaderMagic.PAXOS,))
            geometry = leader.geometry()
        except CorruptRecord as exc:
            raise exc.at(offset_b) from None
        self._geometries[(path, offset_b)] = geometry
        return geometry

    def _params(self, lockspace: Lockspace, key: ResourceKey) -> PaxosParams:
        name, resource, path, offset_b = key
        timeouts = lockspace.timeouts
        table = lockspace.table
        if table is None:
            raise LockspaceNotJoined(f"lockspace {name!r} has no host table yet")
        return PaxosParams(
            RES_DEVICE, offset_b, self._geometry(path, offset_b, timeouts.io_timeout_s), name,
            resource, lockspace.spec.host_id, lockspace.generation, timeouts, LS_DEVICE,
            lockspace.spec.offset_b, table.geometry, host_info=lockspace.owner_view,
        )

    def _driver(self, lockspace: Lockspace, path: str) -> Driver:
        devices = {RES_DEVICE: self._device(path), LS_DEVICE: self._device(lockspace.spec.path)}
        return Driver(devices)

    def acquire(self, lockspace: Lockspace, key: ResourceKey, pid: int, *, shared: bool = False,
                lver: int | None = None) -> HeldResource:
        if lockspace.state != LockspaceState.HELD:
            raise LockspaceNotJoined(f"lockspace {key[0]!r} is {lockspace.state}, not held")
        with self._lock:
            local = self.held.get(key)
            if local is not None and local.lease.shared and shared and pid not in local.sharers:
                local.sharers.add(pid)
                return local
            if local is not None or key in self._busy:
                raise LeaseAlreadyHeld(f"lease {key[1]!r} is already held (or being acquired "
                                       "or released) on this host")
            self._busy.add(key)
        try:
            params = self._params(lockspace, key)
            lease = self._driver(lockspace, key[2]).run(acquire(params, shared=shared, lver=lver))
            if not lockspace.valid_at(time.monotonic()):
                # A ballot that ends after our host lease expired (a long stall) grants nothing:
                # other hosts may already have taken the lease over.
                raise LockspaceNotJoined(f"lockspace {key[0]!r}: the host lease expired while "
                                         f"acquiring {key[1]!r}")
            held = HeldResource(key, lease, params, pid, {pid} if shared else set())
            with self._lock:
                self.held[key] = held
            return held
        finally:
            with self._lock:
                self._busy.discard(key)

    def _unhold(self, key: ResourceKey, pid: int) -> HeldResource | None:
        """Drop pid's hold; returns the lease if that was its last holder (else None)."""
        with self._lock:
            held = self.held.get(key)
            if held is None:
                raise LeaseNotHeld(f"lease {key[1]!r} is not held on this host")
            held.sharers.discard(pid)
            if held.sharers:
                return None
            return self.held.pop(key)

    def release(self, lockspace: Lockspace, key: ResourceKey, pid: int) -> None:
        held = self._unhold(key, pid)
        if held is None:
            return
        # While our host lease outlasts the write's deadline no host can have taken the lease
        # over, so the leader need not be read first (sanlock reads it; one I/O less here).
        unchanged = lockspace.valid_at(time.monotonic() + lockspace.timeouts.io_timeout_s)
        try:
            self._driver(lockspace, key[2]).run(
                release(held.params, held.lease, leader_unchanged=unchanged))
        except StorageError as exc:
            with self._lock:
                self._busy.add(key)
            threading.Thread(target=self._retry_release, args=(lockspace, held),
                             name=f"release-{key[1]}", daemon=True).start()
            raise type(exc)(f"{exc}; the release is retried in the background") from exc

    def _retry_release(self, lockspace: Lockspace, held: HeldResource) -> None:
        interval_s = lockspace.timeouts.io_timeout_s
        try:
            while lockspace.state in (LockspaceState.HELD, LockspaceState.RENEWAL_FAILING):
                if self._closed.wait(interval_s):
                    return
                try:
                    self._driver(lockspace, held.key[2]).run(release(held.params, held.lease))
                    log.info("lease %s released on retry", held.key[1])
                    return
                except StorageError as exc:
                    log.warning("lease %s: release failed again: %s", held.key[1], exc)
                except Exception as exc:  # taken over, moved on: nothing left to release
                    log.warning("lease %s: release abandoned: %s", held.key[1], exc)
                    return
        finally:
            with self._lock:
                self._busy.discard(held.key)

    def request(self, lockspace: Lockspace, key: ResourceKey, lver: int | None,
                force_mode: int) -> int:
        """Write the request record; returns the owner's host_id (0: nothing requested)."""
        params = self._params(lockspace, key)
        owner: int = self._driver(lockspace, key[2]).run(request(params, lver, force_mode))
        return owner

    def pending_request(self, lockspace: Lockspace, held: HeldResource) -> Request | None:
        """The request record of a lease we hold, if it asks us to give it up."""
        record: Request = self._driver(lockspace, held.key[2]).run(read_request(held.params))
        if record.force_mode and record.lver > held.lease.lver:
            return record
        return None

    def drop(self, key: ResourceKey, pid: int) -> None:
        """Forget pid's hold without I/O (its lockspace failed: the disk is not ours to touch)."""
        with contextlib.suppress(LeaseNotHeld):
            self._unhold(key, pid)

    def in_lockspace(self, name: str) -> list[HeldResource]:
        with self._lock:
            return [h for h in self.held.values() if h.key[0] == name]

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            devices = list(self._devices.values())
            self._devices.clear()
        for device in devices:
            device.close()

