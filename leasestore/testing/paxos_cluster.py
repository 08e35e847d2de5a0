"""Hosts contending for resource leases in one `SimWorld`, with checkers after every step.

Each host runs the real host-lease loop and a worker that acquires a random resource (sometimes
shared, sometimes with the lver it last saw), holds it, and releases it. A holding is *valid*
while the worker holds it and its host's delta lease is within id_renewal_fail_s of its last
renewal (past that the supervisor has killed it). Machine crashes kill both tasks at once;
pauses freeze both; a lost host lease kills the worker (the supervisor) and the host re-joins
later.

Checkers: never two valid exclusive holders of one resource; never an exclusive beside a shared
valid holder; every exclusive acquisition's lver is greater than all earlier ones of that
resource, or equal to the last one when granted again to the same host generation; a dead-owner
takeover happens only after the owner's holding stopped being valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leasestore.delta import DeltaParams, HostLeaseObserver, RenewOutcome, host_lease_loop
from leasestore.effects import Algorithm, Sleep
from leasestore.errors import LeasestoreError, StorageError
from leasestore.liveness import HostTable, OwnerView
from leasestore.ondisk.areas import lockspace_area_image, resource_area_image
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import Leader
from leasestore.paxos import HeldLease, PaxosParams, acquire, release
from leasestore.testing.cluster import Violation
from leasestore.testing.scheduler import Faults, SimTask, SimWorld
from leasestore.testing.simdisk import SimDisk
from leasestore.timeouts import Timeouts

SPACE = "paxos-space"
DEVICE = "shared"


@dataclass
class Holding:
    host: int
    incarnation: int
    resource: int
    lver: int
    shared: bool


@dataclass
class PaxosHost:
    index: int
    host_id: int
    clock_offset_s: float
    incarnation: int = 0
    """Part of the host name: a new name after a crash forgoes sanlock's fast reacquire."""
    epoch: int = 0
    """Counts starts; a holding from an earlier start is never valid."""
    delta_task: SimTask | None = None
    worker_task: SimTask | None = None
    table: HostTable | None = None
    joined: bool = False
    generation: int = 0
    last_success_s: float = 0.0
    holding: Holding | None = None
    acquisitions: int = 0

    @property
    def name(self) -> str:
        return f"h{self.index}-{self.incarnation}"


@dataclass
class ResourceLog:
    max_lver: int = 0
    max_lver_owner: tuple[int, int] = (-1, 0)
    """(host index, generation) granted max_lver: only it may be granted that lver again (a
    re-grant to the same owner after its leader write was rolled back, as sanlock's)."""
    acquisitions: int = 0
    takeovers: int = 0
    history: list[tuple[float, str]] = field(default_factory=list)


