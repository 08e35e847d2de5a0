"""Delta-lease rules in virtual time: the real L1 code driven by the simulator."""

from __future__ import annotations

import contextlib
import os

import pytest

from leasestore.delta import DeltaParams, HostLeaseObserver, acquire, host_lease_loop
from leasestore.effects import Algorithm, Read, Write
from leasestore.errors import BadChecksum, HostIdBusy, LeasestoreError
from leasestore.liveness import HostFlag, HostTable
from leasestore.ondisk.areas import lockspace_area_image
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import Leader, decode_leader, encode_delta_sector
from leasestore.testing import DeltaCluster, Faults, SimDisk, SimWorld
from leasestore.testing.cluster import SPACE, SimObserver
from leasestore.timeouts import Timeouts

G = Geometry(512, 1 << 20)
T10 = Timeouts(10, 60)


def world_with_lockspace(seed: int = 1, io_timeout_s: int = 10) -> tuple[SimWorld, SimDisk]:
    disk = SimDisk(G.area_size, 512, "shared")
    disk.data[:] = lockspace_area_image(SPACE, G, io_timeout_s)
    return SimWorld(seed, {"shared": disk}), disk


def params(host_id: int, name: str, timeouts: Timeouts = T10) -> DeltaParams:
    return DeltaParams("shared", 0, G, SPACE, host_id, name, timeouts)


def sector(disk: SimDisk, host_id: int) -> Leader:
    return decode_leader(disk.read(G.delta_offset(host_id), 512))


def test_join_a_free_slot_takes_the_short_delay() -> None:
    world, disk = world_with_lockspace()
    task = world.spawn("a", acquire(params(1, "host-a")), 5000.0)
    while not task.done and world.now < 100:
        world.run_until(world.now + 0.01)
    # read, write, wait 2*io_timeout, re-read: done just after 20 s of virtual time.
    assert 20.0 <= world.now < 20.1
    assert task.done and task.error is None
    mine: Leader = task.result
    assert (mine.owner_id, mine.owner_generation, mine.resource_name) == (1, 1, "host-a")
    assert sector(disk, 1) == mine
    assert mine.timestamp in (5000, 5001)


def _join_time(world: SimWorld, task_name: str, algorithm: object, offset: float) -> float:
    joined: list[float] = []

    class Obs(HostLeaseObserver):
        def joined(self, leader: Leader) -> None:
            joined.append(world.now)

    world.spawn(task_name, host_lease_loop(algorithm, Obs()), offset)  # type: ignore[arg-type]
    world.run_until(world.now + 400)
    assert joined, "never joined"
    return joined[0]


def test_join_time_free_vs_previous_holder_of_another_name() -> None:
    world, disk = world_with_lockspace()
    assert 20 <= _join_time(world, "a", params(1, "host-a"), 0) < 21
    # host-a crashes while holding; a different host name must wait host_dead, then 2N.
    world.crash(world.tasks[0])
    start = world.now
    joined_at = _join_time(world, "b", params(1, "host-b"), 777)
    assert joined_at - start >= T10.host_dead_s + T10.delta_short_delay_s
    assert sector(disk, 1).resource_name == "host-b"
    assert sector(disk, 1).owner_generation == 2


def test_our_own_name_on_a_live_record_is_waited_out_too() -> None:
    """sanlock re-acquires at once when the record carries its host name; a late write of an
    earlier failed attempt of ours can put our name over another host's live record, so we
    wait host_dead like for any other holder."""
    world, _ = world_with_lockspace()
    _join_time(world, "a", params(1, "host-a"), 0)
    world.crash(world.tasks[0])
    start = world.now
    joined_at = _join_time(world, "a2", params(1, "host-a"), 0)
    assert joined_at - start >= T10.host_dead_s + T10.delta_short_delay_s


def test_live_holder_makes_acquire_fail_busy() -> None:
    world, _ = world_with_lockspace()
    _join_time(world, "a", params(1, "host-a"), 0)
    task = world.spawn("b", acquire(params(1, "host-b")), 50)
    world.run_until(world.now + 200)
    assert isinstance(task.error, HostIdBusy)
    assert "held by live host 'host-a'" in str(task.error)


