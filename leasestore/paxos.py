"""Paxos leases (resource leases): Disk Paxos (Gafni and Lamport) on one disk, with sanlock's
records, ballot numbering and order of I/O, so sanlock hosts and ours can contend for one lease.

acquire: read the leader and every dblock (read 1). If the lease is free, ours, or our earlier
  incarnation's, run a ballot. If another host owns it, watch that host's delta lease: a change
  (or our renewal thread having just seen one) means it is alive -> AcquireIdLive, unless it marked
  its dblock RELEASED; no change for host_dead_seconds (its io_timeout) means its watchdog has
  fired -> ballot. The leader changing meanwhile restarts from read 1.
ballot (next_lver = lver + 1, mbal stride = max_hosts):
  P1 write our dblock {mbal, lver} -> P1 read all dblocks -> choose the value of the highest bal,
  or ourselves -> P2 write {mbal, bal = mbal, value} -> P2 read -> commit the leader.
  A dblock with a higher mbal, or for a later lver, aborts the ballot; we retry after a random
  pause with mbal + max_hosts. On one disk, dblocks with bad checksums are skipped in ballots
  (but fail read 1); on several, a bad one fails its disk's copy in every read.
rolled-back leader (a late write landed over a newer one; read 1 finds dblocks beyond it):
  dblocks carrying a value above lver + 1 (or RELEASED at lver + 1) -> re-commit the highest
  such version's value by a ballot; dblocks above lver + 1 carrying no value and higher than any
  value -> commit the version below them free. Phase-1-only dblocks never name a value.
  An acquire that fails once our value may stand accepted marks it RELEASED; if even that write
  fails it raises ClaimNotWithdrawn, and the caller retries `withdraw_claim` until it lands.
  A lease whose leader still names us and which only our RELEASED dblock frees is committed
  free before our next ballot, whose first write replaces that mark.
release: read the leader (skipped while our host lease outlasts the write: nobody can have
  taken it over); if it is still ours, write our RELEASED dblock and the free leader together.
  A release that fails is retried; finding the leader freed by us at our lver, the retry writes
  only the RELEASED dblock (our dblock must not keep an earlier write of ours, landed late).
shared: a short exclusive hold (SHORT_HOLD flag), then our mode block says SHARED and the leader
  is released; exclusive acquirers must wait for shared holders to leave or die.
convert: shared to exclusive runs an exclusive acquire's ballots with our SHARED mark kept in
  every dblock write (so a failure leaves us shared) and clears it once no other live host holds
  the lease shared; exclusive to shared writes the mark, then the RELEASED dblock (with it) and
  the free leader.

several disks (1-4, the same records at an offset of each; `PaxosParams.disks`): every write
  goes to all of them at once and succeeds once a majority did; every read asks all of them and
  goes on with a majority of copies that read and verify (a copy with a bad checksum counts as
  a disk that failed). Each waits only for the first majority to answer (the I/O still in
  flight is abandoned, as at a timeout), so one slow disk delays no step; a read waits for every
  disk only when one of the first copies fails to verify. Dblocks are the union of the copies
  read: a ballot aborts on any copy ahead of it and adopts the highest bal of any copy. The
  leader is the newest copy read (every leader written is a decided grant or a final release);
  the next leader write brings every disk forward. A RELEASED mark on any copy counts (only its
  owner writes one) unless it carries a SHARED mark (_owner_released); whether a host holds the
  lease shared is read from its latest copy (_copy_order), so a host's every write that takes
  a mark back (a shared release, a withdrawn claim, a convert's clearing) carries a higher mbal
  than any copy it may have written before, and a withdrawal becomes the tracked dblock before
  it is written. With one disk every rule is the single-disk one and the effects the same.

Invariant (checked by the simulator): at most one host holds a valid exclusive lease of a given
lver, never beside a valid shared holder, and lver only grows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from leasestore.delta import verify_delta
from leasestore.effects import Algorithm, Batch, Now, Random, Read, Sleep, Write
from leasestore.errors import (
    AcquireIdLive,
    AcquireLver,
    AcquireOther,
    AcquireOwned,
    AcquireOwnedRetry,
    BadDblockChecksum,
    BadMagic,
    CorruptRecord,
    DblockLver,
    DblockMbal,
    LeaderStale,
    LeasestoreError,
    NoDiskMajority,
    NumHostsTooSmall,
    ReleaseLver,
    ReleaseOwner,
    RequestLver,
    RequestOld,
    SharedHolders,
    StorageError,
    UsageError,
    WrongLockspace,
    WrongResource,
)
from leasestore.liveness import OwnerView
from leasestore.ondisk.bulk import scan_dblocks
from leasestore.ondisk.dblock import (
    DBLOCK_FLAG_RELEASED,
    DBLOCK_SIZE,
    MODE_FLAG_SHARED,
    Dblock,
    ModeBlock,
    dblock_checksum_ok,
    decode_dblock,
    decode_mode_block,
    encode_dblock_sector,
)
from leasestore.ondisk.geometry import FIRST_DBLOCK_SECTOR, Geometry, pad_sector
from leasestore.ondisk.leader import FLAG_SHORT_HOLD, Leader, LeaderMagic, decode_leader
from leasestore.ondisk.request import Request, decode_request
from leasestore.timeouts import Timeouts

OWNER_POLL_S = 1.0
SH_RETRIES = 8
MAX_DISKS = 4

_Record = TypeVar("_Record")
DiskRef = tuple[str, int]
"""(device, offset_b) of one disk's copy of a lease."""


def _no_view(host_id: int) -> OwnerView | None:
    del host_id
    return None


@dataclass(frozen=True)
class PaxosParams:
    device: str
    offset_b: int
    geometry: Geometry
    lockspace: str
    resource: str
    host_id: int
    generation: int
    timeouts: Timeouts
    delta_device: str
    delta_offset_b: int
    delta_geometry: Geometry
    host_info: Callable[[int], OwnerView | None] = field(default=_no_view, compare=False)
    own_mode: ModeBlock | None = None
    """A mode block every write of our dblock carries unless told otherwise: our SHARED mark,
    kept while a convert to exclusive runs its ballots (were it dropped by a ballot that then
    fails, we would hold the lease shared with no mark an exclusive acquirer waits for)."""
    extra_disks: tuple[DiskRef, ...] = ()
    """The lease's further disks, after (device, offset_b): up to MAX_DISKS in all."""

    def __post_init__(self) -> None:
        if len(self.disks) > MAX_DISKS:
            raise UsageError(f"lease {self.resource!r}: {len(self.disks)} disks, at most "
                             f"{MAX_DISKS}")

    @property
    def disks(self) -> tuple[DiskRef, ...]:
        return ((self.device, self.offset_b), *self.extra_disks)

    @property
    def majority(self) -> int:
        return len(self.disks) // 2 + 1

    @property
    def io_timeout_s(self) -> float:
        return float(self.timeouts.io_timeout_s)

    @property
    def dblock_at(self) -> int:
        return self.offset_b + self.geometry.dblock_offset(self.host_id)


