"""Judging other hosts' liveness from our own repeated reads of the lockspace area.

A slot is *alive* when its (owner_id, owner_generation, timestamp) changes between two of our
reads; `last_live_s` is our lease-clock time when we saw that change. Nothing here compares another
host's timestamp with our clock. Thresholds use the *slot owner's* io_timeout from its leader:
fail = 8 × io_timeout, dead = 8 × io_timeout + watchdog_fire_timeout, where the fire timeout is
the longer of ours and the one the owner published (`Timeouts.for_other`, the one rule for how
long a peer takes to be dead, used by the delta and paxos algorithms alike).

States (sanlock's host flags): FREE (timestamp 0 and the sector verifies), UNKNOWN (not watched
long enough to have seen a change, nor long enough to call it failed), LIVE, FAIL, DEAD. A sector
that fails verification (magic, version, lockspace name, checksum) is never FREE; it is judged by
the same change rule and reported with its error.

Cost per observation: one vectorised comparison of the leader bytes of every slot (as 64-bit
words) with our compact copy of the previous read; fields are decoded and checksums computed
only for slots whose leader bytes changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from leasestore.ondisk.bulk import LEADER_SPAN_B, leader_checksum_ok, leader_dtype
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import DELTA_VERSION, LeaderMagic, published_fire_timeout_s
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
    renewed_ago_s: float | None = None
    """Seconds since we saw its timestamp change (ourselves: since our last renewal read);
    None while we have seen no change."""

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
        if self.renewed_ago_s is not None:
            data["renewed_ago_s"] = round(self.renewed_ago_s, 3)
        return data


@dataclass(frozen=True)
class OwnerView:
    """What our renewal reads tell of one host's delta lease (times on our lease clock)."""

    generation: int
    timestamp: int
    last_live_s: float
    changed_at_last_check: bool
    """We saw its record change between our last two reads (not merely a first sighting)."""


_WORDS = LEADER_SPAN_B // 8
_LIVE_WORDS = (32 // 8, 40 // 8, 152 // 8)
"""The 64-bit words holding owner_id, owner_generation and timestamp: a change means alive."""
_CHANGE_WORDS = (152 // 8, 168 // 8)
"""The words holding timestamp, and checksum and io_timeout: one cache line per slot. Every
change to a valid record changes its checksum; so does almost every corruption of one."""


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
        self._words = np.zeros((n, _WORDS), dtype="<u8")
        """The leader bytes of every slot from our last read, one row of 64-bit words each."""
        self._rows: npt.NDArray[np.void] | None = None
        """The same bytes as leader records (a view of `_words`); None before the first read."""
        self.first_check_s = np.zeros(n)
        self.last_check_s = np.zeros(n)
        self.last_live_s = np.zeros(n)
        self._errors: dict[int, str] = {}
        self._unverified = np.zeros(n, dtype=bool)
        self.observations = 0
        self.changed_last: list[int] = []
        """Slots whose (owner, generation, timestamp) changed in the last observation."""

    def observe(self, area: bytes | memoryview, now_s: float) -> None:
        """Fold one read of the whole area, made at our lease-clock time `now_s`.

        A slot counts as changed when its timestamp or checksum words differ from our copy; it
        counts as alive when its owner, generation or timestamp changed. Changed slots are copied
        in and verified on first use.
        """
        n, ss = self.geometry.max_hosts, self.geometry.sector_size
        words = np.frombuffer(area, dtype="<u8", count=n * ss // 8).reshape(n, ss // 8)
        words = words[:, :_WORDS]
        if self._rows is None:
            self._words[:] = words
            self._rows = self._words.view(leader_dtype(LEADER_SPAN_B)).reshape(n)
            self.first_check_s[:] = now_s
            self.last_live_s[:] = now_s
            self._unverified[:] = True
        else:
            changed = words[:, _CHANGE_WORDS[0]] != self._words[:, _CHANGE_WORDS[0]]
            for column in _CHANGE_WORDS[1:]:
                changed |= words[:, column] != self._words[:, column]
            recheck = np.flatnonzero(changed)
            live = np.zeros(len(recheck), dtype=bool)
            for column in _LIVE_WORDS:
                live |= words[recheck, column] != self._words[recheck, column]
            self._words[recheck] = words[recheck]
            self._unverified[recheck] = True
            self.last_live_s[recheck[live]] = now_s
            self.changed_last = recheck[live].tolist()
        self.last_check_s[:] = now_s
        self.observations += 1

    @property
    def errors(self) -> dict[int, str]:
        """Slot index → why its record does not verify (checks every slot not yet verified)."""
        self._verify(np.flatnonzero(self._unverified))
        return self._errors

    def error_of(self, index: int) -> str | None:
        """Why slot `index`'s record does not verify, or None if it does."""
        if self._unverified[index]:
            self._verify(np.array([index]))
        return self._errors.get(index)

    def _verify(self, indices: npt.NDArray[np.intp]) -> None:
        """Verify magic, major version, checksum and lockspace name of the given slots."""
        if self._rows is None or not len(indices):
            return
        self._unverified[indices] = False
        rows = self._rows[indices]
        bad_magic = rows["magic"] != LeaderMagic.DELTA
        bad_version = (rows["version"] >> 16) != (DELTA_VERSION >> 16)
        bad_name = rows["space_name"] != self._space_field
        ss = self.geometry.sector_size
        copy = memoryview(self._words.view(np.uint8).reshape(-1).data)
        for index, magic_bad, version_bad, name_bad in zip(
            indices.tolist(), bad_magic.tolist(), bad_version.tolist(), bad_name.tolist(),
            strict=True,
        ):
            self._errors.pop(index, None)
            if magic_bad:
                self._errors[index] = f"bad magic at offset {index * ss}"
            elif version_bad:
                self._errors[index] = f"unsupported version at offset {index * ss}"
            elif not leader_checksum_ok(copy, LEADER_SPAN_B, index):
                self._errors[index] = f"checksum mismatch at offset {index * ss}"
            elif name_bad:
                self._errors[index] = f"lockspace name differs at offset {index * ss}"

    def state_of(self, index: int, now_s: float) -> HostFlag:
        assert self._rows is not None
        row = self._rows[index]
        if index + 1 == self.own_host_id:
            return HostFlag.LIVE
        if int(row["timestamp"]) == 0 and self.error_of(index) is None:
            return HostFlag.FREE
        other = self.timeouts.for_other(int(row["io_timeout"]),
                                        published_fire_timeout_s(int(row["unused1"])))
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
            error=self.error_of(index),
            renewed_ago_s=self._renewed_ago(index, now_s),
        )

    def _renewed_ago(self, index: int, now_s: float) -> float | None:
        assert self._rows is not None
        seen_change = self.first_check_s[index] != self.last_live_s[index]
        if int(self._rows[index]["timestamp"]) == 0 or not (
                seen_change or index + 1 == self.own_host_id):
            return None
        return max(0.0, now_s - float(self.last_live_s[index]))
