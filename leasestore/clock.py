"""The clock that lease time is measured on.

CLOCK_BOOTTIME, not CLOCK_MONOTONIC: both are local, never set, and start at boot, but only
BOOTTIME goes on counting while the machine is suspended. Every lease deadline of ours
(`valid_until_s`, a peer's last change, the timestamps we write) is on this clock, so a host
resumed from suspend sees its host leases as old as they really are and fails them, instead of
renewing leases that other hosts have meanwhile judged dead. (Timestamps are only ever compared
with others on the same host; what peers see is whether they change.)

Waits for I/O completion and for events are durations and use whatever clock the waiting call
uses; they decide no lease's validity.
"""

from __future__ import annotations

import time


def lease_now_s() -> float:
    """Seconds since boot, suspend included."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
