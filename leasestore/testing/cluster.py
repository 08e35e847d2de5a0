"""Many hosts running the real host-lease loop in one `SimWorld`, under chaos, with checkers.

Chaos phase: hosts crash (machine reset: the incarnation and all it protects die at once) and
restart under the same or a new host name, pause for up to twice host_dead, remove and re-add
their lockspace, and sectors get corrupted; I/O faults come from `Faults`. A host whose loop
ended (busy, lost, released) retries after a while, as a management layer would.
Liveness phase: faults stop; every wanted host_id must end up held.

Checker, after every step: no host_id has two *valid* holders, where a holder is valid while
its own clock is within id_renewal_fail_s of the timestamp of its last successful write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leasestore.delta import DeltaParams, HostLeaseObserver, RenewOutcome, host_lease_loop
from leasestore.errors import LeasestoreError
from leasestore.liveness import HostTable
from leasestore.ondisk.areas import lockspace_area_image
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import Leader
from leasestore.testing.scheduler import Faults, SimTask, SimWorld
from leasestore.testing.simdisk import SimDisk
from leasestore.timeouts import Timeouts

SPACE = "sim-space"
DEVICE = "shared"


@dataclass(frozen=True)
class Violation:
    seed: int
    time_s: float
    message: str

    def __str__(self) -> str:
        return f"seed {self.seed} at t={self.time_s:.3f}s: {self.message}"


class SimObserver(HostLeaseObserver):
    """What a simulated host knows of its own host lease, for the checker."""

    def __init__(self, table: HostTable) -> None:
        self.table = table
        self.holding = False
        self.last_success_s = 0.0
        self.generation = 0
        self.renewals = 0
        self.ended: str | None = None

    def joined(self, leader: Leader) -> None:
        self.holding = True
        self.last_success_s = float(leader.timestamp)
        self.generation = leader.owner_generation

    def renewed(self, outcome: RenewOutcome) -> None:
        self.last_success_s = float(outcome.leader.timestamp)
        self.renewals += 1
        self.table.observe(outcome.area, outcome.read_done_s)

    def lost(self, error: LeasestoreError) -> None:
        self.holding = False
        self.ended = f"lost: {error}"

    def released(self) -> None:
        self.holding = False
        self.ended = "released"


@dataclass
class SimHost:
    machine: str
    host_id: int
    clock_offset_s: float
    incarnation: int = 0
    task: SimTask | None = None
    observer: SimObserver | None = None
    history: list[str] = field(default_factory=list)

    @property
    def host_name(self) -> str:
        return f"{self.machine}-{self.incarnation}"


class DeltaCluster:
    def __init__(
        self,
        seed: int,
        host_ids: list[int],
        *,
        io_timeout_s: int = 10,
        watchdog_fire_timeout_s: float = 60,
        faults: Faults | None = None,
        geometry: Geometry | None = None,
    ) -> None:
        self.geometry = geometry or Geometry(512, 1 << 20)
        self.timeouts = Timeouts(io_timeout_s, watchdog_fire_timeout_s)
        self.disk = SimDisk(self.geometry.area_size, self.geometry.sector_size, DEVICE)
        self.disk.data[:] = lockspace_area_image(SPACE, self.geometry, io_timeout_s)
        self.world = SimWorld(seed, {DEVICE: self.disk}, faults)
        rng = self.world.rng
        self.hosts = [
            SimHost(f"m{i}", host_id, rng.uniform(100.0, 100000.0))
            for i, host_id in enumerate(host_ids)
        ]
        self.violations: list[Violation] = []
        self.corrupted: set[int] = set()
        """Host slots whose sector chaos damaged: never usable again without repair."""
        self.joins = 0

    # -- host lifecycle ------------------------------------------------------------------------

    def start(self, host: SimHost, new_name: bool = False) -> None:
        """Start the host's loop, unless an incarnation of it is already running."""
        if self.running(host):
            return
        if new_name:
            host.incarnation += 1
        params = DeltaParams(DEVICE, 0, self.geometry, SPACE, host.host_id, host.host_name,
                             self.timeouts)
        observer = SimObserver(HostTable(self.geometry, SPACE, host.host_id, self.timeouts))
        host.observer = observer
        host.task = self.world.spawn(host.host_name, host_lease_loop(params, observer),
                                     host.clock_offset_s, host.machine)

    def running(self, host: SimHost) -> bool:
        return host.task is not None and host.task.alive and not host.task.done

    def valid_holder(self, host: SimHost) -> bool:
        if host.task is None or not host.task.alive or host.observer is None:
            return False
        if not host.observer.holding:
            return False
        age_s = self.world.clock(host.task) - host.observer.last_success_s
        return age_s < self.timeouts.id_renewal_fail_s

    # -- checking ------------------------------------------------------------------------------

    def check(self) -> None:
        holders: dict[int, list[SimHost]] = {}
        for host in self.hosts:
            if self.valid_holder(host):
                holders.setdefault(host.host_id, []).append(host)
        for host_id, members in holders.items():
            if len(members) > 1:
                names = ", ".join(h.host_name for h in members)
                self.violations.append(Violation(
                    self.world.seed, self.world.now,
                    f"host_id {host_id} validly held by {len(members)} hosts: {names}"))

    # -- chaos ---------------------------------------------------------------------------------

    def _chaos_event(self, end_s: float, mean_gap_s: float) -> None:
        world, rng = self.world, self.world.rng
        if world.now >= end_s:
            return
        host = rng.choice(self.hosts)
        action = rng.choice(["crash", "pause", "cancel", "corrupt", "restart"])
        if action == "crash" and self.running(host):
            assert host.task is not None
            world.crash(host.task)
            delay = rng.uniform(0, 2 * self.timeouts.host_dead_s)
            same = rng.random() < 0.5
            world.at(world.now + delay, lambda: self.start(host, new_name=not same))
        elif action == "pause" and self.running(host):
            assert host.task is not None
            world.pause(host.task, rng.uniform(0, 2 * self.timeouts.host_dead_s))
        elif action == "cancel" and self.running(host):
            assert host.task is not None
            world.cancel(host.task)
            world.count("cancel")
        elif action == "corrupt" and rng.random() < 0.3:
            victim = rng.randrange(self.geometry.max_hosts if rng.random() < 0.1
                                   else max(h.host_id for h in self.hosts))
            self.disk.corrupt(victim * self.geometry.sector_size, rng.randrange(200))
            self.corrupted.add(victim + 1)
            world.count("corrupt")
        elif action == "restart" and not self.running(host):
            self.start(host, new_name=rng.random() < 0.3)
        world.at(world.now + rng.expovariate(1 / mean_gap_s),
                 lambda: self._chaos_event(end_s, mean_gap_s))

    def _restart_finished(self, end_s: float) -> None:
        """A management layer: hosts whose loop ended try again a little later."""
        world = self.world
        for host in self.hosts:
            if host.task is not None and host.task.done and host.task.alive:
                host.task.alive = False
                delay = world.rng.uniform(0, 3 * self.timeouts.id_renewal_s)
                world.at(world.now + delay, lambda h=host: self.start(h))  # type: ignore[misc]
        if world.now < end_s:
            world.at(world.now + self.timeouts.io_timeout_s, lambda: self._restart_finished(end_s))

    # -- running -------------------------------------------------------------------------------

    def run(self, chaos_s: float, settle_s: float | None = None,
            mean_chaos_gap_s: float | None = None) -> list[Violation]:
        """Chaos for chaos_s, then a fault-free liveness phase; returns violations."""
        world = self.world
        for host in self.hosts:
            world.at(world.rng.uniform(0, self.timeouts.id_renewal_s),
                     lambda h=host: self.start(h))  # type: ignore[misc]
        gap = mean_chaos_gap_s or self.timeouts.host_dead_s / 2
        if chaos_s > 0:
            world.at(world.rng.uniform(0, gap), lambda: self._chaos_event(chaos_s, gap))
        settle = settle_s if settle_s is not None else 4 * self.timeouts.host_dead_s
        total = chaos_s + settle
        world.at(0, lambda: self._restart_finished(total))
        world.run_until(chaos_s, self.check)
        world.faults = Faults.none()
        for host in self.hosts:
            if host.task is not None and host.task.paused_until > world.now:
                host.task.paused_until = world.now
        world.run_until(total, self.check)
        self._check_liveness()
        return self.violations

    def _check_liveness(self) -> None:
        wanted = {h.host_id for h in self.hosts} - self.corrupted
        held = {h.host_id for h in self.hosts if self.valid_holder(h)}
        for host_id in sorted(wanted - held):
            self.violations.append(Violation(
                self.world.seed, self.world.now,
                f"liveness: host_id {host_id} wanted but not held after the fault-free phase"))
