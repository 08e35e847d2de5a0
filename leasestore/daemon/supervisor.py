"""The monitor's policy: fail expired lockspaces, stop the holders of failed ones, and decide
whether the watchdog may be petted. No I/O and no clock of its own: the caller passes the lease
clock's time and a way to signal a holder, so the daemon (its monitor thread) and the simulator
(a task per host) run this same code.

Invariants:
- `tick` returns True (pet) only while every lockspace is held and unexpired at `now_s`, or has
  failed with no holder left. So the watchdog fires no later than watchdog_fire_timeout after
  the last moment every holder's host lease was valid: before host_dead, when other hosts may
  take those leases over.
- A holder of a failed lockspace is stopped gracefully (SIGTERM or its killpath) until
  kill_grace_s has passed since its stop began, then with SIGKILL; at most one signal a second.
- A pid's stop state is forgotten once it holds nothing in a failed lockspace, so a later
  process reusing the pid starts afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from leasestore.lockspace import Lockspace, LockspaceState

log = logging.getLogger(__name__)

SIGNAL_INTERVAL_S = 1.0
StopHolder = Callable[[int, bool], None]
"""Signal a holder: (pid, graceful). Graceful is SIGTERM or the killpath; otherwise SIGKILL."""


def monitor_interval_s(watchdog_fire_timeout_s: float) -> float:
    """How often the monitor ticks: every second, or four times per fire timeout if shorter."""
    return min(1.0, watchdog_fire_timeout_s / 4)


@dataclass
class _Stopping:
    started_s: float
    last_signal_s: float = float("-inf")


class Supervisor:
    def __init__(self, stop_holder: StopHolder) -> None:
        self._stop_holder = stop_holder
        self._stopping: dict[int, _Stopping] = {}
        """pid -> when we began stopping it (lease clock) and when we last signalled it."""

    def tick(self, now_s: float, lockspaces: Iterable[Lockspace],
             holders_in: Callable[[str], Iterable[int]]) -> bool:
        """One monitor round at lease-clock time now_s. `holders_in(name)` gives the pids
        holding leases in lockspace `name`. Returns whether the watchdog may be petted."""
        healthy = True
        stopping: set[int] = set()
        for lockspace in lockspaces:
            state = lockspace.check_expiry(now_s)
            if state in (LockspaceState.HELD, LockspaceState.RENEWAL_FAILING):
                healthy = healthy and now_s < lockspace.valid_until_s
            elif state == LockspaceState.FAILED:
                pids = set(holders_in(lockspace.name))
                grace_s = lockspace.timeouts.kill_grace_s
                for pid in pids - stopping:
                    self._stop(pid, lockspace.name, now_s, grace_s)
                stopping |= pids
                healthy = healthy and not pids  # holders still run: let the watchdog fire
        for pid in set(self._stopping) - stopping:
            del self._stopping[pid]
        return healthy

    def _stop(self, pid: int, name: str, now_s: float, grace_s: float) -> None:
        entry = self._stopping.get(pid)
        if entry is None:
            entry = self._stopping[pid] = _Stopping(now_s)
            log.error("lockspace %s failed: stopping pid %d", name, pid)
        if now_s - entry.last_signal_s < SIGNAL_INTERVAL_S:
            return
        entry.last_signal_s = now_s
        self._stop_holder(pid, now_s - entry.started_s < grace_s)