def test_two_hosts_racing_for_a_free_slot_one_wins() -> None:
    for seed in range(20):
        world, disk = world_with_lockspace(seed)
        a, b = Recorder(world), Recorder(world)
        ta = world.spawn("a", host_lease_loop(params(3, "host-a"), a), 10)
        tb = world.spawn("b", host_lease_loop(params(3, "host-b"), b), 20)
        world.run_until(400)
        ended = [t for t in (ta, tb) if t.done]
        assert len(ended) == 1, seed
        assert isinstance(ended[0].error, HostIdBusy), seed
        winner, recorder = (tb, b) if ended[0] is ta else (ta, a)
        assert len(recorder.renewal_times) >= 15
        assert sector(disk, 3).resource_name == ("host-b" if winner is tb else "host-a")


def test_corrupt_sector_is_never_taken_as_free() -> None:
    world, disk = world_with_lockspace()
    disk.corrupt(G.delta_offset(2), 60)
    before = disk.read(0, G.area_size)
    task = world.spawn("a", acquire(params(2, "host-a")), 0)
    world.run_until(100)
    assert isinstance(task.error, BadChecksum)
    assert "offset 512" in str(task.error)
    assert disk.read(0, G.area_size) == before


class Recorder(HostLeaseObserver):
    def __init__(self, world: SimWorld, table: HostTable | None = None) -> None:
        self.world = world
        self.table = table
        self.renewal_times: list[float] = []
        self.failures = 0
        self.lost_error: LeasestoreError | None = None
        self.lost_at: float | None = None

    def renewed(self, outcome: object) -> None:
        self.renewal_times.append(self.world.now)
        if self.table is not None:
            self.table.observe(outcome.area, outcome.read_started_s)  # type: ignore[attr-defined]

    def renewal_failed(self, error: LeasestoreError, started_s: float, elapsed_s: float) -> None:
        self.failures += 1

    def lost(self, error: LeasestoreError) -> None:
        self.lost_error, self.lost_at = error, self.world.now


def test_renewal_interval_and_io_pattern() -> None:
    world, disk = world_with_lockspace()
    rec = Recorder(world)
    world.spawn("a", host_lease_loop(params(1, "host-a"), rec), 0)
    world.run_until(200)
    gaps = [b - a for a, b in zip(rec.renewal_times, rec.renewal_times[1:], strict=False)]
    assert len(rec.renewal_times) >= 8
    assert all(19.9 <= g <= 21.1 for g in gaps), gaps
    # join: 1 write; each renewal: 1 sector write (the area read is not a write).
    assert disk.writes_landed == 1 + len(rec.renewal_times)


def test_liveness_states_as_another_host_sees_them() -> None:
    world, _ = world_with_lockspace()
    table = HostTable(G, SPACE, 2, T10)
    observer_b = Recorder(world, table)
    a = world.spawn("a", host_lease_loop(params(1, "host-a"), Recorder(world)), 100)
    world.spawn("b", host_lease_loop(params(2, "host-b"), observer_b), 900)
    clock_b = world.tasks[1]
    while table.observations < 1:
        world.run_until(world.now + 0.001)
    assert table.status(world.clock(clock_b), 1)[0].state == HostFlag.UNKNOWN
    world.run_until(90)
    status = table.status(world.clock(clock_b), 1)[0]
    assert status.state == HostFlag.LIVE and status.host_name == "host-a"
    world.crash(a)
    crashed_at = world.now
    samples = []
    while world.now < crashed_at + 200:
        world.run_until(world.now + 1)
        now_b = world.clock(clock_b)
        samples.append((now_b, table.status(now_b, 1)[0].state))
    # B may see A's last renewal only after the crash; judge from the last change B saw.
    last_live = table.status(world.clock(clock_b), 1)[0].last_live_s
    states = {round(now_b - last_live): state for now_b, state in samples}
    assert states[79] == HostFlag.LIVE
    assert states[81] == HostFlag.FAIL
    assert states[139] == HostFlag.FAIL
    assert states[141] == HostFlag.DEAD
    assert {s.host_id for s in table.status(world.clock(clock_b))} == {1, 2}
    assert table.status(world.clock(clock_b), 2)[0].state == HostFlag.LIVE


def test_free_and_corrupt_slots_in_the_table() -> None:
    area = bytearray(lockspace_area_image(SPACE, G, 10))
    table = HostTable(G, SPACE, 1, T10)
    area[5 * 512 + 70] ^= 1
    table.observe(bytes(area), 10.0)
    assert table.state_of(0, 10) == HostFlag.LIVE
    assert table.state_of(3, 10) == HostFlag.FREE
    assert table.state_of(5, 10) == HostFlag.UNKNOWN
    assert "checksum" in (table.status(10.0, 6)[0].error or "")
    assert table.state_of(5, 10 + T10.host_dead_s + 1) == HostFlag.DEAD


