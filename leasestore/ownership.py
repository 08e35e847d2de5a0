"""Who holds a resource lease: its owner and shared holders as the area on disk records them,
with each holder's host as a daemon sees it or as a watch of the lockspace's delta sectors
shows it.

Invariants:
- Only reads. A resource whose leader does not verify is reported with its error, never as
  free or unowned.
- A holder's host is "gone" only on evidence on disk: its host_id was released (timestamp 0)
  or acquired again with a newer generation. Otherwise what is known of it is the daemon's
  state (live, fail, dead, ...) or, without a daemon, whether its delta timestamp changed
  while we watched: "live" if it did, "stale" if it did not through a watch longer than that
  host's renewal interval (failing or dead: only a daemon watching for host_dead can say
  which), "unknown" for a shorter watch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from leasestore import daemonless, direct
from leasestore.errors import CorruptRecord, LeaseMismatch, StorageError
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import Leader, LeaderMagic, decode_leader
from leasestore.storage.odirect import DirectDevice
from leasestore.timeouts import Timeouts

SEARCH_LIMIT_B = 1 << 30
"""How far from the start of the resource's device a lockspace area is looked for."""


@dataclass(frozen=True)
class HostView:
    """One host of the lockspace as seen from here."""

    host_id: int
    generation: int
    host_name: str
    state: str
    renewed_ago_s: float | None
    """Seconds since a renewal of it was seen; None when no renewal was seen."""
    source: str
    """"daemon" (a daemon's host table) or "disk" (a watch of the delta sectors)."""


@dataclass(frozen=True)
class Holder:
    host_id: int
    generation: int
    shared: bool
    host: HostView | None
    """None: nothing is known of the host (no lockspace area found, no daemon)."""

    @property
    def gone(self) -> str | None:
        """Why the holding host's incarnation is over, from the disk, or None."""
        if self.host is None:
            return None
        if self.host.state == "free":
            return "its host_id was released"
        if self.host.generation > self.generation:
            return f"its host_id was acquired again (generation {self.host.generation})"
        return None


@dataclass(frozen=True)
class ResourceHolders:
    lockspace: str
    resource: str | None
    path: str
    offset_b: int
    lver: int
    holders: tuple[Holder, ...]
    error: str | None = None


def leases_in(path: str, offset_b: int, length_b: int | None) -> list[ResourceHolders]:
    """Every resource lease (and every unreadable leader) in the range, with its holders on
    disk and nothing yet of their hosts."""
    found = []
    for record in direct.dump(path, offset_b, length_b):
        if record.kind == "paxos" or (record.kind == "leader" and record.error):
            found.append(lease_at([(path, record.offset)]))
    return found


def lease_at(disks: Sequence[tuple[str, int]]) -> ResourceHolders:
    """The resource lease on `disks` (1-4, judged by majority: daemonless.lease_holdings) and
    its holders; a leader that does not verify, or disks that cannot be read (no majority),
    give an entry with its error, so one such lease never hides the others of a range."""
    path, offset_b = disks[0]
    try:
        holdings = daemonless.lease_holdings(disks)
    except (CorruptRecord, LeaseMismatch, StorageError) as exc:
        return ResourceHolders("", None, path, offset_b, 0, (), error=str(exc))
    leader = holdings.leader
    holders = tuple(Holder(o.host_id, o.generation, o.shared, None)
                    for o in daemonless.owners_of(holdings))
    return ResourceHolders(leader.space_name, leader.resource_name, path, offset_b, leader.lver,
                           holders)


def with_hosts(lease: ResourceHolders, hosts: dict[int, HostView]) -> ResourceHolders:
    return ResourceHolders(lease.lockspace, lease.resource, lease.path, lease.offset_b,
                           lease.lver, tuple(Holder(h.host_id, h.generation, h.shared,
                                                    hosts.get(h.host_id))
                                             for h in lease.holders), lease.error)


def find_lockspace_area(lockspace: str, path: str) -> int | None:
    """The offset of lockspace's area on `path`, looked for in its first SEARCH_LIMIT_B."""
    for record in direct.dump(path, 0, None if _size(path) <= SEARCH_LIMIT_B
                              else SEARCH_LIMIT_B):
        if record.kind == "delta" and record.host_id == 1 and record.lockspace == lockspace \
                and record.error is None:
            return record.offset
    return None


