"""A simulation campaign: many seeds of `PaxosCluster`, in parallel, with totals.

Each seed runs a fault phase with every fault the simulator has, then a fault-free liveness
phase; a seed's result names its violations, which replay exactly from (seed, shape).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from leasestore.testing.paxos_cluster import PaxosCluster
from leasestore.testing.scheduler import Faults

CAMPAIGN_FAULTS = Faults(io_error=0.03, slow_io=0.03, torn_write=0.2)


@dataclass(frozen=True)
class Shape:
    hosts: int
    resources: int
    chaos_s: float
    settle_s: float | None


@dataclass
class SeedResult:
    seed: int
    violations: list[str]
    steps: int
    acquisitions: int
    faults: dict[str, int]


@dataclass
class Totals:
    seeds: int = 0
    steps: int = 0
    acquisitions: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    failed: list[SeedResult] = field(default_factory=list)

    def add(self, result: SeedResult) -> None:
        self.seeds += 1
        self.steps += result.steps
        self.acquisitions += result.acquisitions
        self.faults.update(result.faults)
        if result.violations:
            self.failed.append(result)

    def summary(self) -> dict[str, object]:
        return {"seeds": self.seeds, "violations": sum(len(r.violations) for r in self.failed),
                "failed_seeds": [r.seed for r in self.failed][:100], "steps": self.steps,
                "acquisitions": self.acquisitions, "faults": dict(sorted(self.faults.items()))}


def run_seed(args: tuple[int, Shape]) -> SeedResult:
    seed, shape = args
    cluster = PaxosCluster(seed, shape.hosts, shape.resources, faults=CAMPAIGN_FAULTS)
    violations = cluster.run(shape.chaos_s, shape.settle_s)
    return SeedResult(seed, [str(v) for v in violations], cluster.world.steps,
                      sum(log.acquisitions for log in cluster.logs),
                      dict(cluster.world.fault_counts))


def run_campaign(seeds: Iterable[int], shape: Shape, jobs: int) -> Iterator[SeedResult]:
    work = ((seed, shape) for seed in seeds)
    if jobs <= 1:
        yield from map(run_seed, work)
        return
    with multiprocessing.Pool(jobs) as pool:
        yield from pool.imap_unordered(run_seed, work, chunksize=16)


