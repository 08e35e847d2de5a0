"""Judging other hosts' liveness from our own repeated reads of the lockspace area.

A slot is *alive* when its (owner_id, owner_generation, timestamp) changes between two of our
reads; `last_live_s` is our monotonic time when we saw that change. Nothing here compares another
host's timestamp with our clock. Thresholds use the *slot owner's* io_timeout from its leader:
fail = 8 × io_timeout, dead = 8 × io_timeout + watchdog_fire_timeout.

States (sanlock's host flags): FREE (timestamp 0 and the sector verifies), UNKNOWN (not watched
long enough to have seen a change, nor long enough to call it failed), LIVE, FAIL, DEAD. A sector
that fails verification (magic, version, lockspace name, checksum) is never FREE; it is judged by
the same change rule and reported with its error.

Cost per observation: a few vectorised comparisons over all slots; checksums are computed only
for slots whose header or checksum field changed since the previous read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt
from numpy.lib.recfunctions import repack_fields

from leasestore.ondisk.bulk import leader_checksum_ok, scan_leaders
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import DELTA_VERSION, LeaderMagic
from leasestore.ondisk.names import decode_name, encode_name
from leasestore.timeouts import Timeouts


class HostFlag(IntEnum):
    """sanlock's host flags (values as in its API)."""

    UNKNOWN = 1
    FREE = 2
    LIVE = 3
    FAIL = 4
    DEAD = 5

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class HostStatus:
    host_id: int
    state: HostFlag
    owner_id: int
    generation: int
    timestamp: int
    io_timeout: int
    host_name: str
    last_live_s: float
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "host_id": self.host_id,
            "state": self.state.label,
            "flags": int(self.state),
            "owner_id": self.owner_id,
            "generation": self.generation,
            "timestamp": self.timestamp,
            "io_timeout": self.io_timeout,
            "host_name": self.host_name,
        }
        if self.error:
            data["error"] = self.error
        return data


@dataclass(frozen=True)
class OwnerView:
    """What our renewal reads tell of one host's delta lease (times on our monotonic clock)."""

    generation: int
    timestamp: int
    last_live_s: float
    changed_at_last_check: bool
    """We saw its record change between our last two reads (not merely a first sighting)."""


_WATCHED = ("owner_id", "owner_generation", "timestamp")
_KEPT = (*_WATCHED, "magic", "version", "checksum", "io_timeout", "space_name", "resource_name")
_CONTENT = ("magic", "checksum")


class HostTable:
    """What we know of every slot of one lockspace, from our renewal reads."""

    def __init__(self, geometry: Geometry, space_name: str, own_host_id: int,
                 timeouts: Timeouts) -> None:
        self.geometry = geometry
        self.space_name = space_name
        self.own_host_id = own_host_id
        self.timeouts = timeouts
        self._space_field = encode_name(space_name).rstrip(b"\0")
        n = geometry.max_hosts
        self._rows: npt.NDArray[np.void] | None = None
        self.first_check_s = np.zeros(n)
        self.last_check_s = np.zeros(n)
        self.last_live_s = np.zeros(n)
        self.errors: dict[int, str] = {}
        self.observations = 0
        self.changed_last: list[int] = []
        """Slots whose (owner, generation, timestamp) changed in the last observation."""

    def observe(self, area: bytes, now_s: float) -> None:
        """Fold one read of the whole area, made at our monotonic time `now_s`."""
        view = scan_leaders(area, self.geometry.sector_size, self.geometry.max_hosts)
        rows = repack_fields(view[list(_KEPT)])
        if self._rows is None:
            self.first_check_s[:] = now_s
            self.last_live_s[:] = now_s
            recheck = np.arange(len(rows))
        else:
            changed = np.zeros(len(rows), dtype=bool)
            for name in _WATCHED:
                changed |= rows[name] != self._rows[name]
            self.last_live_s[changed] = now_s
            self.changed_last = np.flatnonzero(changed).tolist()
            content = changed.copy()
            for name in _CONTENT:
                content |= rows[name] != self._rows[name]
            recheck = np.flatnonzero(content)
        self.last_check_s[:] = now_s
        self._rows = rows
        self._verify(area, recheck)
        self.observations += 1

    def _verify(self, area: bytes, indices: npt.NDArray[np.intp]) -> None:
        """Re-verify magic, major version, lockspace name and checksum of the given slots."""
        assert self._rows is not None
        rows = self._rows[indices]
        bad_magic = rows["magic"] != LeaderMagic.DELTA
        bad_version = (rows["version"] >> 16) != (DELTA_VERSION >> 16)
        bad_name = rows["space_name"] != self._space_field
        ss = self.geometry.sector_size
        for index, magic_bad, version_bad, name_bad in zip(
            indices.tolist(), bad_magic.tolist(), bad_version.tolist(), bad_name.tolist(),
            strict=True,
        ):
            self.errors.pop(index, None)
            if magic_bad:
                self.errors[index] = f"bad magic at offset {index * ss}"
            elif version_bad:
                self.errors[index] = f"unsupported version at offset {index * ss}"
            elif not leader_checksum_ok(area, ss, index):
                self.errors[index] = f"checksum mismatch at offset {index * ss}"
            elif name_bad:
                self.errors[index] = f"lockspace name differs at offset {index * ss}"

    def state_of(self, index: int, now_s: float) -> HostFlag:
        assert self._rows is not None
        row = self._rows[index]
        if index + 1 == self.own_host_id:
            return HostFlag.LIVE
        if int(row["timestamp"]) == 0 and index not in self.errors:
            return HostFlag.FREE
        other = self.timeouts.for_other(int(row["io_timeout"]))
        since_s = now_s - float(self.last_live_s[index])
        if since_s <= other.id_renewal_fail_s:
            if self.first_check_s[index] == self.last_live_s[index]:
                return HostFlag.UNKNOWN
            return HostFlag.LIVE
        if since_s > other.host_dead_s:
            return HostFlag.DEAD
        return HostFlag.FAIL

    def owner_view(self, host_id: int) -> OwnerView | None:
        """The paxos takeover rule's view of host_id, or None before our first read."""
        if self._rows is None:
            return None
        index = host_id - 1
        row = self._rows[index]
        last_live = float(self.last_live_s[index])
        return OwnerView(
            generation=int(row["owner_generation"]),
            timestamp=int(row["timestamp"]),
            last_live_s=last_live,
            changed_at_last_check=(last_live == float(self.last_check_s[index])
                                   and last_live != float(self.first_check_s[index])),
        )

    def status(self, now_s: float, host_id: int = 0) -> list[HostStatus]:
        """Slots ever acquired (or corrupt), or just `host_id`'s slot if given."""
        if self._rows is None:
            return []
        if host_id:
            self.geometry.check_host_id(host_id)
            indices = [host_id - 1]
        else:
            used = (self._rows["owner_id"] != 0) | (self._rows["owner_generation"] != 0)
            indices = sorted(set(np.flatnonzero(used).tolist()) | set(self.errors))
        return [self._status(i, now_s) for i in indices]

    def _status(self, index: int, now_s: float) -> HostStatus:
        assert self._rows is not None
        row = self._rows[index]
        return HostStatus(
            host_id=index + 1,
            state=self.state_of(index, now_s),
            owner_id=int(row["owner_id"]),
            generation=int(row["owner_generation"]),
            timestamp=int(row["timestamp"]),
            io_timeout=int(row["io_timeout"]),
            host_name=decode_name(bytes(row["resource_name"])),
            last_live_s=float(self.last_live_s[index]),
            error=self.errors.get(index),
        )