def _size(path: str) -> int:
    with DirectDevice(path, readonly=True) as device:
        return device.size_b


def _delta_sectors(device: DirectDevice, offset_b: int, geometry: Geometry, lockspace: str,
                   host_ids: Iterable[int]) -> dict[int, Leader | str]:
    """Each host_id's delta leader, or the error that makes it unreadable."""
    wanted = sorted(set(host_ids))
    ss = geometry.sector_size
    raw = device.read(offset_b, wanted[-1] * ss, direct.WRITE_INIT_IO_TIMEOUT_S)
    found: dict[int, Leader | str] = {}
    for host_id in wanted:
        at = (host_id - 1) * ss
        try:
            leader = decode_leader(raw[at:at + ss], (LeaderMagic.DELTA,))
        except CorruptRecord as exc:
            found[host_id] = str(exc.at(offset_b + at))
            continue
        found[host_id] = (leader if leader.space_name == lockspace else
                          f"lockspace name {leader.space_name!r} differs from {lockspace!r}")
    return found


def watch_hosts(path: str, offset_b: int, lockspace: str, host_ids: Iterable[int],
                watch_s: float, sleep: Callable[[float], None] = time.sleep) -> dict[int, HostView]:
    """The hosts' delta sectors read now and again after watch_s, judged as the module says."""
    ids = sorted(set(host_ids))
    if not ids:
        return {}
    with DirectDevice(path, readonly=True) as device:
        first = decode_leader(device.read(offset_b, device.sector_size,
                                          direct.WRITE_INIT_IO_TIMEOUT_S), (LeaderMagic.DELTA,))
        geometry = first.geometry()
        before = _delta_sectors(device, offset_b, geometry, lockspace, ids)
        if watch_s > 0:
            sleep(watch_s)
        after = _delta_sectors(device, offset_b, geometry, lockspace, ids) if watch_s > 0 \
            else before
    views = {}
    for host_id in ids:
        old, new = before[host_id], after[host_id]
        if isinstance(new, str):
            views[host_id] = HostView(host_id, 0, "", f"corrupt: {new}", None, "disk")
            continue
        views[host_id] = _judged(host_id, old, new, watch_s)
    return views


def _judged(host_id: int, old: Leader | str, new: Leader, watch_s: float) -> HostView:
    def view(state: str, renewed_ago_s: float | None = None) -> HostView:
        return HostView(host_id, new.owner_generation, new.resource_name, state, renewed_ago_s,
                        "disk")

    if new.timestamp == 0:
        return view("free")
    if isinstance(old, str) or old.timestamp != new.timestamp \
            or old.owner_generation != new.owner_generation:
        return view("live", watch_s) if watch_s > 0 else view("unknown")
    renewal_interval_s = Timeouts(max(new.io_timeout, 1)).id_renewal_s
    return view("stale") if watch_s > renewal_interval_s + 1 else view("unknown")


def watch_needed_s(io_timeouts: Iterable[int]) -> float:
    """A watch long enough to see every one of these hosts renew once (its renewal interval
    and a second), so that "stale" can be told from "unknown"."""
    return max((Timeouts(max(t, 1)).id_renewal_s for t in io_timeouts), default=0.0) + 2.0


def io_timeouts_of(path: str, offset_b: int, lockspace: str, host_ids: Iterable[int]
                   ) -> list[int]:
    """The io_timeouts the hosts wrote in their delta sectors (unreadable ones left out)."""
    ids = sorted(set(host_ids))
    if not ids:
        return []
    with DirectDevice(path, readonly=True) as device:
        first = decode_leader(device.read(offset_b, device.sector_size,
                                          direct.WRITE_INIT_IO_TIMEOUT_S), (LeaderMagic.DELTA,))
        sectors = _delta_sectors(device, offset_b, first.geometry(), lockspace, ids)
    return [s.io_timeout for s in sectors.values() if not isinstance(s, str)]
