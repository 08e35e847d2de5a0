"""Public test support: a deterministic simulator that runs the shipped code.

`SimWorld` drives effect generators against `SimDisk`s in virtual time with a seeded scheduler
and injected faults; `DeltaCluster` runs many hosts' host-lease loops in it with checkers;
`paxos_cluster.PaxosCluster` runs each host's daemon services (lockspace, resource service,
supervisor) with processes, a watchdog and checkers.
"""

from leasestore.testing.cluster import DeltaCluster, SimHost, Violation
from leasestore.testing.scheduler import Faults, SimTask, SimWorld
from leasestore.testing.simdisk import SimDisk

__all__ = ["DeltaCluster", "Faults", "SimDisk", "SimHost", "SimTask", "SimWorld", "Violation"]
