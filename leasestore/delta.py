"""Delta leases (host_id leases), as effect generators. Light-weight leases after Chockler and
Malkhi, with sanlock's exact rules so that sanlock hosts and ours share a lockspace safely.

Each host writes only its own sector; other hosts only read it. Timestamps are the writer's
lease-clock seconds (clock.py) and are never compared across hosts: a peer is alive when *we*
see its (owner_id, generation, timestamp) change.

acquire:  read own sector. Free (timestamp 0): write at once. Otherwise wait
          max(host_dead, 8*io_timeout) of the *previous* holder, watching the sector: any change
          means it is alive (HostIdBusy). Unlike sanlock, a record carrying our own host name is
          waited out too (see `acquire`). Then write (generation + 1, our name,
          timestamp = now), wait 2*io_timeout, re-read: anything but our record means another host
          raced us (HostIdBusy).
join:     acquire; if its waits (set by the io_timeout found on disk) outlasted our renewal
          interval, renew once before the lease counts as held.
renew:    one read of the whole area (all hosts' sectors), verify our sector is exactly what we
          last wrote, then one write of our sector with a new timestamp.
release:  write our sector with timestamp 0.

Invariant for callers: the lease is valid until `last_success_s + id_renewal_fail_s` on our
lease clock (clock.py), where last_success_s is the timestamp of our last successful renewal: the
time its verifying read was issued (for acquire, the time just before the write). Past that
moment it is never renewed again, however long the host was paused. A host that takes over our
host_id does so no earlier than host_dead seconds after it last saw our timestamp change, which is
later than that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from leasestore.effects import Algorithm, Now, Read, Sleep, Write
from leasestore.errors import (
    BadGeometry,
    BadSectorSize,
    Cancelled,
    CorruptRecord,
    HostIdBusy,
    HostIdInvalid,
    HostLeaseExpired,
    LeasestoreError,
    RenewDiff,
    RenewOwner,
    StorageError,
    UsageError,
    WrongLockspace,
)
from leasestore.ondisk.geometry import SECTOR_SIZES, Geometry
from leasestore.ondisk.leader import (
    LEADER_SIZE,
    Leader,
    LeaderMagic,
    decode_leader,
    encode_delta_sector,
    fire_timeout_word,
)
from leasestore.timeouts import Timeouts

PROBE_SIZE_B = 4096
ACQUIRE_WATCH_INTERVAL_S_FACTOR = 2
"""While waiting out a previous holder, re-read its sector every 2*io_timeout."""
RENEW_RETRY_S = 0.5
"""Pause between a failed renewal and the next try (sanlock retries about this often)."""


@dataclass(frozen=True)
class DeltaParams:
    """Everything the algorithm needs to know about one host's lease in one lockspace."""

    device: str
    area_offset_b: int
    geometry: Geometry
    space_name: str
    host_id: int
    host_name: str
    timeouts: Timeouts
    publish_fire_timeout: bool = True
    """False: write no fire timeout into our delta leader, as a sanlock host writes none (the
    simulator's model of one)."""

    @property
    def fire_timeout_word(self) -> int:
        """What our delta leader's `unused1` carries."""
        return fire_timeout_word(self.timeouts.watchdog_fire_timeout_s) \
            if self.publish_fire_timeout else 0

    @property
    def sector_offset_b(self) -> int:
        return self.area_offset_b + self.geometry.delta_offset(self.host_id)

    @property
    def io_timeout_s(self) -> float:
        return float(self.timeouts.io_timeout_s)


@dataclass(frozen=True)
class RenewOutcome:
    """A successful renewal: what we wrote, the area as read before the write, and when
    (our lease clock): started (the timestamp's source) <= read issued <= read done (the
    time the area describes) <= write done."""

    leader: Leader
    area: bytes | memoryview
    read_started_s: float
    read_issued_s: float
    read_done_s: float
    write_done_s: float

    @property
    def read_s(self) -> float:
        return self.read_done_s - self.read_issued_s

    @property
    def write_s(self) -> float:
        """From the read's completion: the check between the I/Os is part of the renewal."""
        return self.write_done_s - self.read_done_s


