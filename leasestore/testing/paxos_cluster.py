"""Hosts running the shipped daemon policy in one `SimWorld`, with checkers after every step.

Each simulated host runs, as tasks of its current boot, the daemon's own code: a `Lockspace`
(its `membership()` generator: join, renew, fail, release), a `ResourceService` (its
`acquiring`, `releasing`, `releasing_after_exit` generators and the background retries it
spawns) and the monitor's `Supervisor` (expiry, stopping holders, whether to pet). What is
simulated is only the world around that code: the disk and its faults, the processes holding
leases (which die, or ignore SIGTERM, or ignore even SIGKILL as a process stuck in the kernel
does), the hardware watchdog (it resets the host `watchdog_fire_timeout` after the last pet),
machine crashes, daemon stalls (its tasks stop; its processes and its watchdog run on), machine
suspends (the daemon's tasks and its processes freeze, while lease time, on a clock that counts
suspend, and a hardware watchdog run on), daemon
kills and restarts (its processes and its armed watchdog run on; the new daemon runs the
shipped `ending_previous_holders` on the record the old one kept through the resource service's
`on_holders_changed` seam before it may pet), rem_lockspace while processes go on acquiring
(the shipped removal.py steps; the host_id is given up by cancelling the membership task),
storage
outages of one host (its I/O fails or hangs), a corrupted sector of one resource, and an
operator who adds a failed lockspace again once its holders are gone.

Each seed draws a configuration (`ClusterConfig.draw`): hosts and their host_ids, resources,
processes per host, per-host io_timeouts and the io_timeout the area was formatted with, the
watchdog fire timeout, the area geometry, how often shared mode is asked for.

Checkers:
- safety: never two live processes (on any hosts) holding one resource exclusively, nor one
  exclusive beside a shared holder. A holding lasts from the grant until its process lets go
  or dies: the fencing (supervisor kills, watchdog resets) is under test, not assumed;
- lver: every exclusive grant's lver is above all earlier ones of that resource, or equal to
  the last one when granted again to the same host generation;
- liveness: once faults stop and the devices' queues have drained, every host is granted a
  lease, and every resource is granted to someone, within `settle_s`;
- orphans: at the end, with every process gone, each resource can be acquired from a live host
  (none is left owned by a live host that does not hold it, or blocked by a stale claim).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import leasestore.daemon.holders as holder_rules
from leasestore import removal
from leasestore.daemon.holders import HolderProcess
from leasestore.daemon.supervisor import Supervisor, monitor_interval_s
from leasestore.effects import Algorithm, Now, Sleep
from leasestore.errors import (
    AcquireIdLive,
    AcquireOwned,
    CorruptRecord,
    LeaseOrphaned,
    LeasestoreError,
)
from leasestore.lockspace import Lockspace, LockspaceState
from leasestore.ondisk.areas import lockspace_area_image, resource_area_image
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import Leader, LeaderMagic, decode_leader
from leasestore.paxos import DiskRef, HeldLease
from leasestore.resource import ResourceKey, ResourceService
from leasestore.specs import LockspaceSpec
from leasestore.testing.cluster import Violation
from leasestore.testing.scheduler import Faults, SimTask, SimWorld
from leasestore.testing.simdisk import SimDisk
from leasestore.timeouts import UNPUBLISHED_FIRE_TIMEOUT_S, Timeouts

SPACE = "paxos-space"
DEVICE = "/dev/shared"
GEOMETRIES = ((512, 1 << 20), (4096, 1 << 20), (4096, 2 << 20), (4096, 8 << 20))
GEOMETRY_WEIGHTS = (4, 3, 2, 1)
"""4096/8M reads 8 MiB per renewal: the dearest to simulate, so drawn least often."""


@dataclass(frozen=True)
class ClusterConfig:
    hosts: int
    resources: int
    host_ids: tuple[int, ...]
    io_timeouts_s: tuple[int, ...]
    """Each host's io_timeout (what it joins with); peers judge it by what it writes."""
    format_io_timeout_s: int
    """The io_timeout written by the format, which the first join's wait follows."""
    fire_timeouts_s: tuple[float, ...]
    """Each host's watchdog_fire_timeout."""
    sector_size: int = 512
    align_size: int = 1 << 20
    processes: int = 1
    """Lease-holding processes per host."""
    shared_fraction: float = 0.2
    clock_drifts: tuple[float, ...] = ()
    """Each host's clock drift (0.001: its clock gains 1 ms a second); none if empty."""
    num_hosts: tuple[int, ...] = ()
    """Each resource's num_hosts at format (0: every slot); a host above it may not acquire."""
    long_hold_fraction: float = 0.2
    """Holds that outlast host_dead several times over (a VM runs for days)."""
    request_fraction: float = 0.1
    """How often a process refused a lease asks its holder for it (request, force mode 1/2)."""
    convert_fraction: float = 0.0
    """How often a holder converts its lease to the other mode halfway through its hold."""
    persistent_fraction: float = 0.0
    """How often a lease is acquired persistent (an exit leaves it as an orphan, which later
    processes adopt with the orphan flag, or the operator releases)."""
    ignores_sigterm: float = 0.3
    ignores_sigkill: float = 0.03
    """How often a process ignores SIGTERM, or even SIGKILL (stuck in the kernel)."""
    silent_hosts: tuple[bool, ...] = ()
    """Hosts that publish no fire timeout in their delta leader, as sanlock hosts do (their
    fire timeouts are sanlock's 60 s); none if empty."""
    watchdog_counts_in_suspend: bool = True
    """A watchdog outside the suspended OS (a BMC's) runs on; False: it stops while the host is
    suspended, as a software or chipset watchdog does, the gap the README names."""
    lease_disks: int = 1
    """Disks per resource lease. With more than one, the leases have disks of their own
    (the lockspace stays on its disk), and the chaos takes disks down one at a time."""

    @classmethod
    def fixed(cls, hosts: int, resources: int, io_timeout_s: int = 10,
              watchdog_fire_timeout_s: float = 60) -> ClusterConfig:
        """One io_timeout everywhere, host_ids 1..hosts, 512/1M: the classic shape."""
        return cls(hosts, resources, tuple(range(1, hosts + 1)), (io_timeout_s,) * hosts,
                   io_timeout_s, (watchdog_fire_timeout_s,) * hosts)

    @classmethod
    def draw(cls, rng: random.Random, hosts: int | None = None,
             resources: int | None = None, lease_disks: int | None = 1) -> ClusterConfig:
        """A configuration as users bring them: sizes and timeouts vary per seed and host
        (and disks per lease, 1-4, if `lease_disks` is None)."""
        n = hosts if hosts is not None else rng.randint(2, 8)
        sector_size, align_size = rng.choices(GEOMETRIES, GEOMETRY_WEIGHTS)[0]
        max_hosts = Geometry(sector_size, align_size).max_hosts
        top = rng.choice((n, 16, max_hosts))
        host_ids = tuple(sorted(rng.sample(range(1, max(top, n) + 1), n)))
        base = rng.choice((1, 2, 5, 10))
        io_timeouts = tuple(base if rng.random() < 0.6 else rng.randint(1, 10) for _ in range(n))
        format_io = rng.choice((base, 10, rng.randint(1, 10)))
        fire = float(rng.choice((60, 60, 30, 10, 5)))
        fires = tuple(fire if rng.random() < 0.7 else float(rng.choice((60, 30, 10, 5)))
                      for _ in range(n))
        resources_n = resources if resources is not None else rng.randint(1, 6)
        silent = tuple(rng.random() < 0.3 for _ in range(n)) if rng.random() < 0.2 else ()
        if any(silent):  # as sanlock hosts: their watchdogs fire 60 s after the last pet
            fires = tuple(UNPUBLISHED_FIRE_TIMEOUT_S if quiet else fire
                          for quiet, fire in zip(silent, fires, strict=True))
        return cls(n, resources_n, host_ids,
                   io_timeouts, format_io, fires, sector_size, align_size,
                   processes=rng.randint(1, 3), shared_fraction=rng.choice((0.0, 0.2, 0.5)),
                   clock_drifts=tuple(rng.uniform(-drift, drift) for _ in range(n))
                   if (drift := rng.choice((0.0, 1e-4, 1e-3))) else (),
                   num_hosts=tuple(rng.choice((0, rng.choice(host_ids)))
                                   for _ in range(resources_n))
                   if rng.random() < 0.3 else (),
                   silent_hosts=silent if any(silent) else (),
                   persistent_fraction=rng.choice((0.0, 0.0, 0.3)),
                   convert_fraction=rng.choice((0.0, 0.0, 0.3)),
                   lease_disks=lease_disks if lease_disks is not None
                   else rng.choice((2, 3, 3, 4)))

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.sector_size, self.align_size)

    def timeouts(self, host: int) -> Timeouts:
        return Timeouts(self.io_timeouts_s[host], self.fire_timeouts_s[host])

    @property
    def longest(self) -> Timeouts:
        """The longest io_timeout and fire timeout of any host (the slowest to judge dead)."""
        return Timeouts(max(self.io_timeouts_s), max(self.fire_timeouts_s))

    def describe(self) -> str:
        return (f"{self.hosts} hosts (ids {list(self.host_ids)}, io_timeouts "
                f"{list(self.io_timeouts_s)}, formatted with {self.format_io_timeout_s}), "
                f"{self.resources} resources, {self.processes} processes/host, "
                f"{self.sector_size}/{self.align_size >> 20}M, "
                f"fire timeouts {list(self.fire_timeouts_s)} s"
                + (f", sanlock-like (unpublished fire timeout) hosts "
                   f"{[i for i, quiet in enumerate(self.silent_hosts) if quiet]}"
                   if any(self.silent_hosts) else "")
                + (f", {self.lease_disks} disks per lease" if self.lease_disks > 1 else ""))