@dataclass(frozen=True)
class HeldLease:
    """A lease we hold: the leader as we left it, our last dblock, the version we hold."""

    leader: Leader
    dblock: Dblock
    lver: int
    shared: bool = False


@dataclass(frozen=True)
class LeaseRead:
    leader: Leader
    max_mbal: int
    own: Dblock | None
    """Our own dblock as read: we never write a lower lver over it (it may record a decision)."""
    stale_target: int = 0
    """Non-zero when the dblocks prove the leader was rolled back (a late write landed) and
    name a value to recover at this lver: a dblock carrying a value above lver + 1, or a
    RELEASED one at lver + 1 (that version was committed, held and released)."""
    stale_free: int = 0
    """Non-zero when the highest dblocks above lver + 1 carry no value (phase 1 only): their
    writers read the leader at stale_free and judged its holding over before they balloted, and
    no later version was ever decided. The version to commit free."""
    released_values: frozenset[tuple[int, int, int]] = frozenset()
    """Values (inp, inp2, inp3) carried by RELEASED dblocks at stale_target. Only the value's
    owner marks it RELEASED (or a recovery that saw the owner's mark), so a version is over only
    if the value recovered for it is among these: a RELEASED dblock carrying another value (a
    loser retracting its own proposal) says nothing about the winner."""

    @property
    def own_lver(self) -> int:
        return self.own.lver if self.own is not None else 0


class _Restart(Exception):
    """The leader changed while we waited: start again from read 1."""


# --- the disks: majority rules ---------------------------------------------------------------


def _need_majority(p: PaxosParams, good: int, failures: Sequence[LeasestoreError], what: str
                   ) -> None:
    """Raise unless `good` copies make a majority of the lease's disks."""
    if good >= p.majority:
        return
    if len(p.disks) == 1 or not any(isinstance(f, StorageError) for f in failures):
        raise failures[0]
    causes = "; ".join(str(f) for f in failures)
    raise NoDiskMajority(f"lease {p.resource!r}: {what} on {good} of {len(p.disks)} disks, "
                         f"{p.majority} needed ({causes})")


def _read_copies(p: PaxosParams, rel_b: int, length_b: int, *, view: bool = False,
                 every: bool = False) -> Algorithm[list[bytes | memoryview]]:
    """`length_b` bytes at `rel_b` into the lease, from the disks that answered (a majority):
    the first majority to answer, or with `every`, all that answer within the timeout."""
    if not p.extra_disks:
        raw = yield Read(p.device, p.offset_b + rel_b, length_b, p.io_timeout_s, view=view)
        return [raw]
    outcomes = yield Batch(tuple(Read(device, offset_b + rel_b, length_b, p.io_timeout_s,
                                      view=view) for device, offset_b in p.disks),
                           need=0 if every else p.majority)
    failures = [o for o in outcomes if isinstance(o, StorageError)]
    _need_majority(p, len(outcomes) - len(failures), failures, "read")
    return [o for o in outcomes if not isinstance(o, StorageError)]


def _write_copies(p: PaxosParams, rel_b: int, data: bytes) -> Algorithm[None]:
    """Write `data` at `rel_b` into the lease on every disk at once; a majority must succeed."""
    if not p.extra_disks:
        yield Write(p.device, p.offset_b + rel_b, data, p.io_timeout_s)
        return
    outcomes = yield Batch(tuple(Write(device, offset_b + rel_b, data, p.io_timeout_s)
                                 for device, offset_b in p.disks), need=p.majority)
    failures = [o for o in outcomes if isinstance(o, StorageError)]
    _need_majority(p, len(outcomes) - len(failures), failures, "written")


def _read_valid(p: PaxosParams, rel_b: int, length_b: int,
                decode: Callable[[bytes | memoryview], _Record], *, view: bool = False
                ) -> Algorithm[list[_Record]]:
    """The copies at `rel_b` that decode, from a majority of the disks. Should the first
    majority to answer include a copy that does not decode, every disk is waited for."""
    for every in (False, True):
        copies = yield from _read_copies(p, rel_b, length_b, view=view, every=every)
        decoded: list[_Record] = []
        failures: list[LeasestoreError] = []
        for raw in copies:
            try:
                decoded.append(decode(raw))
            except LeasestoreError as exc:
                failures.append(exc)
        if len(decoded) >= p.majority or not p.extra_disks or len(copies) == len(p.disks):
            break
    _need_majority(p, len(decoded), failures, "a valid copy")
    return decoded


def _leader_of(leaders: Sequence[Leader]) -> Leader:
    """The newest of the copies read: the highest lver and, at one lver, free after held.
    Every leader ever written says something true for good: a grant of a version decided by
    a majority of dblocks, or (free) that its holding is over. So the newest copy a majority
    of the disks gives is what the latest writer that any majority saw wrote; a disk behind
    it is brought forward by the next leader write, which goes to every disk."""
    if len(leaders) == 1:
        return leaders[0]
    return max(leaders, key=lambda leader: (leader.lver, leader.timestamp == 0,
                                            leader.write_timestamp, leader.encode()))


# --- reading --------------------------------------------------------------------------------


def verify_paxos_leader(raw: bytes | memoryview, p: PaxosParams) -> Leader:
    try:
        leader = decode_leader(raw, (LeaderMagic.PAXOS, LeaderMagic.PAXOS_CLEAR))
    except CorruptRecord as exc:
        raise exc.at(p.offset_b) from None
    if leader.magic == LeaderMagic.PAXOS_CLEAR:
        raise BadMagic("paxos leader", "lease was cleared", p.offset_b)
    if leader.space_name != p.lockspace:
        raise WrongLockspace(f"lease at {p.offset_b} is in lockspace {leader.space_name!r}")
    if leader.resource_name != p.resource:
        raise WrongResource(f"lease at {p.offset_b} is resource {leader.resource_name!r}, "
                            f"not {p.resource!r}")
    if leader.num_hosts < p.host_id:
        raise NumHostsTooSmall(f"lease {p.resource!r} serves {leader.num_hosts} hosts; "
                               f"host_id {p.host_id} is beyond")
    if leader.geometry() != p.geometry:
        raise UsageError(f"lease {p.resource!r} has geometry {leader.geometry()}, "
                         f"expected {p.geometry}")
    return leader


