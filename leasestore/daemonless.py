"""Lease operations without a daemon, as `sanlock direct` offers them: read a leader or a host's
delta record, find a free host_id, and acquire, renew or release a host lease or a resource
lease by running the shipped algorithms (delta.py, paxos.py) once on the device.

Invariants:
- every write goes through the same algorithm the daemon runs, so a daemon-less acquire obeys
  the same waits (host_dead, the short delay) and can never take a lease a live host holds;
- nothing is renewed afterwards and no watchdog fences a holder: a host lease taken here
  expires id_renewal_fail_s after its last renewal, and a resource lease taken here is free to
  others once its host lease has been dead for host_dead. These verbs are for inspection,
  repair and tests, not for protecting data;
- a resource is acquired only for a host whose host lease is held (timestamp set) at the
  generation named, and released only if its leader names that host and generation;
- a record that does not verify is an error, never free;
- `write_leader` (repair) writes one leader over a free one that verifies; over one that is
  held, names another lease, or does not verify, only when forced.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from leasestore import delta, direct, paxos, rindex
from leasestore.errors import (
    AreaInUse,
    CorruptRecord,
    HostIdInvalid,
    LeaseMismatch,
    LeaseNotHeld,
    LockspaceNotJoined,
    ReleaseOwner,
    StorageError,
    UsageError,
    WrongLockspace,
    WrongResource,
)
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import (
    DELTA_VERSION,
    LEADER_SIZE,
    PAXOS_VERSION,
    Leader,
    LeaderMagic,
    decode_leader,
    decode_leader_unverified,
    new_delta_leader,
    new_paxos_leader,
)
from leasestore.ondisk.rindex import RindexEntry, RindexHeader
from leasestore.specs import LockspaceSpec, ResourceSpec, RindexSpec
from leasestore.storage.device import Device
from leasestore.storage.odirect import DirectDevice
from leasestore.storage.runner import DeviceRunner
from leasestore.timeouts import Timeouts

READ_TIMEOUT_S = 60.0
"""Bound on each read of the inspection verbs (sanlock's write_init_io_timeout)."""


@dataclass(frozen=True)
class LeaderRead:
    """What read_leader found: the leader as decoded (None if it did not decode) and the error
    that makes it unusable for the lease named (None if it is that lease's)."""

    leader: Leader | None
    error: CorruptRecord | LeaseMismatch | None


class _Opened(dict[str, Device]):
    """The devices that opened; using one that did not raises the error its open raised, so
    that a disk which cannot be opened counts as a failed disk (of several, a minority may)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: dict[str, StorageError] = {}

    def __missing__(self, path: str) -> Device:
        raise self.failed.get(path) or StorageError(f"{path}: not opened")


@contextmanager
def _runner(*paths: str, readonly: bool = False) -> Iterator[DeviceRunner]:
    with ExitStack() as stack:
        opened = _Opened()
        for path in dict.fromkeys(paths):
            try:
                opened[path] = stack.enter_context(DirectDevice(path, readonly=readonly))
            except StorageError as exc:
                opened.failed[path] = exc
            except OSError as exc:
                opened.failed[path] = StorageError(f"{path}: {exc.strerror or exc}")
        yield DeviceRunner(opened)


def lease_holdings(disks: Sequence[paxos.DiskRef]) -> paxos.Holdings:
    """Who holds the resource lease on `disks` (1-4, as paxos.read_holdings judges it: on
    several, by a majority of copies that verify whole). The copies must be of the lease
    whose leader the first disk that reads and verifies holds; a leader that does not verify
    on any disk is that error (a CorruptRecord), never a free lease."""
    found = _first_paxos_leader(disks)
    with _runner(*(path for path, _ in disks), readonly=True) as runner:
        return runner.run(paxos.read_holdings(paxos.reading_params(
            disks, found, int(READ_TIMEOUT_S))))


def lease_leader(disks: Sequence[paxos.DiskRef]) -> Leader:
    """The resource lease's leader on `disks`: on one, the sector as it verifies; on several,
    the newest copy of a majority that verify (paxos.read_leader)."""
    found = _first_paxos_leader(disks)
    if len(disks) == 1:
        return found
    with _runner(*(path for path, _ in disks), readonly=True) as runner:
        return runner.run(paxos.read_leader(paxos.reading_params(
            disks, found, int(READ_TIMEOUT_S))))


@dataclass(frozen=True)
class ResourceOwner:
    """A host holding a resource lease, as its disks tell: the exclusive owner (its leader
    timestamp set), or a shared holder (its latest dblock copy marked shared)."""

    host_id: int
    generation: int
    timestamp: int
    shared: bool


def resource_owners(disks: Sequence[paxos.DiskRef]) -> list[ResourceOwner]:
    """The holders of the resource lease on `disks` (owners_of its lease_holdings)."""
    return owners_of(lease_holdings(disks))


def owners_of(holdings: paxos.Holdings) -> list[ResourceOwner]:
    """The exclusive owner first (if the leader's timestamp is set), then every shared holder
    in host_id order."""
    leader = holdings.leader
    owners = []
    if leader.owner_id and leader.timestamp:
        owners.append(ResourceOwner(leader.owner_id, leader.owner_generation, leader.timestamp,
                                    False))
    owners += [ResourceOwner(host_id, generation, 0, True)
               for host_id, generation in holdings.shared]
    return owners


def _first_paxos_leader(disks: Sequence[paxos.DiskRef]) -> Leader:
    """The paxos leader of the first of `disks` where one reads and verifies. If none does,
    the first disk's record error (a CorruptRecord: an uninitialised or cleared area says
    more than a disk that cannot be read), else the last disk's error."""
    errors: list[CorruptRecord | StorageError] = []
    for path, offset_b in disks:
        try:
            return direct.read_paxos_leader(path, offset_b)
        except (CorruptRecord, StorageError) as exc:
            errors.append(exc)
        except OSError as exc:
            errors.append(StorageError(f"{path}: {exc.strerror or exc}"))
    if not errors:
        raise UsageError("a resource lease has at least one disk")
    raise next((e for e in errors if isinstance(e, CorruptRecord)), errors[-1])


def _read(path: str, offset_b: int, length_b: int | None = None) -> bytes:
    """length_b bytes at offset_b (default: one of the device's sectors, which holds a leader)."""
    with DirectDevice(path, readonly=True) as device:
        return device.read(offset_b, length_b or device.sector_size, READ_TIMEOUT_S)


def read_leader(path: str, offset_b: int, lockspace: str, *, host_id: int | None = None,
                resource: str | None = None) -> LeaderRead:
    """The delta leader of `host_id` in the lockspace area at offset_b (host_id given), or the
    paxos leader of `resource` there; a leader of another lockspace or resource is returned
    with the mismatch as its error."""
    if (host_id is None) == (resource is None):
        raise UsageError("read_leader takes a host_id or a resource name")
    if host_id is not None:
        first = _read(path, offset_b)
        try:
            geometry = decode_leader(first, (LeaderMagic.DELTA,)).geometry()
        except CorruptRecord as exc:
            return LeaderRead(None, exc.at(offset_b))
        if not 1 <= host_id <= geometry.max_hosts:
            raise HostIdInvalid(f"host_id {host_id} is outside 1..{geometry.max_hosts}")
        at = offset_b + geometry.delta_offset(host_id)
        magics: tuple[int, ...] = (LeaderMagic.DELTA,)
    else:
        at, magics = offset_b, (LeaderMagic.PAXOS, LeaderMagic.PAXOS_CLEAR)
    try:
        leader = decode_leader(_read(path, at), magics)
    except CorruptRecord as exc:
        return LeaderRead(None, exc.at(at))
    if leader.space_name != lockspace:
        return LeaderRead(leader, WrongLockspace(
            f"the leader at {path}:{at} is lockspace {leader.space_name!r}, not {lockspace!r}"))
    if resource is not None and leader.resource_name != resource:
        return LeaderRead(leader, WrongResource(
            f"the leader at {path}:{at} is resource {leader.resource_name!r}, not {resource!r}"))
    return LeaderRead(leader, None)


def read_lease_leader(resource: ResourceSpec) -> LeaderRead:
    """The paxos leader of `resource`: on one disk, as read_leader reads it; on several, the
    one a majority shows (lease_holdings), with a name mismatch as its error."""
    if len(resource.disks) == 1:
        return read_leader(resource.path, resource.offset_b, resource.lockspace,
                           resource=resource.name)
    try:
        leader = lease_leader(resource.disks)
    except (CorruptRecord, LeaseMismatch) as exc:
        return LeaderRead(None, exc)
    where = f"{resource.path}:{resource.offset_b} (and its further disks)"
    if leader.space_name != resource.lockspace:
        return LeaderRead(leader, WrongLockspace(
            f"the lease at {where} is in lockspace {leader.space_name!r}, not "
            f"{resource.lockspace!r}"))
    if leader.resource_name != resource.name:
        return LeaderRead(leader, WrongResource(
            f"the lease at {where} is resource {leader.resource_name!r}, not "
            f"{resource.name!r}"))
    return LeaderRead(leader, None)


_FIELD_BITS = {"flags": 32, "io_timeout": 16} | {
    name: 64 for name in ("num_hosts", "max_hosts", "owner_id", "owner_generation", "lver",
                          "timestamp", "write_id", "write_generation", "write_timestamp")}
WRITABLE_FIELDS = tuple(_FIELD_BITS)
"""The leader fields write_leader may set (names and kind come from the lease named)."""


@dataclass(frozen=True)
class LeaderWritten:
    before: Leader | None
    """The leader that was there, if it verified."""
    written: Leader
    forced: str | None
    """Why the write needed force (None if it did not)."""


def write_leader(path: str, offset_b: int, lockspace: str, *, host_id: int | None = None,
                 resource: str | None = None, changes: Mapping[str, int],
                 geometry: Geometry | None = None, force: bool = False) -> LeaderWritten:
    """Write the delta leader of `host_id` in the lockspace area at offset_b, or the paxos
    leader of `resource` there, with `changes` (WRITABLE_FIELDS) over what is there: the
    leader as it lies (even unverified), or, if it is no leader of that kind, a free one of
    `geometry` (512/1M by default). The rest of the sector (a host's bitmap) is kept. Without
    `force` it writes only over a leader that verifies, is free (timestamp 0) and names this
    lease; AreaInUse otherwise, nothing written."""
    if (host_id is None) == (resource is None):
        raise UsageError("write_leader takes a host_id or a resource name")
    unknown = sorted(set(changes) - set(WRITABLE_FIELDS))
    if unknown:
        raise UsageError(f"write_leader cannot set {', '.join(unknown)}; it sets "
                         f"{', '.join(WRITABLE_FIELDS)}")
    for name, value in changes.items():
        if not 0 <= value < 1 << _FIELD_BITS[name]:
            raise UsageError(f"{name} {value} does not fit its {_FIELD_BITS[name]} bits")
    kind = LeaderMagic.DELTA if host_id is not None else LeaderMagic.PAXOS
    at = offset_b
    if host_id is not None:
        area = geometry
        if area is None:
            try:
                area = decode_leader(_read(path, offset_b), (LeaderMagic.DELTA,)).geometry()
            except CorruptRecord as exc:
                raise UsageError(f"the lockspace area's first record does not verify ({exc}); "
                                 "give its geometry with -Z and -A") from None
        at = offset_b + area.delta_offset(host_id)
    with DirectDevice(path) as device:
        sector = device.read(at, (geometry.sector_size if geometry else device.sector_size),
                             READ_TIMEOUT_S)
        found = read_leader(path, offset_b, lockspace, host_id=host_id, resource=resource)
        before = found.leader if found.error is None else None
        forced = _needs_force(found, kind)
        if forced is not None and not force:
            raise AreaInUse(f"{path}:{at}: {forced}; nothing was written (use --force to "
                            "write anyway)")
        base = _base_leader(sector, kind, lockspace, resource, geometry)
        written = base.replace(space_name=lockspace, **(
            {"resource_name": resource} if resource is not None else {}), **changes)
        device.write(at, written.encode() + bytes(sector[LEADER_SIZE:]), READ_TIMEOUT_S)
        check = decode_leader(device.read(at, len(sector), READ_TIMEOUT_S), (kind,))
    return LeaderWritten(before, check, forced)


def _needs_force(found: LeaderRead, kind: int) -> str | None:
    if found.leader is None:
        return f"the leader there does not verify ({found.error})"
    if found.error is not None:
        return str(found.error)
    if found.leader.magic != kind:
        return f"the record there is a {found.leader.kind} leader"
    if found.leader.timestamp != 0:
        return (f"the lease is held by host {found.leader.owner_id} generation "
                f"{found.leader.owner_generation} (timestamp {found.leader.timestamp})")
    return None


def _base_leader(sector: bytes, kind: int, lockspace: str, resource: str | None,
                 geometry: Geometry | None) -> Leader:
    """What write_leader starts from: the leader in `sector` if it is one of `kind` (verified
    or not), else a free leader of `geometry`."""
    raw = decode_leader_unverified(sector)
    if raw.magic == kind or (kind == LeaderMagic.PAXOS and raw.magic == LeaderMagic.PAXOS_CLEAR):
        return raw.replace(magic=kind, version=DELTA_VERSION if kind == LeaderMagic.DELTA
                           else PAXOS_VERSION)
    fresh = geometry or Geometry(512, 1 << 20)
    if resource is None:
        return new_delta_leader(lockspace, fresh, 0)
    return new_paxos_leader(lockspace, resource, fresh)


def host_record(spec: LockspaceSpec) -> Leader:
    """The verified delta record of spec.host_id (CorruptRecord, WrongLockspace if not)."""
    found = read_leader(spec.path, spec.offset_b, spec.name, host_id=spec.host_id)
    if found.error is not None:
        raise found.error
    assert found.leader is not None
    return found.leader


def next_free_host_id(spec: LockspaceSpec) -> int | None:
    """The lowest host_id whose delta record is free (timestamp 0), or None if all are in
    use. A record that does not verify is neither free nor skipped: it is an error."""
    first = host_record(LockspaceSpec(spec.name, 1, spec.path, spec.offset_b))
    geometry = first.geometry()
    area = _read(spec.path, spec.offset_b, geometry.area_size)
    for host_id in range(1, geometry.max_hosts + 1):
        at = geometry.delta_offset(host_id)
        leader = delta.verify_delta(area[at:at + geometry.sector_size], spec.name,
                                    spec.offset_b + at)
        if leader.timestamp == 0:
            return host_id
    return None


def alignment(path: str) -> Geometry:
    """The geometry sanlock's align call gives a device: its sector size, the legacy align."""
    with DirectDevice(path, readonly=True) as device:
        return Geometry.default_for(device.sector_size)


def _delta_params(spec: LockspaceSpec, host_name: str, timeouts: Timeouts,
                  runner: DeviceRunner) -> delta.DeltaParams:
    if spec.host_id < 1:
        raise HostIdInvalid("a host lease needs a host_id of 1 or more")
    geometry = runner.run(delta.probe_geometry(spec.path, spec.offset_b, spec.name,
                                               spec.host_id, timeouts))
    return delta.DeltaParams(spec.path, spec.offset_b, geometry, spec.name, spec.host_id,
                             host_name, timeouts)


def acquire_host_id(spec: LockspaceSpec, host_name: str, io_timeout_s: int) -> Leader:
    """Take spec.host_id as a join does (waiting out a previous holder, then the short delay);
    returns the record written. Nothing renews it afterwards."""
    timeouts = Timeouts(io_timeout_s)
    with _runner(spec.path) as runner:
        params = _delta_params(spec, host_name, timeouts, runner)
        return runner.run(delta.acquire(params))


def renew_host_id(spec: LockspaceSpec, io_timeout_s: int) -> Leader:
    """Renew spec.host_id's lease once, as the daemon's renewal does, if its record is held
    and not yet expired (id_renewal_fail_s after its timestamp, on this host's lease clock:
    run it on the host that holds the lease)."""
    timeouts = Timeouts(io_timeout_s)
    with _runner(spec.path) as runner:
        last = host_record(spec)
        if last.timestamp == 0:
            raise LeaseNotHeld(f"host_id {spec.host_id} of {spec.name!r} is free: acquire "
                               "it first")
        params = _delta_params(spec, last.resource_name, timeouts, runner)
        expires_at_s = last.timestamp + Timeouts(max(1, last.io_timeout)).id_renewal_fail_s
        return runner.run(delta.renew(params, last, False, expires_at_s=expires_at_s)).leader


def release_host_id(spec: LockspaceSpec) -> Leader:
    """Release spec.host_id (timestamp 0, name and generation kept); returns the record it
    released. A free record is left as it is."""
    with _runner(spec.path) as runner:
        last = host_record(spec)
        if last.timestamp == 0:
            return last
        params = _delta_params(spec, last.resource_name, Timeouts(max(1, last.io_timeout)),
                               runner)
        runner.run(delta.release(params, last))
        return last


@dataclass(frozen=True)
class ResourceHost:
    """The host a daemon-less resource operation acts for, and its lockspace's area."""

    lockspace: LockspaceSpec
    generation: int
    io_timeout_s: int
    geometry: Geometry
    """The lockspace area's, as the host's record says."""


def resource_host(lockspace: LockspaceSpec, generation: int | None) -> ResourceHost:
    """The host named by lockspace.host_id, whose host lease must be held (at `generation`,
    if given): a lease owned by a host whose host lease is free would be anyone's at once."""
    record = host_record(lockspace)
    if record.timestamp == 0:
        raise LockspaceNotJoined(f"host_id {lockspace.host_id} of {lockspace.name!r} holds no "
                                 "host lease (acquire_id it first)")
    if generation is not None and generation != record.owner_generation:
        raise LeaseMismatch(f"host_id {lockspace.host_id} is at generation "
                            f"{record.owner_generation}, not {generation}")
    return ResourceHost(lockspace, record.owner_generation, max(1, record.io_timeout),
                        record.geometry())


def _check_names(resource: ResourceSpec, host: ResourceHost) -> None:
    if resource.lockspace != host.lockspace.name:
        raise UsageError(f"resource {resource.name!r} is in lockspace {resource.lockspace!r}, "
                         f"not {host.lockspace.name!r}")


def _resource_params(resource: ResourceSpec, host: ResourceHost) -> paxos.PaxosParams:
    """The ballot parameters, the geometry from the first of the resource's disks whose
    leader is this lease's (the ballots then read every disk, by majority)."""
    for index, (path, offset_b) in enumerate(resource.disks):
        try:
            found = read_leader(path, offset_b, resource.lockspace, resource=resource.name)
        except StorageError:
            if index == len(resource.disks) - 1:
                raise
            continue
        if found.error is None:
            break
        if index == len(resource.disks) - 1:
            raise found.error
    assert found.leader is not None
    ls = host.lockspace
    return paxos.PaxosParams(resource.path, resource.offset_b, found.leader.geometry(),
                             resource.lockspace, resource.name, ls.host_id, host.generation,
                             Timeouts(host.io_timeout_s), ls.path, ls.offset_b, host.geometry,
                             extra_disks=resource.disks[1:])


def acquire_resource(resource: ResourceSpec, host: ResourceHost, *, shared: bool = False,
                     lver: int | None = None) -> paxos.HeldLease:
    """One acquire of the resource for `host` by the daemon's Disk Paxos ballot (on each of
    the resource's disks, by majority)."""
    _check_names(resource, host)
    with _runner(*(path for path, _ in resource.disks), host.lockspace.path) as runner:
        params = _resource_params(resource, host)
        return runner.run(paxos.acquire(params, shared=shared, lver=lver))


def release_resource(resource: ResourceSpec, host: ResourceHost) -> Leader:
    """Release the resource if its leader says `host` holds it; returns that leader."""
    _check_names(resource, host)
    with _runner(*(path for path, _ in resource.disks), host.lockspace.path) as runner:
        params = _resource_params(resource, host)
        leader = runner.run(paxos.read_leader(params))
        owner = (leader.owner_id, leader.owner_generation)
        if leader.timestamp == 0 or owner != (params.host_id, params.generation):
            raise ReleaseOwner(f"lease {resource.name!r} is not held by host {params.host_id} "
                               f"generation {params.generation} (owner {owner[0]} generation "
                               f"{owner[1]}, lver {leader.lver}"
                               f"{', free' if leader.timestamp == 0 else ''})")
        own = runner.run(paxos.read_lease(params)).own  # the latest copy of our dblock
        if own is None:
            raise ReleaseOwner(f"lease {resource.name!r}: host {params.host_id} has no dblock")
        held = paxos.HeldLease(leader, own, leader.lver)
        runner.run(paxos.release(params, held))
        return leader


# --- the resource index (rindex.py): as `sanlock direct` does it, without the index's lease --


def _rindex_read(rx: RindexSpec, runner: DeviceRunner) -> tuple[RindexHeader,
                                                                list[RindexEntry]]:
    header, entries = runner.run(rindex.reading(rx.path, rx.offset_b, rx.lockspace,
                                                READ_TIMEOUT_S))
    return header, entries


def rindex_format(rx: RindexSpec, sector_size: int | None, align: int | None,
                  max_resources: int, *, force: bool = False) -> RindexHeader:
    """Write both areas of a new index (AreaInUse over live records unless forced)."""
    with DirectDevice(rx.path) as device:
        geometry = direct.resolve_geometry(device, sector_size, align)
        if not force:
            direct.refuse_if_in_use(device, rx.offset_b, geometry, 2 * geometry.align_size)
        header = RindexHeader(rx.lockspace, geometry, rx.offset_b, max_resources)
        DeviceRunner({rx.path: device}).run(rindex.formatting(rx.path, header, READ_TIMEOUT_S))
    return header


def rindex_lookup(rx: RindexSpec, name: str, offset_b: int) -> RindexEntry:
    with _runner(rx.path) as runner:
        header, entries = _rindex_read(rx, runner)
    return rindex.lookup(header, entries, name, offset_b)


def rindex_update(rx: RindexSpec, name: str, offset_b: int, *, remove: bool) -> RindexEntry:
    with _runner(rx.path) as runner:
        header, _entries = _rindex_read(rx, runner)
        return runner.run(rindex.updating(rx.path, header, name, offset_b, remove,
                                          READ_TIMEOUT_S))


def rindex_rebuild(rx: RindexSpec) -> int:
    """Rewrite the entries from the slots' leaders; returns how many it set."""
    with _runner(rx.path) as runner:
        header, _entries = _rindex_read(rx, runner)
        return runner.run(rindex.rebuilding(rx.path, header, READ_TIMEOUT_S))