@dataclass
class Holding:
    resource: int
    lver: int
    shared: bool


@dataclass
class SimProcess:
    """A process the daemon holds leases for. It keeps running (and using its leases) whatever
    the daemon does, until it exits or is killed."""

    pid: int
    ignores_sigterm: bool
    ignores_sigkill: bool
    alive: bool = True
    holding: Holding | None = None


class SimHolderRecord:
    """The run dir's holder record: outlives a daemon, not a reset."""

    def __init__(self) -> None:
        self.holders: list[HolderProcess] = []

    def read(self) -> list[HolderProcess]:
        return list(self.holders)

    def write(self, holders: Iterable[HolderProcess]) -> None:
        self.holders = sorted(holders)


@dataclass
class DaemonHost:
    index: int
    host_id: int
    timeouts: Timeouts
    clock_offset_s: float
    clock_rate: float = 1.0
    boot: int = 0
    lockspace: Lockspace | None = None
    resources: ResourceService | None = None
    supervisor: Supervisor | None = None
    tasks: list[SimTask] = field(default_factory=list)
    """The daemon's tasks of this boot (all stop at a crash or reset; all pause in a stall)."""
    processes: dict[int, SimProcess] = field(default_factory=dict)
    watchdog_deadline_s: float | None = None
    """World time at which the watchdog resets the host unless petted (None: not armed)."""
    watchdog_check_at: float | None = None
    acquisitions: int = 0
    next_pid: int = 100
    incarnation: int = 0
    """Part of the host name: changed at some reboots."""
    stalled_until_s: float = 0.0
    suspended_until_s: float = 0.0
    """World time a suspend ends: until then nothing on the machine runs, its processes too."""
    daemon_running: bool = False
    membership_task: SimTask | None = None
    """The current lockspace's `membership()` task (cancelled to give the host_id up)."""
    removing: bool = False
    record: SimHolderRecord = field(default_factory=SimHolderRecord)

    @property
    def name(self) -> str:
        return f"h{self.host_id}.{self.boot}"

    @property
    def machine(self) -> str:
        return f"m{self.index}"

    @property
    def generation(self) -> int:
        return 0 if self.lockspace is None else self.lockspace.generation


