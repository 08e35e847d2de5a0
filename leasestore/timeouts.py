"""Every delay of the delta-lease protocol, derived from io_timeout as sanlock derives it.

Delays that concern *another* host use that host's io_timeout as read from its delta leader, and
the longer of our watchdog_fire_timeout and the one it published there (`for_peer`,
`for_other`): peers with different io_timeouts or fire timeouts still never judge a host dead
before its watchdog has fired. (sanlock hosts publish no fire timeout; a cluster that mixes them
with leasestore hosts must keep every fire timeout at or below sanlock's 60 s.)

Our own io_timeout is configured in 1..255 s (`checked_io_timeout`: sanlock writes only the low
8 bits). A peer's comes from a 16-bit field and is taken as it is, however large: a longer
io_timeout only makes us wait longer before judging that peer dead, never less.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leasestore.ondisk.leader import Leader

from dataclasses import dataclass

from leasestore.errors import UsageError
from leasestore.units import checked_whole

DEFAULT_IO_TIMEOUT_S = 10
DEFAULT_WATCHDOG_FIRE_TIMEOUT_S = 60
DEFAULT_KILL_GRACE_S = 40
UNPUBLISHED_FIRE_TIMEOUT_S = 60.0
"""The fire timeout assumed of a peer that publishes none: a sanlock host, whose watchdog
fires 60 s after its last pet."""
MAX_OWN_IO_TIMEOUT_S = 0xFF
MAX_PEER_IO_TIMEOUT_S = 0xFFFF


def checked_io_timeout(value: object, what: str = "io_timeout") -> int:
    """`value` as our own io_timeout, or UsageError naming `what` (a flag, a config key)."""
    return checked_whole(value, what, 1, MAX_OWN_IO_TIMEOUT_S, " of seconds")


def checked_fire_timeout(value: object, what: str = "watchdog_fire_timeout") -> float:
    """`value` as a watchdog_fire_timeout in seconds (positive), or UsageError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise UsageError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Timeouts:
    """The timing rules for one io_timeout. Invariant: 1 <= io_timeout_s <= 0xFFFF (whole
    seconds, as on disk); configuration paths narrow ours to 1..255 with `checked_io_timeout`."""

    io_timeout_s: int = DEFAULT_IO_TIMEOUT_S
    watchdog_fire_timeout_s: float = DEFAULT_WATCHDOG_FIRE_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 1 <= self.io_timeout_s <= MAX_PEER_IO_TIMEOUT_S:
            raise ValueError(f"io_timeout must be 1..{MAX_PEER_IO_TIMEOUT_S} s, "
                             f"not {self.io_timeout_s}")
        if self.watchdog_fire_timeout_s <= 0:
            raise ValueError("watchdog_fire_timeout must be positive")

    @property
    def id_renewal_s(self) -> float:
        """Interval between renewals."""
        return 2 * self.io_timeout_s

    @property
    def id_renewal_warn_s(self) -> float:
        return 6 * self.io_timeout_s

    @property
    def id_renewal_fail_s(self) -> float:
        """Without a successful renewal for this long, our lease holders must be killed."""
        return 8 * self.io_timeout_s

    @property
    def host_dead_s(self) -> float:
        """Unchanged for this long (on the observer's clock), a host may be taken over."""
        return 8 * self.io_timeout_s + self.watchdog_fire_timeout_s

    @property
    def delta_large_delay_s(self) -> float:
        return 2 * self.io_timeout_s + 6 * self.io_timeout_s

    @property
    def delta_short_delay_s(self) -> float:
        return 2 * self.io_timeout_s

    @property
    def set_bitmap_s(self) -> float:
        return 6 * self.io_timeout_s

    @property
    def renewal_read_timeout_s(self) -> float:
        return float(self.io_timeout_s)

    @property
    def renewal_write_timeout_s(self) -> float:
        """sanlock stretches the renewal write's timeout to host_dead_seconds."""
        return self.host_dead_s

    @property
    def kill_grace_s(self) -> float:
        """Seconds of SIGTERM/killpath before SIGKILL, scaled down with small watchdog timeouts."""
        if self.watchdog_fire_timeout_s >= 60:
            return DEFAULT_KILL_GRACE_S
        if self.watchdog_fire_timeout_s >= 30:
            return 15
        return 0

    def for_peer(self, leader: Leader) -> Timeouts:
        """The rules by which we judge the owner of delta leader `leader`."""
        return self.for_other(leader.io_timeout, leader.fire_timeout_s)

    def for_other(self, other_io_timeout_s: int, other_fire_timeout_s: float = 0.0
                  ) -> Timeouts:
        """The rules by which we judge a peer whose delta leader says `other_io_timeout_s`
        (0: as ours) and publishes `other_fire_timeout_s` (0: nothing published, as sanlock
        hosts, whose watchdogs fire after UNPUBLISHED_FIRE_TIMEOUT_S). We count the longer of
        its fire timeout and ours, so a peer with a longer fire timeout is never judged dead
        while its watchdog may still be counting."""
        io_s = other_io_timeout_s if other_io_timeout_s > 0 else self.io_timeout_s
        theirs_s = other_fire_timeout_s if other_fire_timeout_s > 0 else UNPUBLISHED_FIRE_TIMEOUT_S
        fire_s = max(self.watchdog_fire_timeout_s, theirs_s)
        if (io_s, fire_s) == (self.io_timeout_s, self.watchdog_fire_timeout_s):
            return self
        return Timeouts(io_s, fire_s)
