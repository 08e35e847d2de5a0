"""One resource lease and its lockspace in a SimWorld, for tests that drive the shipped
algorithms (delta.py, paxos.py) one operation at a time: hosts join the lockspace, an
operation runs to its end in virtual time, each disk's copy of the lease is read back.

The lease is at LEASE_AT of every disk in `lease_disks` (several: a multi-disk lease, the
first disk its primary); the lockspace area is at 0 of `lockspace_disk`, which may be the
first lease disk. Faults are none unless a test sets the world's (`fail_when`, outages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leasestore.delta import DeltaParams, HostLeaseObserver, host_lease_loop
from leasestore.effects import Algorithm
from leasestore.ondisk.areas import lockspace_area_image, resource_area_image
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import Leader, decode_leader
from leasestore.paxos import PaxosParams
from leasestore.testing.scheduler import SimTask, SimWorld
from leasestore.testing.simdisk import SimDisk
from leasestore.timeouts import Timeouts

GEOMETRY = Geometry(512, 1 << 20)
TIMEOUTS = Timeouts(10, 60)
LOCKSPACE, RESOURCE = "px", "res"
LEASE_AT = GEOMETRY.align_size
JOIN_S = 25.0
"""Virtual seconds a join is given (the delta lease's acquire waits, at io_timeout 10)."""


class LeaseWorld:
    def __init__(self, lease_disks: Sequence[str] = ("d",), *, lockspace_disk: str = "d",
                 seed: int = 1) -> None:
        self.lease_disks = tuple(lease_disks)
        self.lockspace_disk = lockspace_disk
        self.disks = {name: SimDisk(2 * GEOMETRY.align_size, GEOMETRY.sector_size, name)
                      for name in dict.fromkeys((lockspace_disk, *self.lease_disks))}
        self.disks[lockspace_disk].land(0, lockspace_area_image(LOCKSPACE, GEOMETRY, 10))
        for name in self.lease_disks:
            self.disks[name].land(LEASE_AT, resource_area_image(LOCKSPACE, RESOURCE, GEOMETRY))
        self.world = SimWorld(seed, dict(self.disks))

    @property
    def disk(self) -> SimDisk:
        """The lease's first disk."""
        return self.disks[self.lease_disks[0]]

    def join(self, host_id: int, offset: float = 0.0) -> tuple[SimTask, list[Leader]]:
        """Start host_id's host-lease loop; returns it once the host lease is held, with the
        leaders the loop reported joined."""
        joined: list[Leader] = []

        class Observer(HostLeaseObserver):
            def joined(self, leader: Leader) -> None:
                joined.append(leader)

        params = DeltaParams(self.lockspace_disk, 0, GEOMETRY, LOCKSPACE, host_id,
                             f"host{host_id}", TIMEOUTS)
        task = self.world.spawn(f"delta{host_id}", host_lease_loop(params, Observer()), offset)
        self.world.run_until(self.world.now + JOIN_S)
        assert joined, f"host {host_id} did not join"
        return task, joined

    def params(self, host_id: int, generation: int = 1) -> PaxosParams:
        first, *further = self.lease_disks
        return PaxosParams(first, LEASE_AT, GEOMETRY, LOCKSPACE, RESOURCE, host_id, generation,
                           TIMEOUTS, self.lockspace_disk, 0, GEOMETRY,
                           extra_disks=tuple((name, LEASE_AT) for name in further))

    def run(self, algorithm: Algorithm[Any], offset: float = 0.0, limit_s: float = 400
            ) -> SimTask:
        """Run `algorithm` to its end (within limit_s virtual seconds, or fail)."""
        task = self.world.spawn("op", algorithm, offset)
        end = self.world.now + limit_s
        while not task.done and self.world.now < end:
            self.world.run_until(self.world.now + 0.5)
        assert task.done, "operation did not finish"
        return task

    def cut(self, disk: str) -> None:
        """The disk is gone for every host, until `restore`."""
        self.world.disk_outages[disk] = (float("inf"), False)

    def restore(self, disk: str) -> None:
        del self.world.disk_outages[disk]

    def leader(self) -> Leader:
        """The first disk's leader copy."""
        return decode_leader(self.disk.read(LEASE_AT, GEOMETRY.sector_size))

    def leaders(self) -> dict[str, Leader]:
        """Each lease disk's leader copy."""
        return {name: decode_leader(self.disks[name].read(LEASE_AT, GEOMETRY.sector_size))
                for name in self.lease_disks}