def test_storage_failure_past_renewal_fail_loses_the_lease() -> None:
    world, _ = world_with_lockspace()
    rec = Recorder(world)
    world.spawn("a", host_lease_loop(params(1, "host-a"), rec), 0)
    world.run_until(50)
    last_ok = rec.renewal_times[-1]
    world.faults = Faults(io_error=1.0)
    world.run_until(300)
    assert rec.failures > 10
    assert rec.lost_at is not None
    assert T10.id_renewal_fail_s <= rec.lost_at - last_ok + 1 < T10.id_renewal_fail_s + 2
    assert "expired" in str(rec.lost_error)


def test_someone_else_writing_our_sector_loses_the_lease() -> None:
    world, disk = world_with_lockspace()
    rec = Recorder(world)
    world.spawn("a", host_lease_loop(params(1, "host-a"), rec), 0)
    world.run_until(50)
    thief = sector(disk, 1).replace(resource_name="thief", owner_generation=9)
    disk.land(0, encode_delta_sector(thief, 512))
    world.run_until(100)
    assert rec.lost_error is not None and "thief" in str(rec.lost_error)


def test_cancel_releases_the_host_id() -> None:
    world, disk = world_with_lockspace()
    rec = Recorder(world)
    task = world.spawn("a", host_lease_loop(params(1, "host-a"), rec), 0)
    world.run_until(50)
    world.cancel(task)
    world.run_until(51)
    assert task.done and task.error is None
    assert sector(disk, 1).timestamp == 0
    assert sector(disk, 1).resource_name == "host-a"


def test_same_seed_replays_exactly() -> None:
    faults = Faults(io_error=0.05, slow_io=0.05)
    runs = []
    for _ in range(2):
        cluster = DeltaCluster(7, [1, 2, 1], faults=faults)
        cluster.run(chaos_s=600)
        runs.append((cluster.world.steps, bytes(cluster.disk.data), cluster.world.fault_counts))
    assert runs[0] == runs[1]


SEEDS = int(os.environ.get("LEASESTORE_SIM_SEEDS", "1000"))
CHUNK = 100


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
def test_chaos_campaign_never_two_valid_holders(first: int) -> None:
    faults = Faults(io_error=0.03, slow_io=0.03, torn_write=0.2)
    failures: list[str] = []
    for seed in range(first, min(first + CHUNK, SEEDS)):
        cluster = DeltaCluster(seed, [1, 2, 3, 1, 2], faults=faults)
        # Fault-free phase: 6 x host_dead. A write that timed out during the chaos may land up
        # to 4 x its timeout (renewal writes: host_dead) later, disturbing waits until then.
        violations = cluster.run(chaos_s=400, settle_s=6 * cluster.timeouts.host_dead_s)
        failures.extend(str(v) for v in violations)
        assert cluster.world.fault_counts, "chaos injected no faults"
    assert not failures, "replay with DeltaCluster(seed, ...):\n" + "\n".join(failures[:10])


def test_checker_catches_a_broken_algorithm() -> None:
    """The checker is not vacuous: a host that skips the wait for a dead holder is caught."""
    cluster = DeltaCluster(3, [1, 1], faults=Faults.none())
    original = cluster.timeouts
    cluster.run(chaos_s=0, settle_s=60)
    holder = next(h for h in cluster.hosts if cluster.valid_holder(h))
    other = next(h for h in cluster.hosts if h is not holder)
    assert other.task is not None
    cluster.world.crash(other.task)
    # A rogue incarnation that believes it holds host_id 1 without running the protocol.
    rogue_obs = SimObserver(HostTable(G, SPACE, 1, original))
    other.observer = rogue_obs
    other.task = cluster.world.spawn("rogue", iter(()), other.clock_offset_s)  # type: ignore[arg-type]
    other.task.done = False
    rogue_obs.holding = True
    rogue_obs.last_success_s = cluster.world.clock(other.task)
    cluster.check()
    assert cluster.violations and "validly held by 2 hosts" in str(cluster.violations[0])


def test_cancel_after_expiry_does_not_release() -> None:
    world, disk = world_with_lockspace()

    class Expired(Recorder):
        def may_release(self) -> bool:
            return False

    task = world.spawn("a", host_lease_loop(params(1, "host-a"), Expired(world)), 0)
    world.run_until(50)
    stamp = sector(disk, 1).timestamp
    world.cancel(task)
    world.run_until(60)
    assert task.done and sector(disk, 1).timestamp == stamp != 0


