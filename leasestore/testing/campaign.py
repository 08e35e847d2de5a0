"""A simulation campaign: many seeds of `PaxosCluster`, in parallel, with totals.

Each seed draws its configuration from the seed, runs a fault phase with every fault the
simulator has, then a fault-free liveness phase; a seed's result names its safety violations,
liveness failures and orphaned leases, which replay exactly from (seed, shape).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from leasestore.testing.paxos_cluster import ClusterConfig, PaxosCluster
from leasestore.testing.scheduler import Faults

CAMPAIGN_FAULTS = Faults(io_error=0.03, slow_io=0.03, torn_write=0.2, torn_read=0.1)


@dataclass(frozen=True)
class Shape:
    """What a campaign fixes; the rest of each seed's configuration is drawn from the seed
    (`ClusterConfig.draw`), or fixed at sanlock's defaults with `varied=False`."""

    hosts: int | None
    resources: int | None
    chaos_s: float
    settle_s: float | None
    varied: bool = True
    lease_disks: int | None = 1
    """Disks per resource lease; None: 2-4, drawn per seed."""

    def config(self, seed: int) -> ClusterConfig:
        if not self.varied:
            return dataclasses.replace(ClusterConfig.fixed(self.hosts or 4, self.resources or 2),
                                       lease_disks=self.lease_disks or 3)
        return ClusterConfig.draw(random.Random(f"config-{seed}"), self.hosts, self.resources,
                                  self.lease_disks)


@dataclass
class SeedResult:
    seed: int
    violations: list[str]
    """Safety: double holdings, lver going back."""
    liveness_failures: list[str]
    orphans: list[str]
    steps: int
    acquisitions: int
    faults: dict[str, int]
    config: dict[str, str]
    """The seed's configuration along the dimensions a campaign is counted by."""

    @property
    def failures(self) -> list[str]:
        return self.violations + self.liveness_failures + self.orphans


@dataclass
class Totals:
    seeds: int = 0
    steps: int = 0
    acquisitions: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    configs: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    liveness_failures: int = 0
    orphans: int = 0
    failed: list[SeedResult] = field(default_factory=list)

    def add(self, result: SeedResult) -> None:
        self.seeds += 1
        self.steps += result.steps
        self.acquisitions += result.acquisitions
        self.faults.update(result.faults)
        self.configs.update(f"{k}={v}" for k, v in result.config.items())
        self.violations += len(result.violations)
        self.liveness_failures += len(result.liveness_failures)
        self.orphans += len(result.orphans)
        if result.failures:
            self.failed.append(result)

    def summary(self) -> dict[str, object]:
        return {"seeds": self.seeds, "violations": self.violations,
                "liveness_failures": self.liveness_failures, "orphans": self.orphans,
                "failed_seeds": [r.seed for r in self.failed][:100], "steps": self.steps,
                "acquisitions": self.acquisitions, "faults": dict(sorted(self.faults.items())),
                "configs": dict(sorted(self.configs.items()))}


def config_dimensions(config: ClusterConfig) -> dict[str, str]:
    io = set(config.io_timeouts_s)
    return {
        "geometry": f"{config.sector_size}/{config.align_size >> 20}M",
        "hosts": str(config.hosts),
        "io_timeouts": "equal" if len(io) == 1 else "mixed",
        "format_io_timeout": "as joined" if config.format_io_timeout_s in io else "differs",
        "fire_timeouts": ("equal" if len(set(config.fire_timeouts_s)) == 1 else "mixed"),
        "host_ids": "1..n" if config.host_ids == tuple(range(1, config.hosts + 1))
        else "sparse",
        "processes": str(config.processes),
        "num_hosts": ("below some host_ids" if any(
            0 < limit < max(config.host_ids) for limit in config.num_hosts) else "all slots"),
        "shared": "yes" if config.shared_fraction else "no",
        "persistent": "yes" if config.persistent_fraction else "no",
        "convert": "yes" if config.convert_fraction else "no",
        "sanlock_like_hosts": "some" if any(config.silent_hosts) else "none",
        "lease_disks": str(config.lease_disks),
        "clock_drift": ("none" if not config.clock_drifts
                        else "up to 1e-4" if max(map(abs, config.clock_drifts)) <= 1e-4
                        else "up to 1e-3"),
    }


def run_seed(args: tuple[int, Shape]) -> SeedResult:
    seed, shape = args
    logging.getLogger("leasestore").setLevel(logging.CRITICAL)  # faults are expected here
    config = shape.config(seed)
    cluster = PaxosCluster(seed, config, faults=CAMPAIGN_FAULTS)
    cluster.run(shape.chaos_s, shape.settle_s)
    faults = dict(cluster.world.fault_counts)
    for name, count in cluster.counts.items():
        faults[name] = faults.get(name, 0) + count
    return SeedResult(seed, [str(v) for v in cluster.violations],
                      [str(v) for v in cluster.liveness_failures],
                      [str(v) for v in cluster.orphans], cluster.world.steps,
                      sum(log.acquisitions for log in cluster.logs), faults,
                      config_dimensions(config))


def run_campaign(seeds: Iterable[int], shape: Shape, jobs: int) -> Iterator[SeedResult]:
    work = ((seed, shape) for seed in seeds)
    if jobs <= 1:
        yield from map(run_seed, work)
        return
    with multiprocessing.Pool(jobs) as pool:
        yield from pool.imap_unordered(run_seed, work, chunksize=16)