class PaxosCluster:
    def __init__(self, seed: int, hosts: int, resources: int, *, io_timeout_s: int = 10,
                 watchdog_fire_timeout_s: float = 60, faults: Faults | None = None) -> None:
        self.geometry = Geometry(512, 1 << 20)
        self.timeouts = Timeouts(io_timeout_s, watchdog_fire_timeout_s)
        self.resources = resources
        size = self.geometry.align_size * (1 + resources)
        self.disk = SimDisk(size, 512, DEVICE)
        self.disk.land(0, lockspace_area_image(SPACE, self.geometry, io_timeout_s))
        for r in range(resources):
            self.disk.land(self._offset(r),
                           resource_area_image(SPACE, f"res{r}", self.geometry))
        self.world = SimWorld(seed, {DEVICE: self.disk}, faults)
        rng = self.world.rng
        self.hosts = [PaxosHost(i, i + 1, rng.uniform(100.0, 100000.0)) for i in range(hosts)]
        self.logs = [ResourceLog() for _ in range(resources)]
        self.violations: list[Violation] = []
        self._acquired_at_settle: list[int] | None = None
        self._rejoin_until_s = float("inf")

    def _offset(self, resource: int) -> int:
        return self.geometry.align_size * (1 + resource)

    # -- validity ----------------------------------------------------------------------------

    def _alive(self, host: PaxosHost) -> bool:
        return host.delta_task is not None and host.delta_task.alive

    def delta_valid(self, host: PaxosHost) -> bool:
        return self.delta_valid_at(host, 0.0)

    def delta_valid_at(self, host: PaxosHost, ahead_s: float) -> bool:
        """The host's delta lease is valid now and still will be ahead_s from now."""
        if not self._alive(host) or not host.joined or host.delta_task is None:
            return False
        age_s = self.world.clock(host.delta_task) + ahead_s - host.last_success_s
        return age_s < self.timeouts.id_renewal_fail_s

    def valid_holding(self, host: PaxosHost) -> Holding | None:
        if host.holding is None or host.holding.incarnation != host.epoch:
            return None
        return host.holding if self.delta_valid(host) else None

    def check(self) -> None:
        by_resource: dict[int, list[tuple[PaxosHost, Holding]]] = {}
        for host in self.hosts:
            held = self.valid_holding(host)
            if held is not None:
                by_resource.setdefault(held.resource, []).append((host, held))
        for resource, holders in by_resource.items():
            exclusive = [h for h in holders if not h[1].shared]
            if len(exclusive) > 1 or (exclusive and len(holders) > 1):
                desc = ", ".join(f"{h.name}({'sh' if x.shared else 'ex'} lver {x.lver})"
                                 for h, x in holders)
                self._violate(f"res{resource} validly held by {desc}")

    def _violate(self, message: str) -> None:
        self.violations.append(Violation(self.world.seed, self.world.now, message))

    # -- host tasks ----------------------------------------------------------------------------

    def _owner_view(self, host: PaxosHost, owner: int) -> OwnerView | None:
        return None if host.table is None else host.table.owner_view(owner)

    def start(self, host: PaxosHost, new_name: bool = False) -> None:
        if self._alive(host) and host.delta_task is not None and not host.delta_task.done:
            return
        self._crash(host)  # whatever is left of the previous incarnation goes with it
        host.incarnation += 1 if new_name else 0
        host.epoch += 1
        host.joined, host.holding = False, None
        incarnation = host.epoch
        params = DeltaParams(DEVICE, 0, self.geometry, SPACE, host.host_id, host.name,
                             self.timeouts)
        host.table = HostTable(self.geometry, SPACE, host.host_id, self.timeouts)
        cluster = self

        class Observer(HostLeaseObserver):
            def joined(self, leader: Leader) -> None:
                host.joined, host.generation = True, leader.owner_generation
                host.last_success_s = float(leader.timestamp)

            def renewed(self, outcome: RenewOutcome) -> None:
                host.last_success_s = float(outcome.leader.timestamp)
                assert host.table is not None
                host.table.observe(outcome.area, outcome.read_done_s)

            def lost(self, error: LeasestoreError) -> None:
                cluster._kill_worker(host)
                host.joined = False

            def released(self) -> None:
                host.joined = False

        machine = f"m{host.index}"
        host.delta_task = self.world.spawn(host.name, host_lease_loop(params, Observer()),
                                           host.clock_offset_s, machine)
        host.worker_task = self.world.spawn(host.name + "-worker",
                                            self._worker(host, incarnation), host.clock_offset_s,
                                            machine)

    def _kill_worker(self, host: PaxosHost) -> None:
        if host.worker_task is not None and host.worker_task.alive:
            self.world.crash(host.worker_task)
        host.holding = None

    def _params(self, host: PaxosHost, resource: int) -> PaxosParams:
        return PaxosParams(
            DEVICE, self._offset(resource), self.geometry, SPACE, f"res{resource}",
            host.host_id, host.generation, self.timeouts, DEVICE, 0, self.geometry,
            host_info=lambda owner: self._owner_view(host, owner),
        )

    def _worker(self, host: PaxosHost, incarnation: int) -> Algorithm[None]:
        rng = self.world.rng
        while True:
            if not host.joined or self._satisfied(host):
                yield Sleep(self.timeouts.io_timeout_s / 4)
                continue
            resource = rng.randrange(self.resources)
            shared = rng.random() < 0.2
            params = self._params(host, resource)
            try:
                held = yield from acquire(params, shared=shared)
            except LeasestoreError:
                yield Sleep(rng.uniform(0.5, 3 * self.timeouts.io_timeout_s))
                continue
            if not self.delta_valid(host):  # as the daemon does: a grant that outlived our
                yield Sleep(self.timeouts.io_timeout_s)  # host lease is void
                continue
            self._acquired(host, incarnation, resource, held)
            yield from self._hold(rng.expovariate(1 / (4 * self.timeouts.io_timeout_s)))
            host.holding = None
            yield from self._release(host, params, held)
            yield Sleep(rng.uniform(0, 2 * self.timeouts.io_timeout_s))

    def _hold(self, seconds: float) -> Algorithm[None]:
        """Hold a lease that long; in the fault-free phase, no longer than 4 × io_timeout, so
        that a random long hold cannot outlast the window in which waiting hosts must be
        granted (a workload choice, not a protocol rule)."""
        cap_s = 4 * self.timeouts.io_timeout_s
        held_s = 0.0
        while held_s < seconds:
            if self._acquired_at_settle is not None and held_s >= cap_s:
                return
            step = min(seconds - held_s, self.timeouts.io_timeout_s)
            yield Sleep(step)
            held_s += step

    def _release(self, host: PaxosHost, params: PaxosParams, held: HeldLease) -> Algorithm[None]:
        """As the daemon does: skip the leader read when our host lease outlasts the write's
        deadline (half the time, so that both paths run); retry a release whose I/O failed, with
        the read, while the host lease lasts."""
        first = True
        while host.joined:
            unchanged = (first and self.world.rng.random() < 0.5
                         and self.delta_valid_at(host, self.timeouts.io_timeout_s))
            first = False
            try:
                yield from release(params, held, leader_unchanged=unchanged)
                return
            except StorageError:
                yield Sleep(self.timeouts.io_timeout_s)
            except LeasestoreError:
                return

    def _satisfied(self, host: PaxosHost) -> bool:
        """In the fault-free phase a host that has been granted a lease stops contending, so
        that every other waiting host must be granted one too."""
        return (self._acquired_at_settle is not None
                and host.acquisitions > self._acquired_at_settle[host.index])

    def _acquired(self, host: PaxosHost, incarnation: int, resource: int, held: HeldLease) -> None:
        log = self.logs[resource]
        if not held.shared:
            owner = (host.index, host.generation)
            again = held.lver == log.max_lver and owner == log.max_lver_owner
            if held.lver <= log.max_lver and not again:
                self._violate(f"res{resource}: lver {held.lver} acquired after {log.max_lver}")
            log.max_lver, log.max_lver_owner = max(log.max_lver, held.lver), owner
        log.acquisitions += 1
        host.acquisitions += 1
        host.holding = Holding(host.index, incarnation, resource, held.lver, held.shared)
        log.history.append((self.world.now, f"{host.name} {'sh' if held.shared else 'ex'} "
                                            f"lver {held.lver}"))
        self.check()

    # -- chaos ---------------------------------------------------------------------------------

    def _crash(self, host: PaxosHost) -> None:
        for task in (host.delta_task, host.worker_task):
            if task is not None and task.alive:
                self.world.crash(task)
        host.holding, host.joined = None, False

    def _chaos(self, end_s: float, gap_s: float) -> None:
        world, rng = self.world, self.world.rng
        if world.now >= end_s:
            return
        host = rng.choice(self.hosts)
        action = rng.choice(["crash", "pause", "pause", "restart"])
        if action == "crash" and self._alive(host):
            self._crash(host)
            world.at(world.now + rng.uniform(0, 2 * self.timeouts.host_dead_s),
                     lambda: self.start(host, new_name=rng.random() < 0.5))
        elif action == "pause" and self._alive(host):
            seconds = rng.uniform(0, 2 * self.timeouts.host_dead_s)
            for task in (host.delta_task, host.worker_task):
                if task is not None:
                    world.pause(task, seconds)
        elif action == "restart" and host.delta_task is not None and host.delta_task.done:
            self._crash(host)
            self.start(host, new_name=rng.random() < 0.3)
        world.at(world.now + rng.expovariate(1 / gap_s), lambda: self._chaos(end_s, gap_s))

    def _rejoin_finished(self) -> None:
        for host in self.hosts:
            if host.delta_task is not None and host.delta_task.done and host.delta_task.alive:
                self._crash(host)
                self.world.at(self.world.now + self.world.rng.uniform(0, 30),
                              lambda h=host: self.start(h))  # type: ignore[misc]
        if self.world.now < self._rejoin_until_s:
            self.world.at(self.world.now + self.timeouts.io_timeout_s, self._rejoin_finished)

    def run(self, chaos_s: float, settle_s: float | None = None) -> list[Violation]:
        """Chaos for chaos_s, then faults off: once the devices' queues of timed-out writes have
        drained, every host must be granted a lease within settle_s (4 × host_dead by default:
        room for the longest pause, a host-lease acquire and a turn at the lease)."""
        world = self.world
        for host in self.hosts:
            world.at(world.rng.uniform(0, 5), lambda h=host: self.start(h))  # type: ignore[misc]
        gap = self.timeouts.host_dead_s / 2
        if chaos_s > 0:
            world.at(world.rng.uniform(0, gap), lambda: self._chaos(chaos_s, gap))
        settle = settle_s if settle_s is not None else 4 * self.timeouts.host_dead_s
        self._rejoin_until_s = float("inf")
        world.at(0, self._rejoin_finished)
        world.run_until(chaos_s, self.check)
        world.faults = Faults.none()
        drained_s = max(chaos_s, world.backlog_clears_at())
        end_s = self._rejoin_until_s = drained_s + settle
        world.run_until(drained_s, self.check)
        self._acquired_at_settle = [host.acquisitions for host in self.hosts]
        while world.now < end_s and not all(self._satisfied(h) for h in self.hosts):
            world.run_until(min(end_s, world.now + self.timeouts.io_timeout_s), self.check)
        if settle > 0:
            for host, before in zip(self.hosts, self._acquired_at_settle, strict=True):
                if host.acquisitions == before:
                    self._violate(f"liveness: {host.name} acquired nothing in the "
                                  f"{settle:.0f} s fault-free phase")
        return self.violations