def test_simulated_late_write_never_lands_over_a_newer_one_of_the_same_host() -> None:
    for seed in range(30):
        disk = SimDisk(4096, 512, "d")
        world = SimWorld(seed, {"d": disk}, Faults(slow_io=0.5, slow_factor=(1.5, 4.0)))
        landed: list[int] = []
        original = disk.land

        def land(offset_b: int, data: bytes, original: object = original,
                 landed: list[int] = landed) -> None:
            landed.append(data[0])
            original(offset_b, data)  # type: ignore[operator]

        disk.land = land  # type: ignore[method-assign]

        def writer() -> Algorithm[None]:
            for fill in range(1, 9):
                with contextlib.suppress(LeasestoreError):
                    yield Write("d", 0, bytes([fill]) * 512, 1.0)

        world.spawn("w", writer(), 0, host="m1")
        world.run_until(100)
        assert landed == sorted(landed), (seed, landed)
        assert disk.read(0, 512)[0] == landed[-1]


class _Recorder(HostLeaseObserver):
    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.joined_at: list[float] = []
        self.renewals = 0
        self.lost_with: list[LeasestoreError] = []
        self.mismatches: list[str] = []

    def joined(self, leader: Leader) -> None:
        self.joined_at.append(self.world.now)

    def renewed(self, outcome: object) -> None:
        self.renewals += 1

    def lost(self, error: LeasestoreError) -> None:
        self.lost_with.append(error)

    def mismatch(self, message: str) -> None:
        self.mismatches.append(message)


@pytest.mark.parametrize(("format_io_s", "own_io_s"), [(10, 1), (10, 2), (5, 1), (1, 10), (2, 3)])
def test_join_with_another_io_timeout_than_the_format_holds_a_renewing_lease(
        format_io_s: int, own_io_s: int) -> None:
    """A lockspace formatted with one io_timeout and joined with another (the default format
    joined with `-o 1`): the join's waits follow the io_timeout on disk, and it must still end
    holding a valid lease that goes on renewing, with the difference reported."""
    world, disk = world_with_lockspace(io_timeout_s=format_io_s)
    timeouts = Timeouts(own_io_s, 5)
    recorder = _Recorder(world)
    world.spawn("a", host_lease_loop(params(1, "host-a", timeouts), recorder), 4321.0)
    world.run_until(20 * max(format_io_s, own_io_s) + 10 * timeouts.id_renewal_fail_s)
    assert recorder.lost_with == []
    assert len(recorder.joined_at) == 1
    assert recorder.joined_at[0] >= 2 * format_io_s
    # Renewing every 2 × own io_timeout since the join, and the record on disk is recent.
    expected = (world.now - recorder.joined_at[0]) / timeouts.id_renewal_s
    assert recorder.renewals >= expected - 2
    assert 4321.0 + world.now - sector(disk, 1).timestamp <= timeouts.id_renewal_s + 1
    assert sector(disk, 1).io_timeout == own_io_s
    assert bool(recorder.mismatches) == (format_io_s != own_io_s)


def test_a_join_whose_first_renewal_fails_leaves_the_slot_free() -> None:
    """The join that must renew before it counts as held, and cannot: it fails, and the slot it
    wrote is released again rather than left looking held by a host that holds nothing."""
    world, disk = world_with_lockspace(io_timeout_s=10)
    timeouts = Timeouts(1, 5)
    recorder = _Recorder(world)
    # The join reads only its own sector; every whole-area read (a renewal's) fails.
    world.fail_when = lambda io: isinstance(io, Read) and io.length_b == G.area_size
    task = world.spawn("a", host_lease_loop(params(1, "host-a", timeouts), recorder), 10.0)
    world.run_until(19.9)
    assert sector(disk, 1).timestamp != 0
    world.run_until(60)
    assert task.done and task.error is not None
    assert recorder.joined_at == []
    assert sector(disk, 1).timestamp == 0
    assert sector(disk, 1).resource_name == "host-a"


def test_a_peer_io_timeout_beyond_our_range_is_taken_as_written() -> None:
    """A peer's 16-bit io_timeout above 255 is a longer wait for it, never a crash."""
    t = Timeouts(1, 5).for_other(1000, 5.0)
    assert t.host_dead_s == 8 * 1000 + 5
