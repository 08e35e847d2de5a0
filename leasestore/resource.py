"""Resource leases this host holds, on top of its lockspaces.

Each acquire or release is an effect generator (`acquiring`, `releasing`, `releasing_after_exit`)
whose effects name devices by path; the daemon's threads run them through a DeviceRunner
(`acquire`, `release`), the simulator runs the same generators. Background retries are started
through the `spawn` seam. In the daemon, devices are opened once per path and shared by every
thread, so that each path's record of abandoned writes sees all of them (their waits still
overlap). A lease can be acquired only in a
lockspace whose host lease is HELD, with the lockspace's current host generation; the takeover
rule reads other hosts' delta sectors and asks the lockspace's host table what it last saw.
Holders are recorded by key (lockspace, resource, path, offset) with the pids holding each:
this is the daemon's one table of which process holds what (`held_by`, `holding`,
`holder_pids`, `in_lockspace`).

A process counts as a holder (`recorded_pids`) from the start of its acquire, before its first
I/O, until it holds nothing; `on_holders_changed` is called after each change of that set
(never with the table's lock held), so that the daemon records holders where a restarted
daemon finds them (daemon/holders.py).

A key is busy from the start of its acquire until that acquire has ended, and from the moment
its last holder lets go until the release I/O has ended (or, for a failed one, its retries
have): while busy no other local acquire of it may start. Otherwise an acquire could run while
our own release writes are in flight, and a release landing after its grant would roll the
leader back under the new holder.

A key is busy too while its holding is converted (shared <-> exclusive, only by its sole local
holder): no local acquire joins or starts, and a release (its holder exiting) waits for the
convert to end, whose outcome it then releases.

`AcquireGate` admits acquires per lockspace. Removal closes the gate (no new acquire starts)
and waits for those admitted, so that afterwards the set of holders it must stop is final
(removal.py).

A holding acquired persistent outlives the exit of its last holder as an orphan: still owned
on disk under our host lease, held for no process (nothing to stop when the lockspace fails),
busy for every acquire but an adoption in the same mode, which hands it to the new process
with no I/O. An explicit release of a persistent holding releases it; an orphan is released
by `releasing_orphan`, and forgotten with its lockspace.

A holding acquired with the LVB flag keeps the lease's lock value block (lvb.py): read after
the grant (a grant whose read fails is given back), written back by the exclusive release of a
holding that set it, before the leader is freed.

A release whose I/O fails leaves the lease owned by this live host on disk, where no other
host could ever take it; so does a failed acquire whose claim could not be withdrawn
(ClaimNotWithdrawn). Either is retried every io_timeout in the background until it succeeds,
the lease is found taken over, or the lockspace stops being held (then the lease dies with the
host lease). Until then the key counts as busy here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from leasestore.delta import PROBE_SIZE_B
from leasestore.effects import Algorithm, Now, Read, Sleep
from leasestore.errors import (
    Cancelled,
    CorruptRecord,
    LeaseAlreadyHeld,
    LeaseAlreadyInMode,
    LeaseNotHeld,
    LeaseOrphaned,
    LeasestoreError,
    LockspaceNotJoined,
    LvbTooLarge,
    LvbUnavailable,
    SharedHolders,
    StorageError,
    UsageError,
)
from leasestore.lockspace import Lockspace, LockspaceState
from leasestore.lvb import lvb_offset, read_lvb, write_lvb
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import LeaderMagic, decode_leader
from leasestore.ondisk.request import Request
from leasestore.paxos import (
    ClaimNotWithdrawn,
    DiskRef,
    HeldLease,
    PaxosParams,
    StillShared,
    acquire,
    convert,
    read_request,
    release,
    request,
    withdraw_claim,
)
from leasestore.specs import escape_path
from leasestore.storage.odirect import DirectDevice
from leasestore.storage.runner import DeviceRunner

log = logging.getLogger(__name__)
ResourceKey = tuple[str, str, str, int]
T = TypeVar("T")
CONVERT_POLL_S = 0.05


@dataclass
class HeldResource:
    key: ResourceKey
    lease: HeldLease
    params: PaxosParams
    pid: int
    sharers: set[int] = field(default_factory=set)
    """Local pids holding this shared lease; the disk lease is released with the last one."""
    lvb: bytearray | None = None
    """The lock value block as read after the grant (acquired with the LVB flag), with what
    holders set since; None without the flag (lvb.py)."""
    lvb_set: bool = False
    """A holder set the LVB: an exclusive release writes it back first."""
    persistent_pids: set[int] = field(default_factory=set)
    """The holders that acquired it persistent: if the last holder exits without releasing
    it and is one of them, the lease is kept as an orphan."""
    orphan: bool = False
    """Held on disk by this host for no process (its persistent holder exited), until a
    process adopts it or it is released as an orphan."""

    @property
    def pids(self) -> frozenset[int]:
        """The local processes holding it (none for an orphan)."""
        if self.orphan:
            return frozenset()
        return frozenset(self.sharers) if self.lease.shared else frozenset({self.pid})

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
                "state": self.state, "persistent": bool(self.persistent_pids),
                "orphan": self.orphan}


class AcquireGate:
    """Admits acquires per lockspace until that lockspace is closed; `admitted` counts those
    admitted and not yet ended (removal.py waits for none)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed: set[str] = set()
        self._admitted: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def admit(self, name: str) -> Iterator[None]:
        with self._lock:
            if name in self._closed:
                raise LockspaceNotJoined(f"lockspace {name!r} is being removed")
            self._admitted[name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted[name] -= 1

    def close(self, name: str) -> None:
        """Admit no more acquires in `name` (those admitted already run on)."""
        with self._lock:
            self._closed.add(name)

    def admitted(self, name: str) -> int:
        """Acquires in `name` admitted and not yet ended."""
        with self._lock:
            return self._admitted[name]

    def closed(self, name: str) -> bool:
        with self._lock:
            return name in self._closed

    def reopen(self, name: str) -> None:
        with self._lock:
            self._closed.discard(name)


Spawn = Callable[[str, Algorithm[None]], None]
"""Start a background algorithm (named for logs) that runs on its own."""


class ResourceService:
    def __init__(self, open_device: Callable[[str], DirectDevice] = DirectDevice,
                 spawn: Spawn | None = None,
                 on_holders_changed: Callable[[], None] | None = None) -> None:
        self._open_device = open_device
        self._spawn: Spawn = spawn or self._spawn_thread
        self._holders_changed = on_holders_changed or (lambda: None)
        self._acquiring_pids: collections.Counter[int] = collections.Counter()
        """Processes with an acquire under way (they count as holders from its start)."""
        self._lock = threading.Lock()
        self._devices: dict[str, DirectDevice] = {}
        self._geometries: dict[tuple[str, int], Geometry] = {}
        self.further_disks: dict[ResourceKey, tuple[DiskRef, ...]] = {}
        """The further disks (device, offset) of leases on more than one disk, by key (whose
        path and offset name the first). A key not here is a lease on one disk."""
        self.held: dict[ResourceKey, HeldResource] = {}
        self._busy: set[ResourceKey] = set()
        """Keys being acquired, converted, or whose failed release is being retried."""
        self._converting: set[ResourceKey] = set()
        """Keys whose holding is being converted: a release of it waits until that ends."""
        self._closed = threading.Event()
        self.gate = AcquireGate()

    # -- running on real devices -------------------------------------------------------------

    def _device(self, path: str) -> DirectDevice:
        with self._lock:
            device = self._devices.get(path)
            if device is None:
                device = self._devices[path] = self._open_device(path)
            return device

    def run(self, algorithm: Algorithm[T]) -> T:
        """Run an algorithm on this service's devices (each opened on first use)."""
        return DeviceRunner(_OpenOnUse(self._device), self._closed).run(algorithm)

    def _spawn_thread(self, name: str, algorithm: Algorithm[None]) -> None:
        threading.Thread(target=self.run, args=(algorithm,), name=name, daemon=True).start()

    def acquire(self, lockspace: Lockspace, key: ResourceKey, pid: int, *, shared: bool = False,
                lver: int | None = None, lvb: bool = False, persistent: bool = False,
                adopt: bool = False, owner_nowait: bool = False) -> HeldResource:
        return self.run(self.acquiring(lockspace, key, pid, shared=shared, lver=lver, lvb=lvb,
                                        persistent=persistent, adopt=adopt,
                                        owner_nowait=owner_nowait))

    def release(self, lockspace: Lockspace, key: ResourceKey, pid: int, rename: str = ""
                ) -> None:
        self.run(self.releasing(lockspace, key, pid, rename))

    def convert(self, lockspace: Lockspace, key: ResourceKey, pid: int, shared: bool,
                owner_nowait: bool = False) -> HeldResource:
        return self.run(self.converting(lockspace, key, pid, shared, owner_nowait))

    def release_after_exit(self, lockspace: Lockspace | None, key: ResourceKey,
                           pid: int) -> None:
        self.run(self.releasing_after_exit(lockspace, key, pid))

    def release_orphan(self, lockspace: Lockspace, key: ResourceKey) -> bool:
        return self.run(self.releasing_orphan(lockspace, key))

    def request(self, lockspace: Lockspace, key: ResourceKey, lver: int | None,
                force_mode: int) -> int:
        """Write the request record; returns the owner's host_id (0: nothing requested)."""
        return self.run(self.requesting(lockspace, key, lver, force_mode))

    def pending_requests(self, name: str) -> list[tuple[HeldResource, Request]]:
        return self.run(self.examining(name))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            devices = list(self._devices.values())
            self._devices.clear()
        for device in devices:
            device.close()

    # -- the algorithms ------------------------------------------------------------------------

    def use_disks(self, key: ResourceKey, further: tuple[DiskRef, ...]) -> None:
        """Lease `key` lives on its first disk and on `further` ones: a lease held now keeps
        the disks it was acquired on, and is refused another set (UsageError)."""
        with self._lock:
            if key in self.held and self.further_disks.get(key, ()) != further:
                raise UsageError(f"lease {key[1]!r} is held on other disks than these")
            if further:
                self.further_disks[key] = further
            else:
                self.further_disks.pop(key, None)

    def _geometry(self, disks: tuple[DiskRef, ...], io_timeout_s: float
                  ) -> Algorithm[Geometry]:
        """The lease's geometry, from its leader on the first of `disks` that gives one."""
        cached = self._geometries.get(disks[0])
        if cached is not None:
            return cached
        for index, (path, offset_b) in enumerate(disks):
            try:
                raw = yield Read(path, offset_b, PROBE_SIZE_B, io_timeout_s)
                geometry = decode_leader(raw, (LeaderMagic.PAXOS,)).geometry()
            except CorruptRecord as exc:
                if index == len(disks) - 1:
                    raise exc.at(offset_b) from None
            except StorageError:
                if index == len(disks) - 1:
                    raise
            else:
                self._geometries[disks[0]] = geometry
                return geometry
        raise AssertionError("a lease has at least one disk")

    def lease_params(self, lockspace: Lockspace, key: ResourceKey) -> Algorithm[PaxosParams]:
        """The ballot parameters of lease `key` for our host in `lockspace`."""
        name, resource, path, offset_b = key
        timeouts = lockspace.timeouts
        table = lockspace.table
        if table is None:
            raise LockspaceNotJoined(f"lockspace {name!r} has no host table yet")
        further = self.further_disks.get(key, ())
        geometry = yield from self._geometry(((path, offset_b), *further),
                                             timeouts.io_timeout_s)
        return PaxosParams(
            path, offset_b, geometry, name, resource, lockspace.spec.host_id,
            lockspace.generation, timeouts, lockspace.spec.path, lockspace.spec.offset_b,
            table.geometry, host_info=lockspace.owner_view, extra_disks=further,
        )

    def acquiring(self, lockspace: Lockspace, key: ResourceKey, pid: int, *,
                  shared: bool = False, lver: int | None = None, lvb: bool = False,
                  persistent: bool = False, adopt: bool = False, owner_nowait: bool = False
                  ) -> Algorithm[HeldResource]:
        """Acquire `key` for pid. `persistent`: an exit keeps it as an orphan. `adopt`: an
        orphan of it in the same mode is taken over (without it an orphan refuses the
        acquire: LeaseOrphaned). `owner_nowait`: AcquireOwnedRetry rather than waiting to see
        an owner's host lease renew or expire."""
        with self.gate.admit(key[0]):
            with self._lock:
                self._acquiring_pids[pid] += 1
            try:
                self._holders_changed()  # before the first I/O
                return (yield from self._acquiring(lockspace, key, pid, shared=shared,
                                                   lver=lver, lvb=lvb, persistent=persistent,
                                                   adopt=adopt, owner_nowait=owner_nowait))
            finally:
                with self._lock:
                    self._acquiring_pids[pid] -= 1
                    if not self._acquiring_pids[pid]:
                        del self._acquiring_pids[pid]
                self._holders_changed()

    def _acquiring(self, lockspace: Lockspace, key: ResourceKey, pid: int, *, shared: bool,
                   lver: int | None, lvb: bool, persistent: bool, adopt: bool,
                   owner_nowait: bool) -> Algorithm[HeldResource]:
        if lockspace.state != LockspaceState.HELD:
            raise LockspaceNotJoined(f"lockspace {key[0]!r} is {lockspace.state}, not held")
        with self._lock:
            local = self.held.get(key)
            if local is not None and local.orphan and not _ours_to_write(lockspace, local):
                del self.held[key]  # left by an earlier host lease of ours: nothing of it holds
                local = None
            if local is not None and local.orphan:
                return self._adopted(local, pid, shared, persistent, adopt)
            if (local is not None and local.lease.shared and shared and pid not in local.sharers
                    and key not in self._busy):
                local.sharers.add(pid)
                if persistent:
                    local.persistent_pids.add(pid)
                return local
            if local is not None or key in self._busy:
                raise LeaseAlreadyHeld(f"lease {key[1]!r} is already held (or being acquired "
                                       "or released) on this host")
            self._busy.add(key)
        retrying = False
        try:
            params = yield from self.lease_params(lockspace, key)
            if lvb:
                lvb_offset(params.geometry)  # refused before any write if there is none
            try:
                lease = yield from acquire(params, shared=shared, lver=lver,
                                           owner_nowait=owner_nowait)
            except ClaimNotWithdrawn as exc:
                retrying = True
                claim = exc.dblock
                self._retry_in_background(lockspace, key, "withdrawal of our claim",
                                          lambda: withdraw_claim(params, claim))
                raise
            now_s = yield Now()
            if not lockspace.valid_at(now_s):
                # A ballot that ends after our host lease expired (a long stall) grants nothing:
                # other hosts may already have taken the lease over.
                raise LockspaceNotJoined(f"lockspace {key[0]!r}: the host lease expired while "
                                         f"acquiring {key[1]!r}")
            value = None
            if lvb:
                try:
                    value = yield from read_lvb(params)
                except StorageError:
                    retrying = yield from self._give_back(lockspace, key, params, lease)
                    raise
            held = HeldResource(key, lease, params, pid, {pid} if shared else set(), value,
                                persistent_pids={pid} if persistent else set())
            with self._lock:
                self.held[key] = held
            return held
        finally:
            if not retrying:
                with self._lock:
                    self._busy.discard(key)

    def converting(self, lockspace: Lockspace, key: ResourceKey, pid: int, shared: bool,
                   owner_nowait: bool = False) -> Algorithm[HeldResource]:
        """Turn pid's holding of `key` shared or exclusive (paxos.convert). Only a sole local
        holder may take a shared lease exclusive (SharedHolders otherwise, as for a live
        sharer elsewhere); the key is busy meanwhile, so no local acquire joins or starts. A
        failed convert to exclusive leaves the holding shared; a convert to shared that
        returns has made it shared."""
        if lockspace.state != LockspaceState.HELD:
            raise LockspaceNotJoined(f"lockspace {key[0]!r} is {lockspace.state}, not held")
        with self._lock:
            held = self._held_for(key, pid)
            if held is None:
                raise LeaseNotHeld(f"pid {pid} does not hold {key[1]!r}")
            if held.lease.shared == shared:
                raise LeaseAlreadyInMode(f"lease {key[1]!r} is held "
                                         f"{'shared' if shared else 'exclusive'} already")
            if held.pids != {pid}:
                raise SharedHolders(f"lease {key[1]!r} is held shared by other processes here")
            if key in self._busy:
                raise LeaseAlreadyHeld(f"lease {key[1]!r} is being acquired or released here")
            self._busy.add(key)
            self._converting.add(key)
        try:
            try:
                lease = yield from convert(held.params, held.lease, shared=shared,
                                           owner_nowait=owner_nowait)
            except StillShared as exc:
                with self._lock:
                    held.lease = exc.held
                raise exc.cause from None
            now_s = yield Now()
            if not shared and not lockspace.valid_at(now_s):
                # As for an acquire: a ballot that ends after our host lease expired grants
                # nothing (others may take the lease over); the holding stays shared. (A
                # convert to shared grants nothing: once it returns, the lease is shared on
                # disk, and so is the holding, whatever our host lease.)
                with self._lock:
                    held.lease = dataclasses.replace(held.lease, dblock=lease.dblock)
                raise LockspaceNotJoined(f"lockspace {key[0]!r}: the host lease expired "
                                         f"while converting {key[1]!r}")
            with self._lock:
                held.lease = lease
                held.pid = pid  # a shared lease's first holder may have left since
                held.sharers = {pid} if shared else set()
                held.persistent_pids &= {pid}
            log.info("pid %d converted %s", pid, held.state)
            return held
        finally:
            with self._lock:
                self._busy.discard(key)
                self._converting.discard(key)

    def _adopted(self, orphan: HeldResource, pid: int, shared: bool, persistent: bool,
                 adopt: bool) -> HeldResource:
        """Hand an orphan to pid (call with _lock held), or refuse with LeaseOrphaned."""
        if not adopt:
            raise LeaseOrphaned(f"lease {orphan.key[1]!r} is an orphan here; acquire it with "
                                "the orphan flag to adopt it")
        if orphan.lease.shared != shared:
            mode = "shared" if orphan.lease.shared else "exclusive"
            raise LeaseOrphaned(f"lease {orphan.key[1]!r} is an orphan held {mode} here; "
                                "adopt it in that mode")
        orphan.orphan = False
        orphan.pid = pid
        orphan.sharers = {pid} if shared else set()
        orphan.persistent_pids = {pid} if persistent else set()
        log.info("pid %d adopted the orphan %s", pid, orphan.state)
        return orphan

    def _give_back(self, lockspace: Lockspace, key: ResourceKey, params: PaxosParams,
                   lease: HeldLease) -> Algorithm[bool]:
        """Release a grant the acquire cannot hand out after all; returns whether the release
        went on in the background (it failed: the key stays busy until it is done)."""
        try:
            yield from release(params, lease)
        except StorageError:
            self._retry_in_background(lockspace, key, "release",
                                      lambda: release(params, lease))
            return True
        return False

    def lvb_holding(self, lockspace: str, resource: str) -> HeldResource:
        """The holding of that lease on this host whose LVB set and get use (whichever
        process holds it, as sanlock finds it). LeaseNotHeld, or LvbUnavailable without the
        LVB flag."""
        with self._lock:
            found = [h for h in self.held.values() if h.key[:2] == (lockspace, resource)]
        if not found:
            raise LeaseNotHeld(f"lease {resource!r} of {lockspace!r} is not held on this host")
        if found[0].lvb is None:
            raise LvbUnavailable(f"lease {resource!r} was not acquired with the LVB flag")
        return found[0]

    def set_lvb(self, held: HeldResource, data: bytes) -> None:
        """Copy data over the start of a holding `lvb_holding` gave (LvbTooLarge beyond its
        sector)."""
        with self._lock:
            assert held.lvb is not None  # lvb_holding checked; a holding keeps its LVB
            if len(data) > len(held.lvb):
                raise LvbTooLarge(f"an LVB holds at most {len(held.lvb)} bytes, not "
                                  f"{len(data)}")
            held.lvb[:len(data)] = data
            held.lvb_set = True

    def get_lvb(self, held: HeldResource, size: int) -> bytes:
        """The first `size` bytes of a holding's LVB, as `lvb_holding` gave it (all of its
        sector for 0)."""
        with self._lock:
            assert held.lvb is not None
            return bytes(held.lvb[:size or len(held.lvb)])

    def _unhold(self, key: ResourceKey, pid: int, releasing: bool) -> HeldResource | None:
        """Drop pid's hold; returns the lease if that was its last holder (else None). With
        `releasing` the key turns busy at once, for the release I/O the caller starts."""
        try:
            with self._lock:
                held = self._held_for(key, pid)
                if held is None:
                    raise LeaseNotHeld(f"pid {pid} does not hold {key[1]!r}")
                if releasing and key in self._converting:
                    raise _ConvertInFlight
                held.sharers.discard(pid)
                held.persistent_pids.discard(pid)
                if held.sharers:
                    return None
                if releasing:
                    self._busy.add(key)
                return self.held.pop(key)
        finally:
            self._holders_changed()

    def releasing(self, lockspace: Lockspace, key: ResourceKey, pid: int, rename: str = ""
                  ) -> Algorithm[None]:
        """Release pid's hold (the lease on disk with its last local holder; its leader then
        names the resource `rename`, if given). In a lockspace whose host lease is gone the
        hold is only forgotten, as sanlock drops such tokens: the disk is not ours to write,
        and others take the lease after host_dead anyway."""
        if rename and (held := self.holding(key, pid)) is not None and held.lease.shared:
            raise UsageError(f"lease {key[1]!r} is held shared: no leader to rename")
        if not _writable(lockspace):
            if self.holding(key, pid) is None:
                raise LeaseNotHeld(f"pid {pid} does not hold {key[1]!r}")
            self.drop(key, pid)
            return
        while True:
            try:
                held = self._unhold(key, pid, releasing=True)
                break
            except _ConvertInFlight:  # a holder that exits mid-convert: release its outcome
                yield Sleep(CONVERT_POLL_S)
        if held is not None:
            yield from self._releasing_on_disk(lockspace, held, rename)

    def _releasing_on_disk(self, lockspace: Lockspace, held: HeldResource, rename: str = ""
                           ) -> Algorithm[None]:
        """Release a lease taken out of the table, its key made busy: busy until the release
        I/O has ended, or (if it failed) until its background retries have."""
        key = held.key
        retrying = False
        try:
            # While our host lease outlasts the write's deadline no host can have taken the
            # lease over, so the leader need not be read first (sanlock reads it).
            if held.lvb is not None and held.lvb_set and not held.lease.shared:
                try:  # before the leader is freed: the next holder reads it after its grant
                    yield from write_lvb(held.params, bytes(held.lvb))
                except StorageError as exc:
                    log.warning("the LVB of %s could not be written back: %s", key[1], exc)
            now_s = yield Now()
            unchanged = lockspace.valid_at(now_s + lockspace.timeouts.io_timeout_s)
            yield from release(held.params, held.lease, leader_unchanged=unchanged,
                               rename=rename)
        except StorageError as exc:
            retrying = True
            self._retry_in_background(lockspace, key, "release",
                                      lambda: release(held.params, held.lease, rename=rename))
            raise type(exc)(f"{exc}; the release is retried in the background") from exc
        finally:
            if not retrying:
                with self._lock:
                    self._busy.discard(key)

    def releasing_after_exit(self, lockspace: Lockspace | None, key: ResourceKey,
                             pid: int) -> Algorithm[None]:
        """Release after the holder is gone; failures are logged, not raised. In a lockspace
        that is not held any more the disk is not ours to write: the lease is only forgotten
        (others take it after host_dead)."""
        while self._is_converting(key):
            yield Sleep(CONVERT_POLL_S)
        if self.holding(key, pid) is None:
            return  # released already (its session's end and its acquire both try)
        if lockspace is None:
            self.drop(key, pid)
            return
        if self._orphaned(lockspace, key, pid):
            return
        try:
            yield from self.releasing(lockspace, key, pid)
        except LeasestoreError as exc:
            log.warning("release of %s after its holder left failed: %s", key[1], exc)

    def _is_converting(self, key: ResourceKey) -> bool:
        with self._lock:
            return key in self._converting

    def _orphaned(self, lockspace: Lockspace, key: ResourceKey, pid: int) -> bool:
        """Keep a persistent lease whose last holder `pid` left as an orphan (True), while
        its lockspace is ours to write."""
        with self._lock:
            held = self._held_for(key, pid)
            if (held is None or pid not in held.persistent_pids or held.pids != {pid}
                    or key in self._converting or self.gate.closed(lockspace.name)
                    or not _ours_to_write(lockspace, held)):
                return False  # (a lockspace being removed: its leases are released)
            held.orphan = True
            held.sharers.clear()
        log.info("pid %d left; %s kept as an orphan", pid, held.state)
        self._holders_changed()
        return True

    def orphans(self, name: str, resource: str = "") -> list[HeldResource]:
        """The orphans of lockspace `name` (only that of `resource`, if given)."""
        with self._lock:
            return [h for h in self.held.values() if h.orphan and h.key[0] == name
                    and resource in ("", h.key[1])]

    def releasing_orphan(self, lockspace: Lockspace, key: ResourceKey) -> Algorithm[bool]:
        """Release the orphan of `key`; False if there is none now (adopted, or released
        already). One our host lease no longer covers (the lockspace failed, or the orphan is
        of an earlier host generation) is only forgotten: a release written then could land
        over the leader of a host that took the lease over meanwhile."""
        with self._lock:
            held = self.held.get(key)
            if held is None or not held.orphan:
                return False
            del self.held[key]
            writable = _ours_to_write(lockspace, held)
            if writable:
                self._busy.add(key)
        log.info("releasing the orphan %s", held.state)
        self._holders_changed()
        if writable:
            yield from self._releasing_on_disk(lockspace, held)
        return True

    def busy_in(self, name: str) -> bool:
        """Whether an acquire or release of a lease in lockspace `name` is under way here."""
        with self._lock:
            return any(key[0] == name for key in self._busy)

    def _retry_in_background(self, lockspace: Lockspace, key: ResourceKey, what: str,
                             algorithm: Callable[[], Algorithm[None]]) -> None:
        """Retry `algorithm` (a release, or the withdrawal of a claim) every io_timeout until it
        succeeds, fails for good (the lease moved on: nothing of ours is left on it), or the
        lockspace stops being ours to write. The key, busy already, stays busy until then."""

        def retry() -> Algorithm[None]:
            try:
                while _writable(lockspace) and not self.gate.closed(lockspace.name):
                    yield Sleep(lockspace.timeouts.io_timeout_s)
                    try:
                        yield from algorithm()
                        log.info("lease %s: %s done on retry", key[1], what)
                        return
                    except StorageError as exc:
                        log.warning("lease %s: %s failed again: %s", key[1], what, exc)
                    except LeasestoreError as exc:  # taken over, moved on: nothing left to do
                        log.warning("lease %s: %s abandoned: %s", key[1], what, exc)
                        return
            except Cancelled:
                return
            finally:
                with self._lock:
                    self._busy.discard(key)

        self._spawn(f"retry-{key[1]}", retry())

    def examining(self, name: str) -> Algorithm[list[tuple[HeldResource, Request]]]:
        """The leases held here in lockspace `name` whose request record asks us to give them
        up (a forcing mode, for a version past ours), with those records. A record that cannot
        be read is logged and passed over: the requester asks again."""
        asked: list[tuple[HeldResource, Request]] = []
        for held in self.in_lockspace(name):
            try:
                record = yield from read_request(held.params)
            except LeasestoreError as exc:
                log.warning("examining %s failed: %s", held.key[1], exc)
                continue
            if record.force_mode and record.lver > held.lease.lver:
                asked.append((held, record))
        return asked

    def requesting(self, lockspace: Lockspace, key: ResourceKey, lver: int | None,
                    force_mode: int) -> Algorithm[int]:
        params = yield from self.lease_params(lockspace, key)
        owner: int = yield from request(params, lver, force_mode)
        return owner

    def drop(self, key: ResourceKey, pid: int) -> None:
        """Forget pid's hold without I/O (its lockspace failed: the disk is not ours to touch)."""
        with contextlib.suppress(LeaseNotHeld):
            self._unhold(key, pid, releasing=False)

    def held_by(self, pid: int) -> list[HeldResource]:
        """The leases process `pid` holds here (the one table of who holds what)."""
        with self._lock:
            return [h for h in self.held.values() if pid in h.pids]

    def holding(self, key: ResourceKey, pid: int) -> HeldResource | None:
        """The lease `key` if process `pid` holds it here."""
        with self._lock:
            return self._held_for(key, pid)

    def _held_for(self, key: ResourceKey, pid: int) -> HeldResource | None:
        held = self.held.get(key)
        return held if held is not None and pid in held.pids else None

    def holder_pids(self, name: str | None = None) -> set[int]:
        """The processes holding leases here (in lockspace `name` only, if given), in one pass
        over the table rather than one per process."""
        with self._lock:
            return {pid for h in self.held.values() if name is None or h.key[0] == name
                    for pid in h.pids}

    def recorded_pids(self) -> set[int]:
        """The processes holding a lease here or acquiring one (see on_holders_changed)."""
        with self._lock:
            return {pid for h in self.held.values() for pid in h.pids} | set(self._acquiring_pids)

    def in_lockspace(self, name: str) -> list[HeldResource]:
        with self._lock:
            return [h for h in self.held.values() if h.key[0] == name]


def _writable(lockspace: Lockspace) -> bool:
    """Whether our host lease still makes the lockspace's leases ours to write."""
    return lockspace.state in (LockspaceState.HELD, LockspaceState.RENEWAL_FAILING)


def _ours_to_write(lockspace: Lockspace, held: HeldResource) -> bool:
    """Whether `held` was granted under the host lease we hold now, and that lease lives."""
    return _writable(lockspace) and held.params.generation == lockspace.generation


class _ConvertInFlight(Exception):
    """A release found the holding being converted: it waits for the convert to end."""


class _OpenOnUse(Mapping[str, DirectDevice]):
    """The devices a runner may use, named by path, each opened on first use."""

    def __init__(self, device: Callable[[str], DirectDevice]) -> None:
        self._device = device

    def __getitem__(self, path: str) -> DirectDevice:
        return self._device(path)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0