def verify_delta(raw: bytes | memoryview, space_name: str, offset_b: int) -> Leader:
    """Decode a delta sector and check it belongs to `space_name` (sanlock's order of checks)."""
    try:
        leader = decode_leader(raw, (LeaderMagic.DELTA,))
    except CorruptRecord as exc:
        raise exc.at(offset_b) from None
    if leader.space_name != space_name:
        raise WrongLockspace(
            f"sector at {offset_b} belongs to lockspace {leader.space_name!r}, not {space_name!r}"
        )
    return leader


def probe_geometry(
    device: str, area_offset_b: int, space_name: str, host_id: int, timeouts: Timeouts
) -> Algorithm[Geometry]:
    """Read host 1's sector and take the area's geometry from it; check host_id fits."""
    raw = yield Read(device, area_offset_b, PROBE_SIZE_B, float(timeouts.io_timeout_s))
    leader = verify_delta(raw, space_name, area_offset_b)
    if leader.sector_size not in SECTOR_SIZES:
        raise BadSectorSize("delta leader", f"sector size {leader.sector_size}", area_offset_b)
    try:
        geometry = leader.geometry()
    except UsageError as exc:
        raise BadGeometry("delta leader", str(exc), area_offset_b) from None
    if not 1 <= host_id <= geometry.max_hosts:
        raise HostIdInvalid(f"host_id {host_id} is outside 1..{geometry.max_hosts}")
    if area_offset_b % geometry.align_size:
        raise UsageError(f"lockspace offset {area_offset_b} is not a multiple of "
                         f"{geometry.align_size}")
    return geometry


def _now_stamp(now_s: float) -> int:
    """On-disk timestamps are whole seconds and 0 means free, so never write 0."""
    return max(1, int(now_s))


def read_own(p: DeltaParams) -> Algorithm[Leader]:
    raw = yield Read(p.device, p.sector_offset_b, p.geometry.sector_size, p.io_timeout_s)
    return verify_delta(raw, p.space_name, p.sector_offset_b)


def _write_own(p: DeltaParams, leader: Leader, bitmap: bytes, timeout_s: float) -> Algorithm[None]:
    sector = encode_delta_sector(leader, p.geometry.sector_size, bitmap)
    yield Write(p.device, p.sector_offset_b, sector, timeout_s)


def _wait_out_previous_holder(p: DeltaParams, seen: Leader) -> Algorithm[None]:
    """Wait until the previous holder must be dead, re-reading its sector as we go.

    Raises HostIdBusy as soon as the record changes (other than being released).
    """
    other = p.timeouts.for_peer(seen)
    delay_s = max(other.host_dead_s, other.delta_large_delay_s)
    watch_s = ACQUIRE_WATCH_INTERVAL_S_FACTOR * p.io_timeout_s
    start_s: float = yield Now()
    while True:
        now_s: float = yield Now()
        remaining_s = delay_s - (now_s - start_s)
        if remaining_s <= 0:
            break
        yield Sleep(min(watch_s, remaining_s))
        current = yield from read_own(p)
        if current.timestamp == 0:
            return
        if current.encode() != seen.encode():
            raise HostIdBusy(
                f"host_id {p.host_id} of {p.space_name!r} is held by live host "
                f"{current.resource_name!r} (generation {current.owner_generation})"
            )


def acquire(p: DeltaParams) -> Algorithm[Leader]:
    """Take our host_id; returns the record written. Its timestamp starts the lease's validity."""
    mine, _ = yield from _acquire(p)
    return mine


def _acquire(p: DeltaParams) -> Algorithm[tuple[Leader, Leader]]:
    """`acquire`, also returning the record found before ours (whose io_timeout set the waits)."""
    seen = yield from read_own(p)
    if seen.timestamp != 0:
        # Even a record with our own host name is waited out: a late write of an earlier,
        # failed attempt of ours can put our name over another host's live record.
        yield from _wait_out_previous_holder(p, seen)
        seen = yield from read_own(p)
    now_s: float = yield Now()
    mine = seen.replace(
        owner_id=p.host_id,
        owner_generation=seen.owner_generation + 1,
        resource_name=p.host_name,
        timestamp=_now_stamp(now_s),
        io_timeout=p.timeouts.io_timeout_s,
        unused1=p.fire_timeout_word,
    )
    yield from _write_own(p, mine, b"", p.io_timeout_s)
    other = p.timeouts.for_peer(seen)
    try:
        yield Sleep(other.delta_short_delay_s)
        check = yield from read_own(p)
    except Cancelled:
        yield from release(p, mine)
        raise
    if check.encode() != mine.encode():
        raise HostIdBusy(
            f"host_id {p.host_id} of {p.space_name!r} was taken by "
            f"{check.resource_name!r} while we acquired it"
        )
    return mine, seen