@dataclass
class ResourceLog:
    max_lver: int = 0
    max_lver_owner: tuple[int, int] = (-1, 0)
    """(host index, generation) granted max_lver: only it may be granted that lver again (a
    re-grant to the same owner after its leader write was rolled back, as sanlock's)."""
    acquisitions: int = 0
    history: list[tuple[float, str]] = field(default_factory=list)


class _SimProcesses:
    """A host's processes as a starting daemon sees them: SIGKILL reaches them as the
    supervisor's does (one stuck in the kernel ignores it)."""

    def __init__(self, cluster: PaxosCluster, host: DaemonHost) -> None:
        self._cluster, self._host = cluster, host

    def alive(self, holder: HolderProcess) -> bool:
        process = self._host.processes.get(holder.pid)
        return process is not None and process.alive

    def kill(self, holder: HolderProcess) -> None:
        self._cluster._signal(self._host, holder.pid, graceful=False)


class PaxosCluster:
    def __init__(self, seed: int, config: ClusterConfig, *, faults: Faults | None = None) -> None:
        self.config = config
        self.geometry = config.geometry
        self.resources = config.resources
        size = self.geometry.align_size * (1 + config.resources)
        self.disk = SimDisk(size, self.geometry.sector_size, DEVICE)
        self.disk.land(0, lockspace_area_image(SPACE, self.geometry, config.format_io_timeout_s))
        self.lease_disks = ([self.disk] if config.lease_disks == 1 else
                            [SimDisk(size, self.geometry.sector_size, f"/dev/lease{i}")
                             for i in range(config.lease_disks)])
        for disk in self.lease_disks:
            for r in range(config.resources):
                disk.land(self._offset(r), resource_area_image(
                    SPACE, f"res{r}", self.geometry,
                    config.num_hosts[r] if config.num_hosts else 0))
        self.world = SimWorld(seed, {d.name: d for d in (self.disk, *self.lease_disks)}, faults)
        rng = self.world.rng
        self.hosts = [DaemonHost(i, config.host_ids[i], config.timeouts(i),
                                 rng.uniform(100.0, 100000.0),
                                 1.0 + (config.clock_drifts[i] if config.clock_drifts else 0.0))
                      for i in range(config.hosts)]
        self.logs = [ResourceLog() for _ in range(config.resources)]
        self.violations: list[Violation] = []
        self.liveness_failures: list[Violation] = []
        self.orphans: list[Violation] = []
        self.counts: dict[str, int] = {}
        self._reported: set[str] = set()
        self.corrupted: set[int] = set()
        """Resources with a sector corrupted by the fault phase (left out of liveness checks)."""
        self._acquired_at_settle: list[int] | None = None
        self._granted_at_settle: list[int] = []
        """Each resource's grants when the fault-free phase began."""
        self._winding_down = False

    def serves(self, resource: int, host: DaemonHost) -> bool:
        """Whether `host` may acquire `resource` at all (its host_id within num_hosts)."""
        limit = self.config.num_hosts[resource] if self.config.num_hosts else 0
        return limit == 0 or host.host_id <= limit

    def _usable(self, resource: int) -> bool:
        """Some host may acquire it, and no fault has damaged it."""
        return (resource not in self.corrupted
                and any(self.serves(resource, h) for h in self.hosts))

    def _offset(self, resource: int) -> int:
        return self.geometry.align_size * (1 + resource)

    def _key(self, resource: int) -> ResourceKey:
        return (SPACE, f"res{resource}", self.lease_disks[0].name, self._offset(resource))

    def _further_disks(self) -> dict[ResourceKey, tuple[DiskRef, ...]]:
        """What a daemon is told of the leases' disks after the first."""
        return {self._key(r): tuple((d.name, self._offset(r)) for d in self.lease_disks[1:])
                for r in range(self.resources) if len(self.lease_disks) > 1}

    def _count(self, what: str) -> None:
        self._count_many(what, 1)

    def _count_many(self, what: str, n: int) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    # -- checkers ------------------------------------------------------------------------------

    def holdings(self) -> Iterator[tuple[DaemonHost, SimProcess, Holding]]:
        for host in self.hosts:
            for process in host.processes.values():
                if process.alive and process.holding is not None:
                    yield host, process, process.holding

    def check(self) -> None:
        """Run at every grant: a holding begins only then, and ends only when its process
        lets go or dies, so no violation can begin between grants."""
        by_resource: dict[int, list[tuple[DaemonHost, SimProcess, Holding]]] = {}
        for entry in self.holdings():
            by_resource.setdefault(entry[2].resource, []).append(entry)
        for resource, holders in by_resource.items():
            exclusive = [h for h in holders if not h[2].shared]
            if len(exclusive) > 1 or (exclusive and len(holders) > 1):
                desc = ", ".join(f"{h.name} pid {p.pid} ({'sh' if x.shared else 'ex'} "
                                 f"lver {x.lver})" for h, p, x in holders)
                self._violate(f"res{resource} held by live processes {desc}")

    def _violate(self, message: str) -> None:
        """Record a violation once (the checker sees a lasting one after every step)."""
        if message not in self._reported:
            self._reported.add(message)
            self.violations.append(Violation(self.world.seed, self.world.now, message))

    def _granted(self, host: DaemonHost, process: SimProcess, resource: int,
                 held: HeldLease) -> None:
        log = self.logs[resource]
        if not held.shared:
            owner = (host.index, host.generation)
            again = held.lver == log.max_lver and owner == log.max_lver_owner
            if held.lver <= log.max_lver and not again:
                self._violate(f"res{resource}: lver {held.lver} granted after {log.max_lver}")
            log.max_lver, log.max_lver_owner = max(log.max_lver, held.lver), owner
        log.acquisitions += 1
        host.acquisitions += 1
        process.holding = Holding(resource, held.lver, held.shared)
        log.history.append((self.world.now, f"{host.name} pid {process.pid} "
                                            f"{'sh' if held.shared else 'ex'} lver {held.lver}"))
        self.check()

    def _find_orphans(self) -> None:
        """Once every process has let go: each resource must be free to acquire from a live
        host. One that is not (owned on disk by a live host that does not hold it, or blocked
        by a stale claim) is an orphan: nobody would ever be granted it again."""
        probes: list[tuple[int, DaemonHost, SimTask]] = []
        live = [h for h in self.hosts if h.lockspace is not None and h.resources is not None
                and h.lockspace.state == LockspaceState.HELD]
        if not live:
            return
        for r in range(self.resources):
            served = [h for h in live if self.serves(r, h)]
            if r in self.corrupted or not served:
                continue
            owner = self._leader(r).owner_id  # the owner itself might take its own lease back
            host = next((h for h in served if h.host_id != owner), served[r % len(served)])
            assert host.lockspace is not None and host.resources is not None
            task = self.world.spawn(f"{host.name}:probe-res{r}",
                                    self._probe(host.lockspace, host.resources, r),
                                    host.clock_offset_s, host.machine, host.clock_rate)
            probes.append((r, host, task))
        longest = self.config.longest
        self.world.run_until(self.world.now + 4 * longest.host_dead_s)
        for r, host, task in probes:
            if task.error is not None or not task.done:
                leader = self._leader(r)
                self.orphans.append(Violation(
                    self.world.seed, self.world.now,
                    f"res{r}: no process holds it and {host.name} cannot acquire it "
                    f"({task.error or 'still trying'}); leader: owner {leader.owner_id} "
                    f"generation {leader.owner_generation} lver {leader.lver} timestamp "
                    f"{leader.timestamp}"))

    def _leader(self, resource: int) -> Leader:
        """The resource's leader as most of its disks hold it (for reports)."""
        copies: list[Leader] = []
        for disk in self.lease_disks:
            with contextlib.suppress(CorruptRecord):
                copies.append(decode_leader(disk.read(self._offset(resource),
                                                      self.geometry.sector_size),
                                            (LeaderMagic.PAXOS,)))
        if not copies:
            raise CorruptRecord("paxos leader", f"res{resource}: no disk holds a valid one")
        return Counter(copies).most_common(1)[0][0]

    def _probe(self, lockspace: Lockspace, service: ResourceService,
               resource: int) -> Algorithm[None]:
        key = self._key(resource)
        yield from service.acquiring(lockspace, key, 1)
        yield from service.releasing(lockspace, key, 1)

    # -- the daemon of one host ----------------------------------------------------------------

    def _spawn(self, host: DaemonHost, name: str, algorithm: Algorithm[object]) -> None:
        self._spawn_task(host, name, algorithm)

    def _spawn_task(self, host: DaemonHost, name: str, algorithm: Algorithm[object]) -> SimTask:
        task = self.world.spawn(f"{host.name}:{name}", algorithm, host.clock_offset_s,
                                host.machine, host.clock_rate)
        host.tasks.append(task)
        if host.stalled_until_s > self.world.now:  # started by a stalled daemon: stalled too
            self.world.pause(task, host.stalled_until_s - self.world.now)
        return task

    def _host_clock(self, host: DaemonHost) -> float:
        return self.world.now * host.clock_rate + host.clock_offset_s

    def boot(self, host: DaemonHost) -> None:
        """Start the host afresh, as after a reboot: an empty run dir, no processes."""
        host.boot += 1
        host.tasks, host.processes = [], {}
        host.record = SimHolderRecord()
        host.watchdog_deadline_s = host.watchdog_check_at = None  # a new boot: disarmed
        self._spawn(host, "start", self._start_daemon(host))

    def _start_daemon(self, host: DaemonHost) -> Algorithm[None]:
        """A daemon process starting: first the shipped rule for the holders an earlier daemon
        left (kill them; refuse to start while any lives), then the lockspace and the monitor
        (whose first pet opens the watchdog), then the processes it serves."""
        try:
            killed = yield from holder_rules.ending_previous_holders(
                host.record, _SimProcesses(self, host), holder_rules.EXIT_WAIT_S)
        except holder_rules.PreviousHoldersAlive:
            self._count("restart_refused")  # systemd starts it again a little later
            boot = host.boot
            self.world.at(self.world.now + 5.0, lambda: self._restart(host, boot))
            return
        self._count_many("restart_killed_holder", len(killed))
        service = ResourceService(
            spawn=lambda name, algorithm: self._spawn(host, name, algorithm),
            on_holders_changed=lambda: self._record_holders(host, service))
        service.further_disks.update(self._further_disks())
        host.resources = service
        host.supervisor = Supervisor(lambda pid, graceful: self._signal(host, pid, graceful))
        host.daemon_running = True
        self._add_lockspace(host)
        self._spawn(host, "monitor", self._monitor(host))
        for _ in range(self.config.processes - len(self._live(host))):
            self._start_process(host)

    def _record_holders(self, host: DaemonHost, service: ResourceService) -> None:
        """As the daemon's: the service's holders, as processes (pid, start), in the run dir."""
        pids = service.recorded_pids()
        host.record.write(HolderProcess(p.pid, p.pid) for p in host.processes.values()
                          if p.pid in pids)

    def kill_daemon(self, host: DaemonHost) -> None:
        """SIGKILL of the daemon alone: its holders run on with their leases, its watchdog
        counts down from the last pet; it is started again (at once, or a little later)."""
        self._count("daemon_kill")
        self._stop_daemon(host)
        host.daemon_running, host.lockspace, host.stalled_until_s = False, None, 0.0
        for process in self._live(host):
            if process.holding is None:  # its connection closed: it leaves
                process.alive = False
        boot = host.boot
        delay_s = self.world.rng.uniform(0, 2 * host.timeouts.io_timeout_s)
        self.world.at(self.world.now + delay_s, lambda: self._restart(host, boot))

    def remove_lockspace(self, host: DaemonHost) -> None:
        """rem_lockspace on a host whose lockspace is held (and not being removed already)."""
        if (host.daemon_running and not host.removing and host.lockspace is not None
                and host.lockspace.state == LockspaceState.HELD):
            self._count("rem_lockspace")
            self._spawn(host, "rem_lockspace", self._remove_lockspace(host))

    def _restart(self, host: DaemonHost, boot: int) -> None:
        if host.boot == boot and not host.daemon_running:
            self._count("daemon_restart")
            self._spawn(host, "start", self._start_daemon(host))

    def _silent(self, host: DaemonHost) -> bool:
        return bool(self.config.silent_hosts) and self.config.silent_hosts[host.index]

    def _live(self, host: DaemonHost) -> list[SimProcess]:
        return [p for p in host.processes.values() if p.alive]

    def _add_lockspace(self, host: DaemonHost) -> None:
        spec = LockspaceSpec(SPACE, host.host_id, DEVICE, 0)
        host.lockspace = Lockspace(spec, f"host{host.host_id}-{host.incarnation}", host.timeouts,
                                   now=lambda: self._host_clock(host),
                                   on_request=lambda _: self._spawn(host, "examine",
                                                                    self._examine(host)),
                                   publish_fire_timeout=not self._silent(host))
        assert host.resources is not None
        host.resources.gate.reopen(SPACE)  # as add_lockspace does after a removal
        host.membership_task = self._spawn_task(host, "lockspace", host.lockspace.membership())

    def _remove_lockspace(self, host: DaemonHost) -> Algorithm[None]:
        """The operator's rem_lockspace, through removal.py while the processes go on asking
        for leases: the host_id is given up only once nothing is held or in flight."""
        service, task = host.resources, host.membership_task
        assert service is not None and task is not None
        host.removing = True
        try:
            yield from removal.shutting_out(service, SPACE)
            wait_s = holder_rules.EXIT_WAIT_S + 4 * host.timeouts.io_timeout_s
            assert host.lockspace is not None
            if (yield from removal.ending_holders(
                    service, host.lockspace, lambda: self._holders_in(host),
                    lambda pid: self._signal(host, pid, graceful=False), wait_s)):
                self.world.cancel(task)  # the membership loop releases the host_id
            else:
                self._count("removal_kept_host_lease")
        finally:
            host.removing = False

    def _examine(self, host: DaemonHost) -> Algorithm[None]:
        """The daemon's answer to a request flag: the shipped `examining` finds the leases
        asked for; their holders are stopped as the daemon stops them."""
        service = host.resources
        assert service is not None
        for held, record in (yield from service.examining(SPACE)):
            self._count("request_honoured")
            for pid in sorted(held.pids):
                self._signal(host, pid, graceful=record.force_mode == 2)

    def _ask_for(self, host: DaemonHost, lockspace: Lockspace, key: ResourceKey
                 ) -> Algorithm[None]:
        """A process denied a lease asks its holder to give it up, as `request` does through
        the daemon: write the request record, then flag the owner (or examine, if it is us)."""
        service = host.resources
        assert service is not None
        force_mode = self.world.rng.choice((1, 2))
        with contextlib.suppress(LeasestoreError):
            owner = yield from service.requesting(lockspace, key, None, force_mode)
            self._count("request")
            if owner == host.host_id:
                self._spawn(host, "examine", self._examine(host))
            elif owner:
                lockspace.flag_host(owner)

    def _monitor(self, host: DaemonHost) -> Algorithm[None]:
        """The daemon's monitor thread: the shipped Supervisor decides; pets arm the watchdog.
        Then the operator's part: a failed lockspace with no holder left is added again."""
        interval_s = monitor_interval_s(host.timeouts.watchdog_fire_timeout_s)
        failed_since: float | None = None
        while True:
            now_s = yield Now()
            lockspace, supervisor = host.lockspace, host.supervisor
            assert lockspace is not None and supervisor is not None
            if supervisor.tick(now_s, [lockspace], lambda name: self._holders_in(host)):
                self._pet(host)
            self._release_orphans_now_and_then(host, lockspace)
            if lockspace.state in (LockspaceState.FAILED, LockspaceState.RELEASED):
                failed_since = now_s if failed_since is None else failed_since
                if (not self._holders_in(host) and host.resources is not None
                        and not host.resources.busy_in(SPACE)
                        and now_s - failed_since > 2 * host.timeouts.io_timeout_s):
                    self._count("lockspace_readded")
                    failed_since = None
                    self._add_lockspace(host)
            yield Sleep(interval_s)

    def _release_orphans_now_and_then(self, host: DaemonHost, lockspace: Lockspace) -> None:
        """The operator's REL_ORPHAN: now and then during the faults, and always once they
        have stopped (orphans nobody adopts would keep their leases from every other host)."""
        service = host.resources
        assert service is not None
        settling = self._acquired_at_settle is not None
        if not settling and self.world.rng.random() >= 0.01:
            return
        for orphan in service.orphans(SPACE):
            self._count("orphan_released")
            self._spawn(host, "release-orphan", self._release_orphan(service, lockspace,
                                                                     orphan.key))

    @staticmethod
    def _release_orphan(service: ResourceService, lockspace: Lockspace,
                        key: ResourceKey) -> Algorithm[None]:
        with contextlib.suppress(LeasestoreError):  # a failed release is retried meanwhile
            yield from service.releasing_orphan(lockspace, key)

    def _holders_in(self, host: DaemonHost) -> list[int]:
        """As the daemon's: registered (live) processes with leases in the lockspace."""
        service = host.resources
        assert service is not None
        holder_pids = service.holder_pids(SPACE)
        return [p.pid for p in host.processes.values() if p.alive and p.pid in holder_pids]

    def _pet(self, host: DaemonHost) -> None:
        host.watchdog_deadline_s = self.world.now + host.timeouts.watchdog_fire_timeout_s
        if host.watchdog_check_at is None:
            self._watch(host, host.boot, host.watchdog_deadline_s)

    def _watch(self, host: DaemonHost, boot: int, when: float) -> None:
        host.watchdog_check_at = when

        def check() -> None:
            if host.boot != boot:
                return
            host.watchdog_check_at = None
            deadline = host.watchdog_deadline_s
            if deadline is None:
                return
            if self.world.now >= deadline:
                self._count("watchdog_reset")
                self._reset(host)
            else:
                self._watch(host, boot, deadline)

        self.world.at(when, check)

    # -- processes -----------------------------------------------------------------------------

    def _start_process(self, host: DaemonHost) -> None:
        rng = self.world.rng
        host.next_pid += 1
        process = SimProcess(host.next_pid,
                             ignores_sigterm=rng.random() < self.config.ignores_sigterm,
                             ignores_sigkill=rng.random() < self.config.ignores_sigkill)
        host.processes[process.pid] = process
        self._spawn(host, f"pid{process.pid}", self._worker(host, process))

    def _signal(self, host: DaemonHost, pid: int, graceful: bool) -> None:
        """The supervisor's signal reaches the process: it dies soon after, unless it ignores
        it (SIGTERM by choice; SIGKILL when stuck in the kernel)."""
        process = host.processes.get(pid)
        if process is None or not process.alive:
            return
        self._count("sigterm" if graceful else "sigkill")
        if (process.ignores_sigterm if graceful else process.ignores_sigkill):
            return
        boot = host.boot
        self.world.at(self.world.now + self.world.rng.uniform(0, 0.5),
                      lambda: self._exit(host, process, boot))

    def _exit(self, host: DaemonHost, process: SimProcess, boot: int) -> None:
        """The process is gone: its connection closes and the daemon releases what it held."""
        if host.boot != boot or not process.alive:
            return
        if self._suspended(host):  # a frozen process exits only once the machine resumes
            self.world.at(host.suspended_until_s, lambda: self._exit(host, process, boot))
            return
        process.alive, process.holding = False, None
        service = host.resources
        if not host.daemon_running or service is None:
            return  # no daemon to release for it; the next one starts new processes
        keys = sorted(h.key for h in service.held_by(process.pid))
        for key in keys:
            self._spawn(host, f"exit{process.pid}",
                        service.releasing_after_exit(host.lockspace, key, process.pid))
        if not self._winding_down:
            self._start_process(host)

    def _worker(self, host: DaemonHost, process: SimProcess) -> Algorithm[None]:
        """The process's requests, served by the daemon's connection thread: acquire a random
        resource, hold it, release it."""
        rng = self.world.rng
        io_s = host.timeouts.io_timeout_s
        service = host.resources
        assert service is not None
        while process.alive:
            lockspace = host.lockspace
            if (lockspace is None or lockspace.state != LockspaceState.HELD
                    or self._satisfied(host)):
                yield Sleep(io_s / 4)
                continue
            resource = rng.randrange(self.resources)
            key = self._key(resource)
            shared = rng.random() < self.config.shared_fraction
            settling = self._acquired_at_settle is not None
            persistent = not settling and rng.random() < self.config.persistent_fraction
            adopt = settling or rng.random() < 0.5
            orphan = any(h.key == key for h in service.orphans(SPACE))
            try:
                held = yield from service.acquiring(lockspace, key, process.pid, shared=shared,
                                                    persistent=persistent, adopt=adopt)
            except LeaseOrphaned:
                self._count("orphan_refused")
                yield Sleep(rng.uniform(0.5, 3 * io_s))
                continue
            except (AcquireIdLive, AcquireOwned):
                if rng.random() < self.config.request_fraction:
                    yield from self._ask_for(host, lockspace, key)
                yield Sleep(rng.uniform(0.5, 3 * io_s))
                continue
            except LeasestoreError:
                yield Sleep(rng.uniform(0.5, 3 * io_s))
                continue
            if not process.alive:  # it died while the daemon acquired for it
                yield from service.releasing_after_exit(lockspace, key, process.pid)
                return
            if orphan and held.pids == {process.pid}:
                self._count("orphan_adopted")
            self._granted(host, process, resource, held.lease)
            long_hold = rng.random() < self.config.long_hold_fraction
            hold_s = (rng.uniform(2, 6) * host.timeouts.host_dead_s if long_hold
                      else rng.expovariate(1 / (4 * io_s)))
            if rng.random() < self.config.convert_fraction:
                yield from self._hold(process, hold_s / 2, io_s)
                yield from self._convert(host, process, lockspace, key, resource)
                hold_s /= 2
            yield from self._hold(process, hold_s, io_s)
            if not process.alive:
                return  # its exit released the lease
            process.holding = None
            with contextlib.suppress(LeasestoreError):
                yield from service.releasing(lockspace, key, process.pid)
            yield Sleep(rng.uniform(0, 2 * io_s))

    def _convert(self, host: DaemonHost, process: SimProcess, lockspace: Lockspace,
                 key: ResourceKey, resource: int) -> Algorithm[None]:
        """The holder asks for the other mode. Going shared, it stops using the lease
        exclusively when it asks (as a releasing holder lets go when it asks: other hosts may
        join before the answer comes), and is exclusive again if the convert fails; going
        exclusive, it is exclusive once the convert has succeeded."""
        service, holding = host.resources, process.holding
        if not process.alive or holding is None:
            return
        assert service is not None
        if not holding.shared:
            process.holding = Holding(resource, holding.lver, True)
        try:
            held = yield from service.converting(lockspace, key, process.pid,
                                                 not holding.shared)
        except LeasestoreError:
            self._count("convert_failed")
            if process.alive and process.holding is not None:
                process.holding = holding  # unchanged on disk: the leader was never freed
                self.check()
            return
        if not process.alive:
            return
        self._count("convert_to_shared" if held.lease.shared else "convert_to_exclusive")
        if held.lease.shared:
            process.holding = Holding(resource, held.lease.lver, True)
            self.check()
        else:
            self._granted(host, process, resource, held.lease)

    def _hold(self, process: SimProcess, seconds: float, io_s: float) -> Algorithm[None]:
        """Hold a lease that long; in the fault-free phase, no longer than 4 × io_timeout, so
        that a random long hold cannot outlast the window in which waiting hosts must be
        granted (a workload choice, not a protocol rule)."""
        cap_s = 4 * io_s
        held_s = 0.0
        while held_s < seconds and process.alive:
            if self._acquired_at_settle is not None and held_s >= cap_s:
                return
            step = min(seconds - held_s, io_s)
            yield Sleep(step)
            held_s += step

    def _satisfied(self, host: DaemonHost) -> bool:
        """In the fault-free phase a host that has been granted a lease stops contending once
        every resource has been granted too, so that every other waiting host must be granted
        one, and no resource can stay dead unnoticed."""
        if self._winding_down:
            return True
        if self._acquired_at_settle is None:
            return False
        every_resource = all(log.acquisitions > before for r, (log, before)
                             in enumerate(zip(self.logs, self._granted_at_settle, strict=True))
                             if self._usable(r))
        return host.acquisitions > self._acquired_at_settle[host.index] and every_resource

    # -- faults --------------------------------------------------------------------------------

    def _stop_daemon(self, host: DaemonHost) -> None:
        for task in host.tasks:
            self.world.crash(task)
        host.tasks = []

    def _reset(self, host: DaemonHost) -> None:
        """The machine goes down (crash or watchdog): every process with it, no release I/O."""
        self._stop_daemon(host)
        host.daemon_running = False
        for process in host.processes.values():
            process.alive, process.holding = False, None
        host.boot += 1  # stale events of the old boot do nothing
        if self.world.rng.random() < 0.5:  # a new host name forgoes sanlock's fast reacquire
            host.incarnation += 1
        host.watchdog_deadline_s = None
        host.lockspace = None
        host.stalled_until_s = host.suspended_until_s = 0.0
        boot = host.boot
        self.world.at(self.world.now + self.world.rng.uniform(1, host.timeouts.host_dead_s),
                      lambda: self._reboot(host, boot))

    def _reboot(self, host: DaemonHost, boot: int) -> None:
        if host.boot == boot:
            self.boot(host)

    def _stall(self, host: DaemonHost, seconds: float) -> None:
        """The daemon stops running (its tasks freeze); its processes and its watchdog do not."""
        host.stalled_until_s = max(host.stalled_until_s, self.world.now + seconds)
        for task in host.tasks:
            self.world.pause(task, seconds)

    def suspend(self, host: DaemonHost, seconds: float) -> None:
        """The machine is suspended: its daemon's tasks and its processes freeze; lease time
        (the daemon's clock counts suspend) runs on, and so does its watchdog unless the
        configuration says it stops while suspended."""
        self._count("suspend")
        self._stall(host, seconds)
        host.suspended_until_s = max(host.suspended_until_s, self.world.now + seconds)
        if not self.config.watchdog_counts_in_suspend and host.watchdog_deadline_s is not None:
            host.watchdog_deadline_s += seconds

    def _suspended(self, host: DaemonHost) -> bool:
        return self.world.now < host.suspended_until_s

    def _chaos(self, end_s: float, gap_s: float) -> None:
        world, rng = self.world, self.world.rng
        if world.now >= end_s:
            return
        host = rng.choice(self.hosts)
        actions = ["crash", "stall", "stall", "outage", "outage", "kill_process",
                   "corrupt", "kill_daemon", "rem_lockspace", "suspend"]
        if len(self.lease_disks) > 1:
            actions += ["disk_outage", "disk_outage", "disk_path_outage", "disk_path_outage"]
        action = rng.choice(actions)
        if action == "corrupt":
            self._corrupt_a_resource_sector()
        elif action == "disk_outage":
            self._count("disk_outage")
            disk = rng.choice(self.lease_disks)
            seconds = rng.uniform(0, 4 * host.timeouts.host_dead_s)
            world.disk_outages[disk.name] = (world.now + seconds, rng.random() < 0.5)
        elif action == "disk_path_outage":
            self._count("disk_path_outage")
            disk = rng.choice(self.lease_disks)
            seconds = rng.uniform(0, 4 * host.timeouts.host_dead_s)
            world.path_outages[(host.machine, disk.name)] = (world.now + seconds,
                                                             rng.random() < 0.5)
        elif action == "outage":
            self._count("storage_outage")
            seconds = rng.uniform(0, 2 * host.timeouts.host_dead_s)
            world.outages[host.machine] = (world.now + seconds, rng.random() < 0.5)
        elif host.lockspace is None:
            pass  # down, rebooting, or its daemon is starting again
        elif action == "crash":
            self._count("machine_crash")
            self._reset(host)
        elif self._suspended(host):
            pass  # nobody can run a command on it, and its processes cannot exit
        elif action == "suspend":
            self.suspend(host, rng.uniform(0, 2 * host.timeouts.host_dead_s))
        elif action == "stall":
            self._count("daemon_stall")
            self._stall(host, rng.uniform(0, 2 * host.timeouts.host_dead_s))
        elif action == "kill_daemon":
            self.kill_daemon(host)
        elif action == "rem_lockspace":
            self.remove_lockspace(host)
        else:
            live = [p for p in host.processes.values() if p.alive]
            if live:
                self._count("process_exit")
                process = rng.choice(live)
                self._exit(host, process, host.boot)
        world.at(world.now + rng.expovariate(1 / gap_s), lambda: self._chaos(end_s, gap_s))

    def _corrupt_a_resource_sector(self) -> None:
        """Flip a checksummed byte of one resource's leader or of one host's dblock in it (a
        media error), on one of its disks: the resource must never look free for it. On one
        or two disks it may stay unusable, and is then left out of the liveness and orphan
        checks; with three or four the other disks make a majority, so it must not. At most
        one resource per run."""
        rng = self.world.rng
        if self.counts.get("corrupt_sector") or (self.resources == 1 and rng.random() < 0.5):
            return
        resource = rng.randrange(self.resources)
        if rng.random() < 0.5:
            at, span = self._offset(resource), 168  # the leader's checksummed bytes
        else:
            host_id = rng.choice(self.config.host_ids)
            at, span = self._offset(resource) + self.geometry.dblock_offset(host_id), 48
        disk = self.lease_disks[0] if len(self.lease_disks) == 1 else rng.choice(self.lease_disks)
        disk.corrupt(at, rng.randrange(span))
        if len(self.lease_disks) < 3:
            self.corrupted.add(resource)
        self._count("corrupt_sector")

    # -- a run ---------------------------------------------------------------------------------

    def run(self, chaos_s: float, settle_s: float | None = None) -> list[Violation]:
        """Chaos for chaos_s, then faults off: once the devices' queues of timed-out writes have
        drained, every host must be granted a lease, and every usable resource granted to
        someone, within settle_s. The default leaves room for the longest stall, a reset and a
        join (6 × host_dead) and then for a turn at each resource (6 × host_dead per resource:
        workers pick resources at random, and with one process per host covering every
        resource takes many turns). The phase ends as soon as both hold, so the bound costs
        time only in a failing run."""
        world = self.world
        for host in self.hosts:
            world.at(world.rng.uniform(0, 5), lambda h=host: self.boot(h))  # type: ignore[misc]
        longest = self.config.longest
        gap = longest.host_dead_s / 2
        if chaos_s > 0:
            world.at(world.rng.uniform(0, gap), lambda: self._chaos(chaos_s, gap))
        settle = (settle_s if settle_s is not None
                  else 6 * longest.host_dead_s * (1 + self.resources))
        world.run_until(chaos_s)
        world.faults = Faults.none()
        world.outages.clear()
        world.disk_outages.clear()
        world.path_outages.clear()
        drained_s = max(chaos_s, world.backlog_clears_at())
        end_s = drained_s + settle
        world.run_until(drained_s)
        self._granted_at_settle = [log.acquisitions for log in self.logs]
        self._acquired_at_settle = [host.acquisitions for host in self.hosts]
        while world.now < end_s and not all(self._satisfied(h) for h in self.hosts):
            world.run_until(min(end_s, world.now + longest.io_timeout_s))
        if settle > 0:
            for host, before in zip(self.hosts, self._acquired_at_settle, strict=True):
                usable = any(self._usable(r) and self.serves(r, host)
                             for r in range(self.resources))
                if host.acquisitions == before and usable:
                    self.liveness_failures.append(Violation(
                        world.seed, world.now, f"liveness: {host.name} acquired nothing in "
                        f"the {settle:.0f} s fault-free phase ({self.config.describe()})"))
            for r, (log, before) in enumerate(zip(self.logs, self._granted_at_settle,
                                                  strict=True)):
                if log.acquisitions == before and self._usable(r):
                    self.liveness_failures.append(Violation(
                        world.seed, world.now, f"liveness: res{r} was granted to nobody in "
                        f"the {settle:.0f} s fault-free phase ({self.config.describe()})"))
            self._quiesce()
            self._find_orphans()
        self.violations.extend(Violation(world.seed, world.now, f"a task crashed: {crash}")
                               for crash in world.crashes)
        return self.violations + self.liveness_failures + self.orphans

    def _quiesce(self) -> None:
        """Let every process let go, and the daemons finish what they started, before looking
        for orphans."""
        for host in self.hosts:
            for process in host.processes.values():
                process.ignores_sigterm = process.ignores_sigkill = False
        self._winding_down = True  # nobody acquires any more
        longest = self.config.longest
        self.world.run_until(self.world.now + 12 * longest.host_dead_s)
