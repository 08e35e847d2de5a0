"""Every delay of the delta-lease protocol, derived from io_timeout as sanlock derives it.

All hosts of a lockspace must use the same watchdog_fire_timeout. Delays that concern *another* host
use that host's io_timeout as read from its leader (`for_other`), so peers with different
io_timeouts still agree on when a host is dead.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_IO_TIMEOUT_S = 10
DEFAULT_WATCHDOG_FIRE_TIMEOUT_S = 60
DEFAULT_KILL_GRACE_S = 40


@dataclass(frozen=True)
class Timeouts:
    """The timing rules for one io_timeout. Invariant: io_timeout_s >= 1 (whole seconds on disk)."""

    io_timeout_s: int = DEFAULT_IO_TIMEOUT_S
    watchdog_fire_timeout_s: float = DEFAULT_WATCHDOG_FIRE_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 1 <= self.io_timeout_s <= 0xFF:
            raise ValueError(f"io_timeout must be 1..255 s, not {self.io_timeout_s}")
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

    def for_other(self, other_io_timeout_s: int) -> Timeouts:
        """The rules for a peer whose leader says `other_io_timeout_s` (0: same as ours)."""
        if other_io_timeout_s <= 0 or other_io_timeout_s == self.io_timeout_s:
            return self
        return Timeouts(other_io_timeout_s, self.watchdog_fire_timeout_s)