def join(p: DeltaParams, observer: HostLeaseObserver, bitmap: bytes = b"") -> Algorithm[Leader]:
    """Acquire, and end holding a lease that is valid for id_renewal_fail_s from about now.

    The short delay after our write follows the io_timeout found on disk (the format's, or the
    previous holder's), which may exceed our own renewal window: a lockspace formatted with
    io_timeout 10 and joined with 1 waits 20 s, past our 8 s of validity. Such a join renews
    once before it counts as held (the renewal's read re-verifies our record), so the lease
    starts valid. If that renewal cannot be written the join fails and, the record being ours
    and nothing held under it, the slot is released again rather than left looking held.
    """
    mine, seen = yield from _acquire(p)
    if seen.io_timeout not in (0, p.timeouts.io_timeout_s):
        observer.mismatch(f"lockspace {p.space_name!r}: host_id {p.host_id} was last written "
                          f"with io_timeout {seen.io_timeout} s, ours is "
                          f"{p.timeouts.io_timeout_s} s; the join waited by the former")
    now_s: float = yield Now()
    if now_s - mine.timestamp < p.timeouts.id_renewal_s:
        return mine
    try:
        outcome = yield from renew(p, mine, True, bitmap)
    except StorageError:
        with contextlib.suppress(StorageError):
            yield from release(p, mine)
        raise
    return outcome.leader


@dataclass(frozen=True)
class HostEvent:
    """A host event as it rides in the sender's delta leader (sanlock's layout): write_id holds
    the target's generation (0: any), write_generation the event, write_timestamp its data.
    The target is named by the sender's bitmap bits, not here."""

    generation: int
    event: int
    data: int

    @classmethod
    def carried_by(cls, leader: Leader) -> HostEvent:
        return cls(leader.write_id, leader.write_generation, leader.write_timestamp)


def renew(
    p: DeltaParams, last: Leader, last_ok: bool, bitmap: bytes = b"",
    expires_at_s: float | None = None, event: HostEvent | None = None,
) -> Algorithm[RenewOutcome]:
    """One renewal. RenewOwner / RenewDiff / CorruptRecord / HostLeaseExpired mean the lease is
    lost for good. `expires_at_s` (our clock): past it the lease must not be renewed at all,
    however long we were paused before getting here. `event`: the host event our record
    carries from now on (None: the one it carried)."""
    read_started_s: float = yield Now()
    if expires_at_s is not None and read_started_s >= expires_at_s:
        raise HostLeaseExpired(
            f"host lease of {p.space_name!r} expired {read_started_s - expires_at_s:.1f} s ago")
    # The new timestamp is the time the read was *issued*: the verification below is only as
    # fresh as that read, so a pause between read and write must not extend the lease. What we
    # write therefore depends on nothing the read returns, and is encoded before the read is
    # issued: between the two I/Os there is only the check of what was read.
    carried = {} if event is None else {"write_id": event.generation,
                                        "write_generation": event.event,
                                        "write_timestamp": event.data}
    mine = last.replace(timestamp=_now_stamp(read_started_s), io_timeout=p.timeouts.io_timeout_s,
                        unused1=p.fire_timeout_word, **carried)
    sector = encode_delta_sector(mine, p.geometry.sector_size, bitmap)
    read_issued_s: float = yield Now()
    area = yield Read(p.device, p.area_offset_b, p.geometry.area_size, p.io_timeout_s, view=True)
    read_done_s: float = yield Now()
    own_at = p.geometry.delta_offset(p.host_id)
    # Our record exactly as we wrote it passes every check below, so only a differing one (or
    # one we cannot vouch for after a failed write) is decoded and classified.
    if not (last_ok and area[own_at:own_at + LEADER_SIZE] == last.encode()):
        current = verify_delta(
            area[own_at:own_at + p.geometry.sector_size], p.space_name, p.sector_offset_b
        )
        if (current.owner_id, current.owner_generation, current.resource_name) != (
            last.owner_id, last.owner_generation, last.resource_name
        ):
            raise RenewOwner(
                f"host_id {p.host_id} of {p.space_name!r} now belongs to "
                f"{current.resource_name!r} generation {current.owner_generation}"
            )
        if last_ok:
            raise RenewDiff(f"our sector in {p.space_name!r} changed under us")
    yield Write(p.device, p.sector_offset_b, sector, p.timeouts.renewal_write_timeout_s)
    write_done_s: float = yield Now()
    return RenewOutcome(mine, area, read_started_s, read_issued_s, read_done_s, write_done_s)


