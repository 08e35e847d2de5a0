"""Resource leases on several disks: the majority rules of paxos.py, in the simulator (the
shipped algorithm and ResourceService), and a checker shown to catch a broken rule."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import leasestore.paxos as paxos_module
from leasestore.effects import Read, Write
from leasestore.errors import (
    AcquireIdLive,
    BadDblockChecksum,
    LeasestoreError,
    NoDiskMajority,
    SharedHolders,
)
from leasestore.ondisk.dblock import (
    DBLOCK_FLAG_RELEASED,
    MODE_FLAG_SHARED,
    ModeBlock,
    decode_dblock,
    decode_mode_block,
    encode_dblock_sector,
)
from leasestore.ondisk.leader import Leader
from leasestore.paxos import HeldLease, PaxosParams, StillShared, acquire, convert, release
from leasestore.testing.campaign import Shape, run_seed
from leasestore.testing.leaseworld import (
    GEOMETRY,
    LEASE_AT,
    LOCKSPACE,
    RESOURCE,
    TIMEOUTS,
    LeaseWorld,
)
from leasestore.testing.paxos_cluster import ClusterConfig, PaxosCluster
from leasestore.testing.scheduler import Faults

G, T = GEOMETRY, TIMEOUTS
LS, RES, RES_AT = LOCKSPACE, RESOURCE, LEASE_AT
LEASE_DISKS = ("a", "b", "c")


def three_disks(seed: int = 1) -> LeaseWorld:
    """A lockspace on its own disk and one resource on disks a, b and c (at one offset)."""
    return LeaseWorld(LEASE_DISKS, lockspace_disk="ls", seed=seed)


def test_a_lease_works_with_one_of_three_disks_gone_and_the_next_write_repairs_it() -> None:
    d = three_disks()
    d.join(1)
    d.join(2)
    d.cut("b")
    held: HeldLease = d.run(acquire(d.params(1))).result
    assert held.lver == 1
    leaders = d.leaders()
    assert leaders["a"].owner_id == leaders["c"].owner_id == 1 and leaders["b"].lver == 0
    refused = d.run(acquire(d.params(2)))
    assert isinstance(refused.error, LeasestoreError)  # held by live host 1
    assert "live host 1" in str(refused.error)
    d.run(release(d.params(1), held))
    d.restore("b")  # back, behind: it missed the grant and the release
    again = d.run(acquire(d.params(2))).result
    assert again.lver == 2
    leaders = d.leaders()
    assert len({leader.encode() for leader in leaders.values()}) == 1  # all three agree again
    assert leaders["b"].owner_id == 2 and leaders["b"].lver == 2
    dblock = decode_dblock(d.disks["b"].read(RES_AT + G.dblock_offset(2), 512))
    assert dblock.lver == 2 and dblock.inp == 2


def test_two_of_three_disks_gone_fails_the_acquire_and_nobody_holds_it() -> None:
    d = three_disks()
    d.join(1)
    d.cut("a")
    d.cut("c")
    failed = d.run(acquire(d.params(1)))
    assert isinstance(failed.error, NoDiskMajority)
    assert "1 of 3 disks, 2 needed" in str(failed.error)
    d.restore("a")
    d.restore("c")
    assert all(leader.timestamp == 0 for leader in d.leaders().values())
    held = d.run(acquire(d.params(1))).result  # whatever the failed try left, it is free
    assert held.lver >= 1


def test_a_corrupt_copy_counts_as_a_missing_disk_never_as_free() -> None:
    d = three_disks()
    d.join(1)
    d.join(2)
    held = d.run(acquire(d.params(1))).result
    d.disks["a"].corrupt(RES_AT, 40)  # the leader copy on a
    refused = d.run(acquire(d.params(2)))
    assert refused.error is not None and "live host 1" in str(refused.error)
    d.cut("b")  # with b gone too, no majority of valid copies: an error, not "free"
    refused = d.run(acquire(d.params(2)))
    assert refused.error is not None and refused.result is None
    d.restore("b")
    d.run(release(d.params(1), held))
    assert d.run(acquire(d.params(2))).result.lver == 2


def test_more_than_four_disks_is_refused() -> None:
    with pytest.raises(LeasestoreError, match="at most 4"):
        PaxosParams("a", 0, G, LS, RES, 1, 1, T, "ls", 0, G,
                    extra_disks=tuple((f"d{i}", 0) for i in range(4)))


def _one_copy_is_enough(p: PaxosParams, good: int, failures: Any, what: str) -> None:
    """A broken majority rule: any disk that answers will do."""
    if good < 1:
        raise failures[0]


def _split_paths(cluster: PaxosCluster) -> None:
    """Host 1 reaches lease disk 0 only; host 2 every disk but 0 (until the faults end)."""
    first, second = cluster.hosts
    for disk in ("/dev/lease1", "/dev/lease2"):
        cluster.world.path_outages[(first.machine, disk)] = (float("inf"), False)
    cluster.world.path_outages[(second.machine, "/dev/lease0")] = (float("inf"), False)


@pytest.mark.parametrize("broken", [False, True])
def test_checker_catches_a_lease_granted_on_a_minority_of_disks(
        monkeypatch: pytest.MonkeyPatch, broken: bool) -> None:
    if broken:
        monkeypatch.setattr(paxos_module, "_need_majority", _one_copy_is_enough)
    config = dataclasses.replace(ClusterConfig.fixed(2, 1), lease_disks=3)
    cluster = PaxosCluster(0, config, faults=Faults.none())
    _split_paths(cluster)
    failures = [str(v) for v in cluster.run(chaos_s=300)]
    assert not any("a task crashed" in f for f in failures)
    caught = any("held by live processes" in f for f in failures)
    assert caught == broken, failures


def test_campaign_slice_over_two_to_four_disks() -> None:
    shape = Shape(None, None, 400, None, lease_disks=None)
    disks_seen = set()
    for seed in range(8_000_000, 8_000_024):
        result = run_seed((seed, shape))
        assert not result.failures, (seed, result.failures)
        disks_seen.add(result.config["lease_disks"])
        assert result.acquisitions > 0
    assert disks_seen == {"2", "3", "4"}


def test_a_shared_holders_mark_left_on_a_disk_behind_does_not_outlive_its_release() -> None:
    """Host 1 holds the lease shared, then releases it while disk c is gone: c keeps the
    SHARED mark. Back, c must not make host 1 (alive, holding nothing) a shared holder that
    refuses every exclusive acquire (campaign seed 8100006 at 0ae2ef4 found it so)."""
    d = three_disks()
    d.join(1)
    d.join(2)
    held = d.run(acquire(d.params(1), shared=True)).result
    assert held.shared
    d.cut("c")
    d.run(release(d.params(1), held))
    d.restore("c")
    stale = decode_dblock(d.disks["c"].read(RES_AT + G.dblock_offset(1), 512))
    assert stale.released  # c still shows host 1's shared holding as it was
    taken = d.run(acquire(d.params(2)))
    assert taken.error is None, taken.error
    assert taken.result.lver == held.lver + 1


def test_a_multidisk_run_corrupts_at_most_one_copy() -> None:
    config = dataclasses.replace(ClusterConfig.fixed(2, 2), lease_disks=3)
    cluster = PaxosCluster(0, config, faults=Faults.none())
    for _ in range(20):
        cluster._corrupt_a_resource_sector()
    assert cluster.counts.get("corrupt_sector", 0) <= 1 and not cluster.corrupted


def test_a_released_copy_with_a_shared_mark_on_one_disk_frees_nothing() -> None:
    """Host 1 is becoming a shared holder: its RELEASED dblock with the SHARED mark has landed
    on disk a, not yet on b and c, and its leader still names it. An exclusive acquirer whose
    look at host 1's dblock finds that copy, but whose ballot reads b and c, once took the
    RELEASED copy to mean the lease was free, missed the mark, and won beside the shared
    holder host 1 was about to be (campaign seed 8500186 at fda10f4)."""
    d = three_disks()
    d.join(1)
    d.join(2)
    held: HeldLease = d.run(acquire(d.params(1))).result
    marked = encode_dblock_sector(dataclasses.replace(held.dblock, flags=DBLOCK_FLAG_RELEASED),
                                  512, ModeBlock(MODE_FLAG_SHARED, 1))
    d.disks["a"].land(RES_AT + G.dblock_offset(1), marked)
    area = G.ballot_read_size(G.max_hosts)
    d.world.fail_when = lambda effect: (effect.device == "a" and effect.offset_b == RES_AT
                                        and isinstance(effect, Read)
                                        and effect.length_b == area)
    refused = d.run(acquire(d.params(2)))
    assert isinstance(refused.error, AcquireIdLive), refused.error or refused.result


def test_a_withdrawn_convert_left_marked_on_one_disk_does_not_outlive_the_shared_release(
) -> None:
    """Host 1 holds the lease shared and tries to take it exclusive: the ballot wins, the
    leader write fails, and the withdrawal of the claim (RELEASED, still SHARED-marked, at a
    higher mbal) lands on disk c only. Still shared, host 1 then releases while c is gone. The
    release must order after the marked withdrawal on c: it once wrote the same mbal without
    the mark, the mark won the tie, and host 1 (alive, holding nothing) refused every
    exclusive acquire for good (campaign seed 8801624 at 3ef9e71)."""
    d = three_disks()
    d.join(1)
    d.join(2)
    p = d.params(1)
    held: HeldLease = d.run(acquire(p, shared=True)).result
    dblock_at = RES_AT + G.dblock_offset(1)
    leader_failed: list[bool] = []

    def fail(effect: Read | Write) -> bool:
        if not isinstance(effect, Write) or effect.device == "c":
            return False
        if effect.offset_b == RES_AT:  # the convert's leader write: on a and b
            leader_failed.append(True)
            return True
        return bool(leader_failed) and effect.offset_b == dblock_at  # then the withdrawal

    d.world.fail_when = fail
    failed = d.run(convert(p, held, shared=False))
    assert isinstance(failed.error, StillShared), failed.error or failed.result
    d.world.fail_when = None
    withdrawn = decode_dblock(d.disks["c"].read(dblock_at, 512))
    assert withdrawn.released and withdrawn.lver == held.lver + 1
    assert decode_mode_block(d.disks["c"].read(dblock_at, 512)).shared
    d.cut("c")
    d.run(release(p, failed.error.held))
    d.restore("c")
    d.world.fail_when = lambda effect: isinstance(effect, Read) and effect.device == "a"
    taken = d.run(acquire(d.params(2)))  # reads b and c: c still shows the marked withdrawal
    assert taken.error is None, taken.error
    assert taken.result.leader.owner_id == 2


def test_the_leader_read_is_the_newest_copy_whichever_disks_answer_first() -> None:
    """Disk a misses a grant and its release (cut meanwhile): whichever majority answers, the
    leader read is the newest copy it holds; a majority without a, or with it, agrees."""
    d = three_disks()
    d.join(1)
    first: HeldLease = d.run(acquire(d.params(1))).result
    d.run(release(d.params(1), first))
    d.cut("a")
    second: HeldLease = d.run(acquire(d.params(1))).result
    d.restore("a")
    leaders = d.leaders()
    assert leaders["a"].lver == first.lver and leaders["b"].lver == second.lver
    for failing in LEASE_DISKS:
        d.world.fail_when = lambda effect, gone=failing: effect.device == gone
        seen: Leader = d.run(paxos_module.read_leader(d.params(2))).result
        assert (seen.lver, seen.owner_id, seen.timestamp != 0) == (second.lver, 1, True)


def test_holdings_are_read_by_majority_not_from_the_first_disk() -> None:
    """Host 1 takes the lease shared while disk a (the first) is gone: a alone shows nobody.
    read_holdings over a majority that includes a still finds host 1's mark; a alone is no
    majority."""
    d = three_disks()
    d.join(1)
    d.join(2)
    d.cut("a")
    d.run(acquire(d.params(1), shared=True))
    d.restore("a")
    assert not decode_mode_block(d.disks["a"].read(RES_AT + G.dblock_offset(1), 512)).shared
    found = d.leaders()["b"]
    reading = paxos_module.reading_params([("a", RES_AT), ("b", RES_AT), ("c", RES_AT)], found,
                                          10)
    d.world.fail_when = lambda effect: effect.device == "c"
    holdings: paxos_module.Holdings = d.run(paxos_module.read_holdings(reading)).result
    assert holdings.shared == ((1, 1),) and holdings.leader.timestamp == 0
    d.cut("b")
    refused = d.run(paxos_module.read_holdings(reading))  # a and nothing else: no majority
    assert isinstance(refused.error, NoDiskMajority), refused.error or refused.result


def _reading(d: LeaseWorld) -> PaxosParams:
    return paxos_module.reading_params([(name, RES_AT) for name in LEASE_DISKS],
                                       d.leaders()["b"], 10)


def _shared_with_its_mark_bad_on_a() -> LeaseWorld:
    """Host 1 holds the lease shared: its mark reached a and b (c was cut and keeps an older,
    unmarked copy), and a's copy of its dblock then fails its checksum (the mode block is
    intact)."""
    d = three_disks()
    d.join(1)
    first: HeldLease = d.run(acquire(d.params(1))).result
    d.run(release(d.params(1), first))
    d.cut("c")
    d.run(acquire(d.params(1), shared=True))
    d.restore("c")
    at = RES_AT + G.dblock_offset(1)
    sector = bytearray(d.disks["a"].read(at, 512))
    sector[0] ^= 0xFF  # the dblock no longer matches its checksum; the mode block is intact
    d.disks["a"].land(at, bytes(sector))
    return d


def test_holdings_never_count_a_copy_that_does_not_verify() -> None:
    """Host 1 holds the lease shared, its mark bad on a and missing on c: a and c are no
    majority of copies that verify, so the reader waits for b and finds the mark. (It once
    skipped the bad row, took c's stale copy as host 1's latest, and reported the lease free
    while host 1 held it shared.)"""
    d = _shared_with_its_mark_bad_on_a()
    holdings: paxos_module.Holdings = d.run(paxos_module.read_holdings(_reading(d))).result
    assert holdings.shared == ((1, 1),)
    d.world.fail_when = lambda effect: effect.device == "b"
    refused = d.run(paxos_module.read_holdings(_reading(d)))  # a bad, c behind: no majority
    assert isinstance(refused.error, BadDblockChecksum), refused.error or refused.result


def test_a_ballot_never_judges_a_host_by_a_copy_of_its_dblock_that_does_not_verify() -> None:
    """Host 1 holds the lease shared, its mark bad on a and missing on c. Host 2's exclusive
    acquire reads the lease from a and b, then b stops answering its phase reads: a and c
    are no majority of copies that verify, and host 2 must be refused the lease. (The
    phase reads once skipped a's bad row, took c's stale copy as host 1's latest, and granted
    host 2 the lease beside the live shared holder.) With b back, host 2 finds host 1."""
    d = _shared_with_its_mark_bad_on_a()
    d.join(2)
    ballot_begun: list[bool] = []

    def fail(effect: Read | Write) -> bool:
        if isinstance(effect, Write) and effect.offset_b == RES_AT + G.dblock_offset(2):
            ballot_begun.append(True)
            return False
        return bool(ballot_begun) and isinstance(effect, Read) and effect.device == "b"

    d.world.fail_when = fail
    refused = d.run(acquire(d.params(2)))
    assert ballot_begun, "the acquire never reached its ballot"
    # a's copy fails its checksum and b fails its reads: the record error is the one reported
    assert isinstance(refused.error, (BadDblockChecksum, NoDiskMajority)), (
        refused.error or refused.result)
    d.world.fail_when = None
    again = d.run(acquire(d.params(2)))
    assert isinstance(again.error, SharedHolders), again.error or again.result
    holdings: paxos_module.Holdings = d.run(paxos_module.read_holdings(_reading(d))).result
    assert holdings.leader.timestamp == 0 and holdings.shared == ((1, 1),)


def test_a_convert_to_exclusive_clears_its_mark_where_a_disk_missed_the_clearing() -> None:
    """Host 1 converts its shared holding to exclusive; the write that clears its SHARED
    mark misses disk c. Reading b and c, host 1 must show as the exclusive owner only: the
    clearing write once carried the marked copy's very mbal, so c's mark won the tie and
    host 1 counted as a shared holder as well."""
    d = three_disks()
    d.join(1)
    p = d.params(1)
    held: HeldLease = d.run(acquire(p, shared=True)).result
    dblock_at = RES_AT + G.dblock_offset(1)
    committed: list[bool] = []

    def fail(effect: Read | Write) -> bool:
        if not isinstance(effect, Write):
            return False
        if effect.offset_b == RES_AT:
            committed.append(True)
            return False
        return bool(committed) and effect.device == "c" and effect.offset_b == dblock_at

    d.world.fail_when = fail
    won: HeldLease = d.run(convert(p, held, shared=False)).result
    assert not won.shared and decode_mode_block(d.disks["c"].read(dblock_at, 512)).shared
    d.world.fail_when = lambda effect: effect.device == "a"
    holdings: paxos_module.Holdings = d.run(paxos_module.read_holdings(_reading(d))).result
    assert holdings.leader.owner_id == 1 and holdings.leader.timestamp != 0
    assert holdings.shared == ()
    d.world.fail_when = None
    d.run(release(p, won))
    d.world.fail_when = lambda effect: effect.device == "a"
    after: paxos_module.Holdings = d.run(paxos_module.read_holdings(_reading(d))).result
    assert after.leader.timestamp == 0 and after.shared == ()