def _dblock_rows(raw: bytes | memoryview, p: PaxosParams, num_hosts: int
                 ) -> tuple[npt.NDArray[np.void], list[int], set[int]]:
    """(rows, touched indices, indices with a bad checksum) of num_hosts dblocks in `raw`."""
    ss = p.geometry.sector_size
    count = min(num_hosts, len(raw) // ss - FIRST_DBLOCK_SECTOR)
    rows = scan_dblocks(raw, ss, FIRST_DBLOCK_SECTOR, count)
    touched = _dblock_indices_touched(rows)

    def checksum_ok(index: int) -> bool:
        at = (FIRST_DBLOCK_SECTOR + index) * ss  # slice the record only: `raw` may be bytes
        return dblock_checksum_ok(raw[at:at + DBLOCK_SIZE])

    bad = {index for index in touched if not checksum_ok(index)}
    return rows, touched, bad


def _verified_rows(raw: bytes | memoryview, p: PaxosParams, num_hosts: int
                   ) -> tuple[npt.NDArray[np.void], list[int]]:
    """(rows, touched indices) of one disk's copy of num_hosts dblocks; any bad checksum
    fails the copy."""
    rows, touched, bad = _dblock_rows(raw, p, num_hosts)
    if bad:
        host = min(bad) + 1
        raise BadDblockChecksum("dblock", f"host {host}: checksum mismatch",
                                p.offset_b + p.geometry.dblock_offset(host))
    return rows, touched


def _lease_copy(raw: bytes | memoryview, p: PaxosParams
                ) -> tuple[Leader, npt.NDArray[np.void]]:
    """One disk's leader and dblock rows; any bad dblock checksum fails the copy."""
    leader = verify_paxos_leader(raw, p)
    rows, _ = _verified_rows(raw, p, leader.num_hosts)
    return leader, rows


def read_lease(p: PaxosParams) -> Algorithm[LeaseRead]:
    """Read 1: the leader and every dblock, from a majority of the disks; any bad dblock
    checksum fails that disk's copy (with one disk, the read)."""
    size = p.geometry.ballot_read_size(p.geometry.max_hosts)
    found = yield from _read_valid(p, 0, size, lambda raw: _lease_copy(raw, p), view=True)
    leader = _leader_of([copy_leader for copy_leader, _ in found])
    rows = found[0][1] if len(found) == 1 else np.concatenate([r for _, r in found])
    hosts = np.concatenate([np.arange(len(r)) for _, r in found]) + 1
    max_mbal = int(rows["mbal"].max()) if len(rows) else 0
    lvers = rows["lver"].astype(np.int64)
    released = (rows["flags"] & DBLOCK_FLAG_RELEASED) != 0
    carries_value = (rows["bal"] != 0) & (rows["inp"] != 0)
    above = lvers > leader.lver + 1
    proof = (above & carries_value) | ((lvers == leader.lver + 1) & released & carries_value)
    stale_target = int(lvers[proof].max()) if proof.any() else 0
    phase1_only = above & ~carries_value
    highest_phase1 = int(lvers[phase1_only].max()) if phase1_only.any() else 0
    stale_free = highest_phase1 - 1 if highest_phase1 > stale_target else 0
    if stale_free:
        stale_target = 0
    own_rows = [_row_dblock(rows[i]) for i in np.flatnonzero(hosts == p.host_id).tolist()]
    own_dblock = max(own_rows, key=lambda d: (d.lver, d.bal, d.mbal)) if own_rows else None
    released_values = frozenset(
        (int(rows[i]["inp"]), int(rows[i]["inp2"]), int(rows[i]["inp3"]))
        for i in np.flatnonzero(released & (lvers == stale_target)).tolist()
    ) if stale_target else frozenset()
    return LeaseRead(leader, max_mbal, own_dblock, stale_target, stale_free, released_values)


def _row_dblock(row: np.void) -> Dblock:
    return Dblock(mbal=int(row["mbal"]), bal=int(row["bal"]), inp=int(row["inp"]),
                  inp2=int(row["inp2"]), inp3=int(row["inp3"]), lver=int(row["lver"]),
                  flags=int(row["flags"]))


def read_leader(p: PaxosParams) -> Algorithm[Leader]:
    leaders = yield from _read_valid(p, 0, p.geometry.sector_size,
                                     lambda raw: verify_paxos_leader(raw, p))
    return _leader_of(leaders)


@dataclass(frozen=True)
class Holdings:
    """Who holds a lease, as a majority of its disks shows it."""

    leader: Leader
    """The newest leader copy read (its owner holds the lease if its timestamp is set)."""
    shared: tuple[tuple[int, int], ...]
    """(host_id, generation) of each host whose latest dblock copy carries a SHARED mark."""


def reading_params(disks: Sequence[DiskRef], found: Leader, io_timeout_s: int) -> PaxosParams:
    """Parameters that read the lease whose leader `found` is on one of `disks`, acting for no
    host: for read_holdings and read_leader only (they write nothing). Copies of another
    lockspace, resource or geometry count as failed disks."""
    (device, offset_b), *further = disks
    return PaxosParams(device, offset_b, found.geometry(), found.space_name,
                       found.resource_name, 0, 0, Timeouts(io_timeout_s), "", 0,
                       found.geometry(), extra_disks=tuple(further))


def read_holdings(p: PaxosParams) -> Algorithm[Holdings]:
    """The lease's holders: its leader and the SHARED marks of each host's latest dblock
    copy. On several disks each disk's copy of the area (leader and dblocks, in one read) must
    verify whole, as a ballot's reads do, and a majority of such copies decides (the newest
    leader, each host's latest dblock); a copy with a bad checksum or of another lease counts
    as a failed disk. On one disk the leader must verify and a SHARED mark counts even on a
    dblock whose checksum fails (a mark is never passed over on a guess; sanlock reads the
    marks so)."""
    if p.extra_disks:
        copies = yield from _read_valid(p, 0, p.geometry.ballot_read_size(p.geometry.max_hosts),
                                        lambda raw: _lease_copy(raw, p))
        latest: dict[int, tuple[_CopyOrder, int]] = {}
        for _, rows in copies:
            for index in _dblock_indices_touched(rows):
                entry = (_copy_order(rows[index]), int(rows[index]["mode_generation"]))
                latest[index] = max(latest.get(index, entry), entry)
        marks = {index: generation for index, (order, generation) in latest.items()
                 if order[3]}
        leader = _leader_of([leader for leader, _ in copies])
        return Holdings(leader, tuple((index + 1, marks[index]) for index in sorted(marks)))
    leader = yield from read_leader(p)
    count = min(leader.num_hosts or p.geometry.max_hosts, p.geometry.max_hosts)
    raw = yield Read(p.device, p.offset_b, p.geometry.ballot_read_size(count), p.io_timeout_s)
    rows, touched, _ = _dblock_rows(raw, p, count)
    shared = tuple((index + 1, int(rows[index]["mode_generation"])) for index in touched
                   if int(rows[index]["mode_flags"]) & MODE_FLAG_SHARED)
    return Holdings(leader, shared)


def _dblock_indices_touched(rows: npt.NDArray[np.void]) -> list[int]:
    """Indices of rows that are not all zero (a dblock or mode block was ever written)."""
    mask = ((rows["mbal"] != 0) | (rows["bal"] != 0) | (rows["inp"] != 0) | (rows["lver"] != 0)
            | (rows["checksum"] != 0) | (rows["mode_flags"] != 0))
    return [int(i) for i in np.flatnonzero(mask)]


def _read_dblock_sectors(p: PaxosParams, host_id: int) -> Algorithm[list[bytes | memoryview]]:
    """Host `host_id`'s dblock sector from each disk that answered."""
    return (yield from _read_copies(p, p.geometry.dblock_offset(host_id),
                                    p.geometry.sector_size))


# --- deciding whether the current owner is gone -------------------------------------------------


def _owner_released(p: PaxosParams, leader: Leader) -> Algorithm[bool]:
    """The owner's dblock says it let this version go: RELEASED, at the leader's lver, carrying
    the owner's own value. Only the owner (or a recovery that saw its mark) writes that, once
    its holding of the version is over or never began (a grant whose I/O failed).

    On several disks, a RELEASED copy that carries a SHARED mark does not count: the owner is
    becoming (or is) a shared holder, and its mark may so far be on fewer disks than a
    majority, where the phase reads of a ballot begun now might miss it. (On one disk the mark
    is in the very sector that says RELEASED: a ballot's phase reads, later, see it.)"""
    copies = yield from _read_valid(p, p.geometry.dblock_offset(leader.owner_id),
                                    p.geometry.sector_size, _dblock_and_mode)
    return any(dblock.released and dblock.lver == leader.lver
               and (dblock.inp, dblock.inp2) == (leader.owner_id, leader.owner_generation)
               and not (p.extra_disks and mode.shared)
               for dblock, mode in copies)


def _dblock_and_mode(sector: bytes | memoryview) -> tuple[Dblock, ModeBlock]:
    return decode_dblock(sector), decode_mode_block(sector)


def _owner_gone(p: PaxosParams, cur: Leader, nowait: bool = False) -> Algorithm[bool]:
    """True once the owner cannot be using the lease; raises AcquireIdLive or _Restart, or,
    with `nowait`, AcquireOwnedRetry where it would wait to see the owner renew or expire."""
    owner = cur.owner_id
    delta_at = p.delta_offset_b + p.delta_geometry.delta_offset(owner)
    view = p.host_info(owner)
    now_s: float = yield Now()
    if view is not None and view.generation == cur.owner_generation:
        wait_start_s, last_ts = view.last_live_s, view.timestamp
    else:
        wait_start_s, last_ts = now_s, 0
    while True:
        raw = yield Read(p.delta_device, delta_at, p.delta_geometry.sector_size, p.io_timeout_s)
        delta = verify_delta(raw, p.lockspace, delta_at)
        if delta.timestamp == 0:
            return True
        if delta.owner_id != owner or delta.owner_generation > cur.owner_generation:
            return True
        view = p.host_info(owner)
        seen_alive = (view is not None and view.generation == cur.owner_generation
                      and view.changed_at_last_check)
        if last_ts == 0:
            last_ts = delta.timestamp
        elif delta.timestamp != last_ts:
            seen_alive = True
        if seen_alive:
            # sanlock looks only when another host wrote the leader; we look whoever wrote it,
            # since our owner also marks RELEASED a grant it could not finish (a failed commit
            # or shared hand-over), which would otherwise stay owned by a live host forever.
            released = yield from _owner_released(p, cur)
            if released:
                return True
            raise AcquireIdLive(f"lease {p.resource!r} is held by live host {owner} "
                                f"(generation {cur.owner_generation})")
        now_s = yield Now()
        if now_s - wait_start_s > p.timeouts.for_peer(delta).host_dead_s:
            return True
        if nowait:
            raise AcquireOwnedRetry(f"lease {p.resource!r} is owned by host {owner}, not yet "
                                    "seen to renew or to expire (not waiting)")
        yield Sleep(OWNER_POLL_S)
        again = yield from read_leader(p)
        if again.encode() != cur.encode():
            raise _Restart


def _may_ballot(p: PaxosParams, cur: Leader, nowait: bool = False) -> Algorithm[bool]:
    if cur.timestamp == 0 or cur.owner_id == 0:
        return True
    if cur.owner_id == p.host_id and cur.owner_generation <= p.generation:
        return True
    gone = yield from _owner_gone(p, cur, nowait)
    return gone


# --- the ballot -----------------------------------------------------------------------------


def _write_dblock(p: PaxosParams, dblock: Dblock, mode: ModeBlock | None = None
                  ) -> Algorithm[None]:
    sector = encode_dblock_sector(dblock, p.geometry.sector_size, mode or p.own_mode)
    yield from _write_copies(p, p.geometry.dblock_offset(p.host_id), sector)


def _phase_read(p: PaxosParams, num_hosts: int, next_lver: int, our_mbal: int
                ) -> Algorithm[tuple[Dblock | None, list[int]]]:
    """Read all dblocks (every copy); return the accepted dblock with the highest bal, and
    shared holders."""
    copies = yield from _ballot_copies(p, num_hosts)
    best: Dblock | None = None
    latest: dict[int, _CopyOrder] = {}
    for rows, touched in copies:
        for index in touched:
            row = rows[index]
            latest[index] = max(latest.get(index, _NO_COPY), _copy_order(row))
            lver = int(row["lver"])
            if lver < next_lver:
                continue
            if lver > next_lver:
                raise DblockLver(f"host {index + 1} is at lver {lver} > {next_lver}")
            if int(row["mbal"]) > our_mbal:
                raise DblockMbal(f"host {index + 1} has mbal {int(row['mbal'])} > {our_mbal}")
            if (int(row["inp"]) and int(row["bal"])
                    and (best is None or int(row["bal"]) > best.bal)):
                best = _row_dblock(row)
    return best, _marked(latest)


def _shared_holders(p: PaxosParams, num_hosts: int) -> Algorithm[list[int]]:
    """Host ids whose dblocks (any copy) carry a SHARED mode block (what a phase read
    reports)."""
    copies = yield from _ballot_copies(p, num_hosts)
    latest: dict[int, _CopyOrder] = {}
    for rows, touched in copies:
        for index in touched:
            latest[index] = max(latest.get(index, _NO_COPY), _copy_order(rows[index]))
    return _marked(latest)


def _ballot_copies(p: PaxosParams, num_hosts: int
                   ) -> Algorithm[list[tuple[npt.NDArray[np.void], list[int]]]]:
    """Each disk's dblock rows for a ballot's read, with the indices to judge. On one disk a
    row with a bad checksum is passed over (sanlock's reading). On several, a copy with any
    bad row counts as a disk that failed: a host is judged by its dblock as a majority of the
    disks holds it, never by the copies that are left once a bad one is passed over (those
    may all be behind it)."""
    size = p.geometry.ballot_read_size(num_hosts)
    if not p.extra_disks:
        (raw,) = yield from _read_copies(p, 0, size, view=True)
        rows, touched, bad = _dblock_rows(raw, p, num_hosts)
        return [(rows, [index for index in touched if index not in bad])]
    return (yield from _read_valid(p, 0, size, lambda raw: _verified_rows(raw, p, num_hosts),
                                   view=True))


_CopyOrder = tuple[int, int, int, int]
_NO_COPY: _CopyOrder = (-1, -1, -1, -1)


def _copy_order(row: np.void) -> _CopyOrder:
    """Orders one host's dblock copies by when it wrote them: lver, then mbal, then RELEASED
    after not; the last field says whether the copy carries a SHARED mark, so that of two
    copies alike but for the mark the marked one counts (a mark is never passed over on a
    guess). A host writes no lower lver, and no lower mbal for one lver, than it wrote before;
    to end a shared holding on several disks it writes its RELEASED dblock with a higher mbal,
    so the copy without the mark orders after any copy a disk behind still shows marked (a
    withdrawn claim is followed likewise: the tracked `own[0]` becomes it before it is
    written)."""
    return _written_order(int(row["lver"]), int(row["mbal"]), int(row["flags"]),
                          int(row["mode_flags"]))


def _written_order(lver: int, mbal: int, flags: int, mode_flags: int) -> _CopyOrder:
    """The one ordering of a host's dblock copies (see `_copy_order`)."""
    return (lver, mbal, flags & DBLOCK_FLAG_RELEASED, mode_flags & MODE_FLAG_SHARED)


def _marked(latest: dict[int, _CopyOrder]) -> list[int]:
    """Host ids (from dblock indices) whose latest copy carries a SHARED mark."""
    return sorted(index + 1 for index, order in latest.items() if order[3])


def _phase1_dblock(own: Dblock | None, lver: int, our_mbal: int) -> Dblock:
    """Our phase-1 record. Disk Paxos keeps a process's accepted (bal, value) when it starts a
    new ballot for the same version: erasing it could erase the only proof that the version was
    decided. (sanlock zeroes it, assuming each ballot is for a fresh version.)"""
    if own is not None and own.lver == lver and own.bal:
        return dataclasses.replace(own, mbal=our_mbal)
    return Dblock(mbal=our_mbal, lver=lver)


def _ballot(p: PaxosParams, num_hosts: int, next_lver: int, our_mbal: int,
            own: list[Dblock | None]) -> Algorithm[tuple[Dblock, list[int]]]:
    """One ballot. `own[0]` tracks our dblock as it stands (or may come to stand) on disk."""
    phase1 = _phase1_dblock(own[0], next_lver, our_mbal)
    own[0] = phase1  # before the write: one that times out may still land
    yield from _write_dblock(p, phase1)
    best, _ = yield from _phase_read(p, num_hosts, next_lver, our_mbal)
    if best is None:
        now_s: float = yield Now()
        value = (p.host_id, p.generation, max(1, int(now_s)))
    else:
        value = (best.inp, best.inp2, best.inp3)
    accepted = Dblock(mbal=our_mbal, bal=our_mbal, inp=value[0], inp2=value[1], inp3=value[2],
                      lver=next_lver)
    own[0] = accepted
    yield from _write_dblock(p, accepted)
    _, shared = yield from _phase_read(p, num_hosts, next_lver, our_mbal)
    return accepted, shared


def _first_mbal(p: PaxosParams, max_mbal: int, max_hosts: int) -> int:
    if max_mbal == 0:
        return p.host_id
    return (max_mbal - max_mbal % max_hosts) + max_hosts + p.host_id


def _commit(p: PaxosParams, cur: Leader, accepted: Dblock, shared: bool, free: bool = False
            ) -> Algorithm[Leader]:
    """Write the leader for the accepted value (with timestamp 0 when `free`)."""
    now_s: float = yield Now()
    ours = (accepted.inp, accepted.inp2) == (p.host_id, p.generation)
    flags = (cur.flags | FLAG_SHORT_HOLD) if (shared and ours) else (cur.flags & ~FLAG_SHORT_HOLD)
    leader = cur.replace(lver=accepted.lver, owner_id=accepted.inp,
                         owner_generation=accepted.inp2, timestamp=0 if free else accepted.inp3,
                         flags=flags,
                         write_id=p.host_id, write_generation=p.generation,
                         write_timestamp=max(1, int(now_s)))
    yield from _write_copies(p, 0, pad_sector(leader.encode(), p.geometry.sector_size))
    return leader


def _released(dblock: Dblock) -> Dblock:
    return dataclasses.replace(dblock, flags=DBLOCK_FLAG_RELEASED)


class ClaimNotWithdrawn(StorageError):
    """An acquire failed after our value may have been accepted, and marking it RELEASED failed
    too: unless `withdraw_claim(p, dblock)` succeeds later, the lease may stay owned by our live
    host while nothing of ours holds it. The caller must retry that until it succeeds."""

    def __init__(self, message: str, dblock: Dblock) -> None:
        super().__init__(message)
        self.dblock = dblock


def withdraw_claim(p: PaxosParams, accepted: Dblock) -> Algorithm[None]:
    """Mark our dblock's value RELEASED (raises StorageError). Only for our own value: RELEASED
    on a dblock tells every reader that the holding of that version is over, which only the
    value's owner may say. An owner's RELEASED mark at the leader's lver frees the lease for
    other hosts even while we live (`_owner_released`)."""
    withdrawal = _withdrawal(p, accepted)
    if withdrawal is not None:
        yield from _write_dblock(p, withdrawal)


def _withdrawal(p: PaxosParams, accepted: Dblock) -> Dblock | None:
    """The dblock that withdraws our claim `accepted` (None if the value is not ours)."""
    if (accepted.inp, accepted.inp2) != (p.host_id, p.generation):
        return None
    return _later_on_every_disk(p, _released(accepted))


def _later_on_every_disk(p: PaxosParams, dblock: Dblock) -> Dblock:
    """On several disks, `dblock` with a higher mbal, so that it orders after any copy of
    our earlier dblock a disk behind still shows (`_copy_order`: a SHARED mark we wrote
    there, say, which this write takes back). On one disk, `dblock` itself."""
    if not p.extra_disks:
        return dblock
    return dataclasses.replace(dblock, mbal=dblock.mbal + p.geometry.max_hosts)


def _retract(p: PaxosParams, accepted: Dblock, own: list[Dblock | None] | None = None
             ) -> Algorithm[None]:
    """After an I/O failure past phase 2 we may have won: withdraw our claim, or raise
    ClaimNotWithdrawn so that the caller retries it. `own[0]` (if given) becomes the
    withdrawal before it is written: a later write of ours (a shared holder's release after a
    failed convert) must order after it on every disk it may have reached."""
    if own is not None:
        own[0] = _withdrawal(p, accepted) or own[0]
    try:
        yield from withdraw_claim(p, accepted)
    except StorageError as exc:
        raise ClaimNotWithdrawn(f"lease {p.resource!r}: our claim on lver {accepted.lver} could "
                                f"not be withdrawn ({exc})", accepted) from exc


def _win(p: PaxosParams, read1: LeaseRead, shared: bool,
         own: list[Dblock | None] | None = None
         ) -> Algorithm[tuple[Leader, Dblock, list[int]]]:
    """Run ballots for lver + 1 until one commits; returns (leader, our dblock, SH holders).
    `own[0]` (if given) follows our dblock as it stands, or may come to stand, on disk."""
    cur = read1.leader
    next_lver = cur.lver + 1
    if read1.own_lver > next_lver:
        raise DblockLver(f"lease {p.resource!r}: our dblock is at lver {read1.own_lver}, "
                         f"past {next_lver}")
    our_mbal = _first_mbal(p, read1.max_mbal, cur.max_hosts)
    if own is None:
        own = [read1.own]
    own[0] = read1.own
    first = True
    while True:
        if not first:
            again = yield from read_leader(p)
            if again.lver == next_lver:
                mine = own[0]
                if ((again.owner_id, again.owner_generation) == (p.host_id, p.generation)
                        and mine is not None and mine.lver == next_lver and mine.bal
                        and (mine.inp, mine.inp2) == (p.host_id, p.generation)):
                    # Another host's ballot committed our accepted value: the lease is ours.
                    holders = yield from _shared_holders(p, cur.num_hosts)
                    return again, mine, holders
                raise AcquireOwned(f"lease {p.resource!r} lver {next_lver} went to host "
                                   f"{again.owner_id}")
            if again.encode() != cur.encode():
                raise _Restart
        first = False
        try:
            accepted, holders = yield from _ballot(p, cur.num_hosts, next_lver, our_mbal, own)
        except (DblockMbal, DblockLver):
            pause: float = yield Random()
            yield Sleep(pause)
            our_mbal += cur.max_hosts
            continue
        except StorageError:
            # Our value may stand accepted and be committed by another host: say we let it go.
            if own[0] is not None and own[0].bal:
                yield from _retract(p, own[0], own)
            raise
        try:
            leader = yield from _commit(p, cur, accepted, shared)
        except StorageError:
            yield from _retract(p, accepted, own)
            raise
        if (accepted.inp, accepted.inp2) != (p.host_id, p.generation):
            raise AcquireOther(f"lease {p.resource!r}: our ballot committed host "
                               f"{accepted.inp}'s proposal")
        return leader, accepted, [h for h in holders if h != p.host_id]


# --- public operations --------------------------------------------------------------------------


def acquire(p: PaxosParams, *, shared: bool = False, lver: int | None = None,
            owner_nowait: bool = False) -> Algorithm[HeldLease]:
    """Acquire the lease exclusively (or shared). `lver`: fail with AcquireLver unless the lease
    is at exactly that version now (the holding will be lver + 1)."""
    attempts = 0
    while True:
        try:
            return (yield from _acquire_once(p, shared, lver, owner_nowait=owner_nowait))
        except _Restart:
            continue
        except (AcquireIdLive, AcquireOwned, AcquireOther):
            attempts += 1
            if not shared or attempts > SH_RETRIES:
                raise
            leader = yield from read_leader(p)
            if not leader.short_hold:
                raise
            pause: float = yield Random()
            yield Sleep(pause)


def _recover_leader(p: PaxosParams, read1: LeaseRead,
                    own: list[Dblock | None] | None = None) -> Algorithm[None]:
    """The leader fell behind the dblocks (a late write rolled it back). Re-commit the value
    accepted at the highest lver, adopting it as any ballot would; never propose our own. A
    version whose holding was released is committed free (timestamp 0) and our dblock keeps it
    RELEASED, so that it is never granted a second time."""
    cur = read1.leader
    target = read1.stale_target
    our_mbal = _first_mbal(p, read1.max_mbal, cur.max_hosts)
    tracked: list[Dblock | None] = own if own is not None else [None]
    phase1 = tracked[0] = _phase1_dblock(read1.own, target, our_mbal)
    yield from _write_dblock(p, phase1)
    best, _ = yield from _phase_read(p, cur.num_hosts, target, our_mbal)
    if best is None:
        raise LeaderStale(f"lease {p.resource!r}: leader at lver {cur.lver} but dblocks reach "
                          f"lver {target} with no accepted value to recover")
    released = (best.inp, best.inp2, best.inp3) in read1.released_values
    accepted = Dblock(mbal=our_mbal, bal=our_mbal, inp=best.inp, inp2=best.inp2,
                      inp3=best.inp3, lver=target,
                      flags=DBLOCK_FLAG_RELEASED if released else 0)
    tracked[0] = accepted
    yield from _write_dblock(p, accepted)
    yield from _phase_read(p, cur.num_hosts, target, our_mbal)
    yield from _commit(p, cur.replace(lver=target - 1), accepted, shared=False, free=released)


def _freed_only_by_our_mark(p: PaxosParams, read1: LeaseRead) -> bool:
    """The leader names this host generation as holding it, and what says the holding is over
    is only our own RELEASED dblock at the leader's version (a withdrawn claim, a release whose
    leader write failed)."""
    leader, own = read1.leader, read1.own
    ours = (p.host_id, p.generation)
    return (leader.timestamp != 0 and (leader.owner_id, leader.owner_generation) == ours
            and own is not None and own.released and own.lver == leader.lver
            and (own.inp, own.inp2) == ours)


def _commit_free(p: PaxosParams, cur: Leader, lver: int) -> Algorithm[None]:
    """Commit version `lver` free (timestamp 0): the dblocks prove it was reached and its
    holding over, and that nothing later was decided."""
    now_s: float = yield Now()
    free = _freed_by_us(p, cur.replace(lver=lver), now_s)
    yield from _write_copies(p, 0, pad_sector(free.encode(), p.geometry.sector_size))


def _acquire_once(p: PaxosParams, shared: bool, lver: int | None,
                  own: list[Dblock | None] | None = None, owner_nowait: bool = False
                  ) -> Algorithm[HeldLease]:
    read1 = yield from read_lease(p)
    if own is not None:
        own[0] = read1.own
    if read1.stale_free:
        yield from _commit_free(p, read1.leader, read1.stale_free)
        raise _Restart
    if read1.stale_target:
        yield from _recover_leader(p, read1, own)
        raise _Restart
    if lver is not None and read1.leader.lver != lver:
        raise AcquireLver(f"lease {p.resource!r} is at lver {read1.leader.lver}, not {lver}")
    if _freed_only_by_our_mark(p, read1):
        # Our ballot's first write would replace that mark; should the ballot then fail, the
        # leader would name us, live and holding nothing, and nobody could take the lease.
        yield from _commit_free(p, read1.leader, read1.leader.lver)
        raise _Restart
    may = yield from _may_ballot(p, read1.leader, owner_nowait)
    if not may:
        raise _Restart
    leader, accepted, holders = yield from _win(p, read1, shared, own)
    if shared:
        return (yield from _become_shared(p, leader, accepted))
    if holders:
        try:
            yield from _clear_dead_shared(p, leader, accepted, holders, own)
        except StorageError:
            # The lease is committed to us but we cannot tell whether the shared holders are
            # alive: give it back rather than leave it owned by nobody's process.
            yield from _give_back(p, leader, accepted, own)
            raise
    return HeldLease(leader, accepted, leader.lver)


def _become_shared(p: PaxosParams, leader: Leader, accepted: Dblock) -> Algorithm[HeldLease]:
    """Turn our short exclusive hold into a shared one: SHARED mode block, then free leader.
    If either write fails the acquire fails, so the SHARED claim is withdrawn (`_retract`: our
    dblock RELEASED with no mode block) lest live exclusive acquirers wait on a phantom sharer;
    the leader left with SHORT_HOLD is then passed over by `_owner_released`."""
    released = _released(accepted)
    try:
        yield from _write_dblock(p, released, ModeBlock(MODE_FLAG_SHARED, p.generation))
        now_s: float = yield Now()
        free = leader.replace(timestamp=0, flags=leader.flags & ~FLAG_SHORT_HOLD,
                              write_timestamp=max(1, int(now_s)))
        yield from _write_copies(p, 0, pad_sector(free.encode(), p.geometry.sector_size))
    except StorageError:
        yield from _retract(p, accepted)
        raise
    return HeldLease(free, released, leader.lver, shared=True)


def _shared_holder_alive(p: PaxosParams, host_id: int, generation: int) -> Algorithm[bool]:
    at = p.delta_offset_b + p.delta_geometry.delta_offset(host_id)
    raw = yield Read(p.delta_device, at, p.delta_geometry.sector_size, p.io_timeout_s)
    delta = verify_delta(raw, p.lockspace, at)
    if delta.timestamp == 0 or delta.owner_generation > generation:
        return False
    view = p.host_info(host_id)
    if view is None or view.generation != delta.owner_generation:
        return True
    if delta.timestamp != view.timestamp:
        return True  # it renewed since our table last looked: alive, whatever the table says
    now_s: float = yield Now()
    return now_s - view.last_live_s <= p.timeouts.for_peer(delta).host_dead_s


def _give_back(p: PaxosParams, leader: Leader, accepted: Dblock,
               own: list[Dblock | None] | None = None) -> Algorithm[None]:
    """Best effort: release a lease we won but will not hand to our caller. If the leader has
    moved on meanwhile (a late write), still mark our value RELEASED, so that a recovery of that
    version commits it free instead of to a live host whose process was told it failed."""
    try:
        yield from release(p, HeldLease(leader, accepted, leader.lver))
    except LeasestoreError:
        yield from _retract(p, accepted, own)


def _latest_mode(sectors: Sequence[bytes | memoryview]) -> ModeBlock | None:
    """The mode block of the copy of a host's dblock sector it wrote last (_copy_order). With
    no valid dblock to order them by, any copy's SHARED mark counts."""
    found: list[tuple[_CopyOrder, ModeBlock]] = []
    for sector in sectors:
        mode = decode_mode_block(sector)
        try:
            dblock = decode_dblock(sector)
        except LeasestoreError:
            if mode.shared:
                return mode
            continue
        found.append((_written_order(dblock.lver, dblock.mbal, dblock.flags, mode.flags),
                      mode))
    return max(found, key=lambda entry: entry[0])[1] if found else None


def _clear_dead_shared(p: PaxosParams, leader: Leader, accepted: Dblock, holders: list[int],
                       own: list[Dblock | None] | None = None) -> Algorithm[None]:
    """We won exclusively; shared holders that are dead lose their mode block, live ones make
    us give the leader back (SharedHolders)."""
    for host_id in holders:
        sectors = yield from _read_dblock_sectors(p, host_id)
        mode = _latest_mode(sectors)
        if mode is None or not mode.shared:
            continue
        alive = yield from _shared_holder_alive(p, host_id, mode.generation)
        if alive:
            yield from _give_back(p, leader, accepted, own)
            raise SharedHolders(f"lease {p.resource!r} is held shared by live host {host_id}")
        yield from _write_copies(p, p.geometry.dblock_offset(host_id),
                                 bytes(p.geometry.sector_size))


class StillShared(LeasestoreError):
    """A convert to exclusive failed; the lease is still held shared, by `held` (our dblock as
    the attempt left it, which a later release must mark RELEASED, not an older one). `code`
    and message are the failure's (SharedHolders: -EAGAIN)."""

    def __init__(self, cause: LeasestoreError, held: HeldLease) -> None:
        super().__init__(str(cause))
        self.code = cause.code
        self.cause = cause
        self.held = held


def convert(p: PaxosParams, held: HeldLease, *, shared: bool, owner_nowait: bool = False
            ) -> Algorithm[HeldLease]:
    """Change the mode of a lease we hold. Shared to exclusive: ballots as an exclusive acquire
    runs them, every dblock write keeping our SHARED mark, so that a failure leaves us shared
    (StillShared); won, live shared holders of other hosts make us give the leader back
    (StillShared from SharedHolders); otherwise our mark is cleared. Exclusive to shared: our
    SHARED mark beside our accepted dblock (a failure leaves us exclusive), then the RELEASED
    dblock with the mark and the free leader together; once the mark is written we hold the
    lease shared, whether or not the leader was freed (a leader left naming us is passed over
    once we release: our RELEASED mark)."""
    if held.shared == shared:
        return held
    mark = ModeBlock(MODE_FLAG_SHARED, p.generation)
    if shared:
        leader = yield from read_leader(p)
        if leader.encode() != held.leader.encode():
            raise ReleaseOwner(f"lease {p.resource!r} is no longer ours as we left it")
        yield from _write_dblock(p, held.dblock, mark)
        released = _released(held.dblock)
        with_mark = dataclasses.replace(p, own_mode=mark)
        try:
            yield from _write_released(with_mark, released, leader)
        except StorageError:
            return HeldLease(leader, released, held.lver, shared=True)
        return HeldLease(leader.replace(timestamp=0), released, held.lver, shared=True)
    keeping = dataclasses.replace(p, own_mode=mark)
    own: list[Dblock | None] = [held.dblock]
    try:
        while True:
            try:
                won = yield from _acquire_once(keeping, False, None, own, owner_nowait)
                break
            except _Restart:
                continue
    except LeasestoreError as exc:
        raise StillShared(exc, dataclasses.replace(held, dblock=own[0] or held.dblock)
                          ) from exc
    # Ours exclusively: our mark goes (if this write fails the mark only keeps exclusive
    # acquirers waiting until our release clears it). On several disks at a higher mbal, so
    # that a disk which misses this write cannot keep the marked copy latest; our release
    # then writes after it.
    unmarked = _later_on_every_disk(p, won.dblock)
    with contextlib.suppress(StorageError):
        yield from _write_dblock(p, unmarked)
    return dataclasses.replace(won, dblock=unmarked)


def release(p: PaxosParams, held: HeldLease, *, leader_unchanged: bool = False,
            rename: str = "") -> Algorithm[None]:
    """Give the lease up. Exclusive: read the leader; if it is still ours, write the RELEASED
    dblock and the leader with timestamp 0 together (under the resource name `rename`, if
    given: sanlock's REL_RENAME; a shared holding writes no leader and cannot rename).

    leader_unchanged: the caller knows no other host can have taken the lease over, because our
    host lease stays valid past this write's deadline; the leader read is then skipped and the
    free leader derived from the one we won. (Were that belief wrong, the write would be one more
    rolled-back leader, which read 1 of the next acquirer repairs from the dblocks.)"""
    if held.lver == 0:
        return
    released = _released(held.dblock)
    if held.shared:
        if rename:
            raise UsageError(f"lease {p.resource!r} is held shared: no leader to rename")
        yield from _write_dblock(p, _later_on_every_disk(p, released))
        return
    if leader_unchanged:
        yield from _write_released(p, released, held.leader, rename)
        return
    leader = yield from read_leader(p)
    if leader.write_id != p.host_id:
        if (leader.owner_id, leader.owner_generation) == (p.host_id, p.generation):
            # Another host committed our value: the RELEASED dblock tells acquirers.
            yield from _write_dblock(p, released)
            return
        raise ReleaseOwner(f"lease {p.resource!r} was taken over by host {leader.owner_id} "
                           f"(lver {leader.lver})")
    if leader.lver != held.lver:
        raise ReleaseLver(f"lease {p.resource!r} moved to lver {leader.lver}")
    if leader.timestamp == 0 and (leader.owner_id, leader.owner_generation) == (
            p.host_id, p.generation):
        # We freed it ourselves (an earlier try whose leader write landed while its dblock
        # write failed): our dblock must still say RELEASED, or a SHARED mark of ours that
        # landed late would keep every exclusive acquirer out while we live.
        yield from _write_dblock(p, released)
        return
    if (leader.timestamp == 0 or leader.owner_id != p.host_id
            or leader.encode() != held.leader.encode()):
        raise ReleaseOwner(f"lease {p.resource!r} is no longer ours")
    yield from _write_released(p, released, leader, rename)


def _freed_by_us(p: PaxosParams, leader: Leader, now_s: float) -> Leader:
    """`leader` free (timestamp 0, no SHORT_HOLD), as written by us at `now_s`."""
    return leader.replace(timestamp=0, flags=leader.flags & ~FLAG_SHORT_HOLD,
                          write_id=p.host_id, write_generation=p.generation,
                          write_timestamp=max(1, int(now_s)))


def _write_released(p: PaxosParams, released: Dblock, leader: Leader, rename: str = ""
                    ) -> Algorithm[None]:
    """Write our RELEASED dblock and `leader` with timestamp 0 (renamed, if `rename`),
    together."""
    now_s: float = yield Now()
    free = _freed_by_us(p, leader, now_s)
    if rename:
        free = free.replace(resource_name=rename)
    # The RELEASED dblock (proof, should a late write roll the leader back, that this version
    # is over) and the free leader go out together. Either failing fails the release: with the
    # leader free, our dblock may still show an earlier write of ours landing late.
    dblock_sector = encode_dblock_sector(released, p.geometry.sector_size, p.own_mode)
    leader_sector = pad_sector(free.encode(), p.geometry.sector_size)
    if not p.extra_disks:
        dblock_written, leader_written = yield Batch((
            Write(p.device, p.dblock_at, dblock_sector, p.io_timeout_s),
            Write(p.device, p.offset_b, leader_sector, p.io_timeout_s)))
        if isinstance(leader_written, StorageError):
            raise leader_written
        if isinstance(dblock_written, StorageError):
            # The lease is free, but our dblock may still show an earlier write of ours (a
            # SHARED mark that lands late): the caller retries, and `release` then writes the
            # RELEASED dblock beside the leader we freed.
            raise dblock_written
        return
    dblock_at = p.geometry.dblock_offset(p.host_id)
    # The leaders come first: the batch may end once a majority of them are written.
    outcomes = yield Batch(
        tuple(Write(device, offset_b, leader_sector, p.io_timeout_s)
              for device, offset_b in p.disks)
        + tuple(Write(device, offset_b + dblock_at, dblock_sector, p.io_timeout_s)
                for device, offset_b in p.disks), need=p.majority, need_among=len(p.disks))
    leader_failures = [o for o in outcomes[:len(p.disks)] if isinstance(o, StorageError)]
    _need_majority(p, len(p.disks) - len(leader_failures), leader_failures, "written")


def request(p: PaxosParams, lver: int | None, force_mode: int) -> Algorithm[int]:
    """Ask the holder of the lease to give it up: write the request record {lver, force_mode}.

    lver None means the next version. Returns the current owner's host_id (0 if the lease is
    free and nothing was written); the caller then flags that host in its delta bitmap.
    A request for lver 0 with mode 0 clears the record.
    """
    leader = yield from read_leader(p)
    at = p.geometry.request_offset
    if lver == 0 and force_mode == 0:
        yield from _write_copies(p, at, pad_sector(Request().encode(), p.geometry.sector_size))
        return 0
    if leader.timestamp == 0:
        return 0
    wanted = leader.lver + 1 if lver is None else lver
    if leader.lver >= wanted:
        raise RequestOld(f"lease {p.resource!r} is already at lver {leader.lver}")
    current = yield from read_request(p)
    if current.lver > wanted:
        raise RequestLver(f"a request for lver {current.lver} is already recorded")
    record = Request(lver=wanted, force_mode=force_mode)
    yield from _write_copies(p, at, pad_sector(record.encode(), p.geometry.sector_size))
    return leader.owner_id


def read_request(p: PaxosParams) -> Algorithm[Request]:
    """The request record (of the disks that disagree, the one for the highest lver)."""
    records = yield from _read_valid(p, p.geometry.request_offset, p.geometry.sector_size,
                                     decode_request)
    return max(records, key=lambda r: r.lver)
