"""Whole-area images, exactly as sanlock's `direct init` leaves them."""

from __future__ import annotations

import dataclasses

from leasestore.ondisk.geometry import Geometry, pad_sector
from leasestore.ondisk.leader import (
    LeaderMagic,
    encode_delta_sector,
    new_delta_leader,
    new_paxos_leader,
)
from leasestore.ondisk.request import Request


def lockspace_area_image(name: str, geometry: Geometry, io_timeout_s: int) -> bytes:
    """The whole lockspace area as `init -s` leaves it (every host sector a free delta leader)."""
    leader = new_delta_leader(name, geometry, io_timeout_s)
    sector = encode_delta_sector(leader, geometry.sector_size)
    body = sector * geometry.max_hosts
    return body + bytes(geometry.area_size - len(body))


def resource_area_image(
    lockspace: str, resource: str, geometry: Geometry, num_hosts: int = 0,
    cleared_at: int | None = None,
) -> bytes:
    """The whole resource area as `init -r` leaves it; with `cleared_at` (a monotonic
    timestamp, s), as `init -r -z 1` leaves it: the leader's magic says "cleared", so every
    read of the lease fails (LEADER_MAGIC) until it is initialised again."""
    head = resource_area_head(lockspace, resource, geometry, num_hosts, cleared_at)
    return head + bytes(geometry.area_size - len(head))


def resource_area_head(
    lockspace: str, resource: str, geometry: Geometry, num_hosts: int = 0,
    cleared_at: int | None = None,
) -> bytes:
    """The sectors of `resource_area_image` before its zero dblocks: leader and request."""
    leader = new_paxos_leader(lockspace, resource, geometry, num_hosts)
    if cleared_at is not None:
        leader = dataclasses.replace(leader, magic=LeaderMagic.PAXOS_CLEAR,
                                     write_timestamp=cleared_at)
    head = pad_sector(leader.encode(), geometry.sector_size)
    return head + pad_sector(Request().encode(), geometry.sector_size)