def release(p: DeltaParams, last: Leader) -> Algorithm[None]:
    """Give the host_id up: our record with timestamp 0 (name and generation kept)."""
    yield from _write_own(p, last.replace(timestamp=0), b"", p.io_timeout_s)


class HostLeaseObserver:
    """Receives a host lease's events. Methods run synchronously inside the algorithm."""

    def joined(self, leader: Leader) -> None:
        """We hold the host_id; `leader.timestamp` starts the validity window."""

    def renewed(self, outcome: RenewOutcome) -> None:
        """A renewal succeeded."""

    def renewal_failed(self, error: LeasestoreError, started_s: float, elapsed_s: float) -> None:
        """A renewal attempt failed with an I/O error; the loop will retry."""

    def lost(self, error: LeasestoreError) -> None:
        """The lease is gone for good (taken, corrupted, or expired)."""

    def released(self) -> None:
        """The host_id was given up cleanly."""

    def mismatch(self, message: str) -> None:
        """The area disagrees with our configuration in a way that costs time, not safety."""

    def may_release(self) -> bool:
        """Asked when cancelled: False if the lease expired meanwhile. Releasing an expired lease
        would mark our slot free, letting others skip the wait that protects our holders."""
        return True


def _no_event() -> HostEvent | None:
    return None


def host_lease_loop(
    p: DeltaParams,
    observer: HostLeaseObserver,
    bitmap: Callable[[], bytes] = lambda: b"",
    event: Callable[[], HostEvent | None] = _no_event,
) -> Algorithm[None]:
    """Acquire, then renew every id_renewal_s until cancelled (then release) or lost.

    The runner stops the loop by throwing Cancelled into a Sleep. The loop gives up on its own
    once id_renewal_fail_s pass without a successful renewal: past that our lease may already be
    judged expired by our own rules, so we must not renew it back to life.
    """
    last = yield from join(p, observer, bitmap())
    observer.joined(last)
    last_success_s = float(last.timestamp)
    last_ok = True
    while True:
        now_s: float = yield Now()
        if now_s - last_success_s >= p.timeouts.id_renewal_fail_s:
            observer.lost(HostLeaseExpired(f"no successful renewal of {p.space_name!r} for "
                                           f"{now_s - last_success_s:.1f} s: lease expired"))
            return
        due_s = (last_success_s + p.timeouts.id_renewal_s) if last_ok else now_s + RENEW_RETRY_S
        try:
            if due_s > now_s:
                yield Sleep(due_s - now_s)
        except Cancelled:
            if observer.may_release():
                yield from release(p, last)
                observer.released()
            return
        started_s: float = yield Now()
        try:
            outcome = yield from renew(p, last, last_ok, bitmap(),
                                       last_success_s + p.timeouts.id_renewal_fail_s, event())
        except StorageError as exc:
            ended_s: float = yield Now()
            last_ok = False
            observer.renewal_failed(exc, started_s, ended_s - started_s)
            continue
        except (CorruptRecord, RenewOwner, RenewDiff, WrongLockspace, HostLeaseExpired) as exc:
            observer.lost(exc)
            return
        last, last_ok = outcome.leader, True
        last_success_s = float(last.timestamp)
        observer.renewed(outcome)
        del outcome  # its area may be a view of the device's buffer: free it for the next read
