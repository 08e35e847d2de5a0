"""Leaving a lockspace while its leases may be in use: the order that keeps them exclusive.

Removal (rem_lockspace, and every lockspace at shutdown) runs in two steps, as effect algorithms
so that the daemon's threads and the simulator run the same code:

1. `shutting_out`: the lockspace's acquire gate closes (no acquire in it starts any more) and
   the step ends once every acquire admitted before has ended. So the holders found after it
   are all there are: an acquire cannot complete, and be reported granted, on a host_id that is
   about to be given up. With `unused`, a lockspace with leases held or in flight refuses the
   removal (LockspaceBusy) and its gate opens again.
2. `ending_holders`: every holder is SIGKILLed (as sanlock does), every orphan is released
   (forgotten, if the host lease is gone already), and the step waits until none
   is left, no lease in the lockspace is held here and none of our releases there is in flight.
   Only then (True) may the caller give the host_id up: other hosts take those leases as soon as
   our host lease is free, so no holder may be running then. If some remain after `wait_s`
   (False), the host lease must be kept: its renewal goes on, the holders stay fenced by it,
   and the gate opens again (the lockspace stays joined, as before the removal).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection

from leasestore.effects import Algorithm, Sleep
from leasestore.errors import LeasestoreError, LockspaceBusy
from leasestore.lockspace import Lockspace
from leasestore.resource import ResourceService

POLL_S = 0.05


def shutting_out(service: ResourceService, name: str, unused: bool = False) -> Algorithm[None]:
    """Step 1: no acquire in `name` starts from now on; returns once those under way ended."""
    service.gate.close(name)
    while service.gate.admitted(name):
        yield Sleep(POLL_S)
    if unused and (service.in_lockspace(name) or service.busy_in(name)):
        service.gate.reopen(name)
        raise LockspaceBusy(f"lockspace {name!r} has resource leases held; release them first")


def ending_holders(service: ResourceService, lockspace: Lockspace,
                   holders: Callable[[], Collection[int]], kill: Callable[[int], None],
                   wait_s: float) -> Algorithm[bool]:
    """Step 2: SIGKILL the holders (pids, from `holders()`), release the orphans, and wait
    until nothing of the lockspace is held or being released here. False if that takes longer
    than `wait_s`."""
    name = lockspace.name
    for pid in holders():
        kill(pid)
    for orphan in service.orphans(name):
        with contextlib.suppress(LeasestoreError):  # a failed release is retried meanwhile
            yield from service.releasing_orphan(lockspace, orphan.key)
    waited_s = 0.0
    while holders() or service.in_lockspace(name) or service.busy_in(name):
        if waited_s >= wait_s:
            service.gate.reopen(name)
            return False
        yield Sleep(POLL_S)
        waited_s += POLL_S
    return True
