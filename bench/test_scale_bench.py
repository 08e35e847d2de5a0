"""CPU cost of renewal and acquire as the lockspace grows (max_hosts 250 → 2000) and as more
hosts are live (1 → 64 simulated hosts writing their sectors), with the I/O taken out: the real
L1 algorithms run against in-memory disks, so what is timed is decoding, checking and encoding.

Baseline in each group: copying the bytes the operation reads (the least any implementation
does with them), measured in the same run; the summary reports the ratio to it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from leasestore.delta import DeltaParams, renew
from leasestore.effects import Batch, Now, Random, Read, Sleep, Write
from leasestore.liveness import HostFlag, HostTable
from leasestore.ondisk.areas import lockspace_area_image, resource_area_image
from leasestore.ondisk.dblock import Dblock, encode_dblock_sector
from leasestore.ondisk.geometry import Geometry, pad_sector
from leasestore.ondisk.leader import Leader, decode_leader, encode_delta_sector
from leasestore.paxos import PaxosParams, acquire, release
from leasestore.timeouts import Timeouts

MiB = 1 << 20
GEOMETRIES = [(4096, 1 * MiB), (4096, 2 * MiB), (4096, 4 * MiB), (512, 1 * MiB)]
LIVE_HOSTS = [1, 8, 64]
T = Timeouts(10)
OUR_ID = 1


class MemoryRunner:
    """Runs an L1 algorithm to completion against bytearrays, each effect at once."""

    def __init__(self, disks: dict[str, bytearray]) -> None:
        self.disks = disks
        self.now_s = 1000.0

    def _io(self, effect: Read | Write) -> Any:
        disk = self.disks[effect.device]
        if isinstance(effect, Read):
            return bytes(memoryview(disk)[effect.offset_b:effect.offset_b + effect.length_b])
        disk[effect.offset_b:effect.offset_b + len(effect.data)] = effect.data
        return None

    def run(self, algorithm: Generator[Any, Any, Any]) -> Any:
        value: Any = None
        while True:
            try:
                effect = algorithm.send(value)
            except StopIteration as stop:
                return stop.value
            if isinstance(effect, Read | Write):
                value = self._io(effect)
            elif isinstance(effect, Batch):
                value = tuple(self._io(e) for e in effect.effects)
            elif isinstance(effect, Sleep):
                self.now_s += effect.seconds
                value = None
            elif isinstance(effect, Now):
                value = self.now_s
            elif isinstance(effect, Random):
                value = 0.5
            else:
                raise TypeError(effect)


def _ids(geometry: tuple[int, int]) -> str:
    return f"{Geometry(*geometry).max_hosts}hosts-{geometry[0]}-{geometry[1] // MiB}M"


def _lockspace_with_live_hosts(geo: Geometry, live: int) -> list[bytearray]:
    """Two images of a lockspace in which hosts 2..live+1 hold their delta leases; between the
    two, every one of them renewed (so each observation sees `live` changes)."""
    image = bytearray(lockspace_area_image("scale", geo, 10))
    free = decode_leader(bytes(image[:geo.sector_size]))
    images = []
    for step in range(2):
        copy = bytearray(image)
        for host_id in [OUR_ID, *range(2, live + 2)]:
            leader = free.replace(owner_id=host_id, owner_generation=1, timestamp=100 + step,
                                  resource_name=f"h{host_id}")
            at = geo.delta_offset(host_id)
            copy[at:at + geo.sector_size] = encode_delta_sector(leader, geo.sector_size)
        images.append(copy)
    return images


@pytest.mark.parametrize("live", LIVE_HOSTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_renewal_cpu(benchmark: Any, geometry: tuple[int, int], live: int) -> None:
    """One renewal (read area, verify ours, write ours) plus folding the read into the host
    table, with `live` other hosts renewing between our renewals."""
    geo = Geometry(*geometry)
    images = _lockspace_with_live_hosts(geo, live)
    runners = [MemoryRunner({"ls": image}) for image in images]  # both share the clock below
    params = DeltaParams("ls", 0, geo, "scale", OUR_ID, f"h{OUR_ID}", T)
    table = HostTable(geo, "scale", OUR_ID, T)
    last: list[Leader] = [decode_leader(bytes(images[0][:geo.sector_size]))]
    rounds = [-1]

    def one() -> None:
        rounds[0] += 1
        runner = runners[rounds[0] % 2]
        runner.now_s += 20
        outcome = runner.run(renew(params, last[0], True))
        last[0] = outcome.leader
        table.observe(outcome.area, runner.now_s)
        ours = slice(geo.delta_offset(OUR_ID), geo.delta_offset(OUR_ID) + geo.sector_size)
        images[(rounds[0] + 1) % 2][ours] = images[rounds[0] % 2][ours]

    benchmark.group = f"scale-renewal-{_ids(geometry)}-live{live}"
    benchmark.extra_info["role"] = "leasestore"
    benchmark.pedantic(one, rounds=200, warmup_rounds=50)  # past glibc's mmap-threshold warm-up
    now_s = max(runner.now_s for runner in runners)  # the last observation's time
    states = {table.state_of(h - 1, now_s) for h in range(2, live + 2)}
    assert states <= {HostFlag.LIVE}, states  # every renewing host seen alive


@pytest.mark.parametrize("live", LIVE_HOSTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_renewal_cpu_baseline(benchmark: Any, geometry: tuple[int, int], live: int) -> None:
    """Copying the area a renewal reads (the same whatever the number of live hosts)."""
    image = bytearray(Geometry(*geometry).area_size)
    benchmark.group = f"scale-renewal-{_ids(geometry)}-live{live}"
    benchmark.extra_info["role"] = "baseline"
    benchmark.pedantic(lambda: bytes(image), rounds=200, warmup_rounds=5)


def _resource_with_history(geo: Geometry, live: int) -> bytearray:
    """A free resource lease at lver 5 whose dblocks show `live` other hosts' earlier ballots
    (each at an lver of its own, up to 5)."""
    image = bytearray(resource_area_image("scale", "res", geo))
    leader = decode_leader(bytes(image[:geo.sector_size])).replace(lver=5, owner_id=2,
                                                                   owner_generation=1)
    image[:geo.sector_size] = pad_sector(leader.encode(), geo.sector_size)
    for host_id in range(2, live + 2):
        lver = 1 + host_id % 5
        dblock = Dblock(mbal=host_id, bal=host_id, inp=host_id, inp2=1, inp3=50, lver=lver)
        at = geo.dblock_offset(host_id)
        image[at:at + geo.sector_size] = encode_dblock_sector(dblock, geo.sector_size)
    return image


@pytest.mark.parametrize("live", LIVE_HOSTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_acquire_release_cpu(benchmark: Any, geometry: tuple[int, int], live: int) -> None:
    """Acquire (three reads of leader + num_hosts dblocks, two dblock writes, leader write) and
    release of a free lease whose dblocks carry `live` other hosts' earlier ballots."""
    geo = Geometry(*geometry)
    disks = {"res": _resource_with_history(geo, live),
             "ls": _lockspace_with_live_hosts(geo, live)[0]}
    runner = MemoryRunner(disks)
    params = PaxosParams("res", 0, geo, "scale", "res", OUR_ID, 1, T, "ls", 0, geo)

    def one() -> None:
        held = runner.run(acquire(params))
        runner.run(release(params, held))

    benchmark.group = f"scale-acquire-{_ids(geometry)}-live{live}"
    benchmark.extra_info["role"] = "leasestore"
    benchmark.pedantic(one, rounds=100, warmup_rounds=3)
    leader = decode_leader(bytes(disks["res"][:geo.sector_size]))
    assert (leader.owner_id, leader.timestamp) == (OUR_ID, 0), leader  # released, every round


@pytest.mark.parametrize("live", LIVE_HOSTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_acquire_release_cpu_baseline(benchmark: Any, geometry: tuple[int, int],
                                      live: int) -> None:
    """Copying what acquire + release read: three ballot reads of leader + num_hosts dblocks."""
    geo = Geometry(*geometry)
    image = bytearray(geo.ballot_read_size(geo.max_hosts))

    def copies() -> None:
        for _ in range(3):
            bytes(image)

    benchmark.group = f"scale-acquire-{_ids(geometry)}-live{live}"
    benchmark.extra_info["role"] = "baseline"
    benchmark.pedantic(copies, rounds=100, warmup_rounds=3)
