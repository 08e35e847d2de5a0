"""One host's membership of one lockspace: a thread that acquires and renews the host lease.

States, and what a holder of the lockspace may assume in each:
- JOINING: nothing yet; the host_id is not ours. add_lockspace waiters block here.
- HELD: our host lease is valid until `valid_until_s` (last successful renewal timestamp +
  id_renewal_fail_s on our lease clock, clock.py). Resource leases in this lockspace may be used.
- RENEWAL_FAILING: the last renewal failed; the lease is still valid until `valid_until_s`,
  and renewal is being retried. Nothing new should be acquired.
- FAILED: the lease is lost or expired (`error` says why). Holders must be stopped; the renewal
  thread has ended and never renews again (a renewal now could make a host that others are about
  to judge dead look alive again). Leave with rem_lockspace; re-join with add_lockspace.
- RELEASED: we gave the host_id up cleanly (rem_lockspace); the thread has ended.

Every change of state goes through one transition table (`next_state`): the renewal loop's
callbacks and the monitor's expiry check report events, and an event the table does not allow
in the current state is a bug, refused with an error rather than applied.

In the daemon each lockspace has its own thread and its own device handle (its own AIO
context), so a stuck device delays only its own lockspace. `check_expiry` is called by the
daemon's monitor every second: it does not depend on the renewal thread being responsive (a
renewal write may hang for up to host_dead_seconds).

What the thread runs is `membership()`, an effect generator whose effects name the device by
the lockspace's path; the simulator runs the same generator, and passes its own lease clock as
`now`. Nothing here blocks except `wait_joined` and `stop`, which only the daemon calls.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from leasestore.clock import lease_now_s
from leasestore.delta import (
    DeltaParams,
    HostEvent,
    HostLeaseObserver,
    RenewOutcome,
    host_lease_loop,
    probe_geometry,
    verify_delta,
)
from leasestore.effects import Algorithm
from leasestore.errors import (
    Cancelled,
    CorruptRecord,
    HostIdInvalid,
    HostLeaseExpired,
    LeasestoreError,
    LockspaceBusy,
)
from leasestore.liveness import HostStatus, HostTable, OwnerView
from leasestore.ondisk.bitmap import host_bit_is_set, set_host_bits
from leasestore.ondisk.leader import Leader
from leasestore.specs import LockspaceSpec
from leasestore.storage.odirect import DirectDevice
from leasestore.storage.runner import DeviceRunner
from leasestore.timeouts import Timeouts

log = logging.getLogger(__name__)
DEFAULT_HISTORY = 180


class LockspaceState(StrEnum):
    JOINING = "joining"
    HELD = "held"
    RENEWAL_FAILING = "renewal_failing"
    FAILED = "failed"
    RELEASED = "released"


class LockspaceEvent(StrEnum):
    """What the renewal loop (or the monitor) reports; the table below turns it into a state."""

    JOINED = "joined"
    RENEWED = "renewed"
    RENEWAL_FAILED = "renewal_failed"
    LOST = "lost"
    """The host lease is lost or expired, or the join failed."""
    RELEASED = "released"
    """We gave the host_id up, or the join was cancelled."""


_S, _E = LockspaceState, LockspaceEvent
_NEXT: dict[tuple[LockspaceState, LockspaceEvent], LockspaceState] = {
    (_S.JOINING, _E.RENEWED): _S.JOINING,  # the join's own renewal (delta.join)
    (_S.JOINING, _E.RENEWAL_FAILED): _S.JOINING,  # ... which fails the join right after
    (_S.JOINING, _E.JOINED): _S.HELD,
    (_S.JOINING, _E.LOST): _S.FAILED,
    (_S.JOINING, _E.RELEASED): _S.RELEASED,
    (_S.HELD, _E.RENEWED): _S.HELD,
    (_S.HELD, _E.RENEWAL_FAILED): _S.RENEWAL_FAILING,
    (_S.HELD, _E.LOST): _S.FAILED,
    (_S.HELD, _E.RELEASED): _S.RELEASED,
    (_S.RENEWAL_FAILING, _E.RENEWED): _S.HELD,
    (_S.RENEWAL_FAILING, _E.RENEWAL_FAILED): _S.RENEWAL_FAILING,
    (_S.RENEWAL_FAILING, _E.LOST): _S.FAILED,
    (_S.RENEWAL_FAILING, _E.RELEASED): _S.RELEASED,
}
"""Every legal transition. FAILED and RELEASED are terminal: they absorb every later event
(a release after a failure stays FAILED: the host lease was not given up cleanly)."""
TERMINAL = frozenset({LockspaceState.FAILED, LockspaceState.RELEASED})


def next_state(state: LockspaceState, event: LockspaceEvent) -> LockspaceState:
    """The state after `event`; raises LeasestoreError for a transition the table lacks."""
    if state in TERMINAL:
        return state
    following = _NEXT.get((state, event))
    if following is None:
        raise LeasestoreError(f"internal error: lockspace event {event} in state {state}")
    return following


@dataclass(frozen=True)
class RenewalRecord:
    """One renewal attempt. Times are µs; `timestamp` is what we wrote (0 if it failed)."""

    time_s: float
    timestamp: int
    read_us: int
    write_us: int
    total_us: int
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"time": round(self.time_s, 3), "timestamp": self.timestamp,
                "read_us": self.read_us, "write_us": self.write_us,
                "total_us": self.total_us, "error": self.error}


@dataclass(frozen=True)
class ReceivedEvent:
    """A host event another host sent us: for our host_id, carried by sender's record."""

    host_id: int
    event: HostEvent
    from_host_id: int
    from_generation: int


class Lockspace(HostLeaseObserver):
    def __init__(
        self,
        spec: LockspaceSpec,
        host_name: str,
        timeouts: Timeouts,
        on_change: Callable[[Lockspace], None] | None = None,
        history_size: int = DEFAULT_HISTORY,
        on_request: Callable[[Lockspace], None] | None = None,
        open_device: Callable[[str], DirectDevice] = DirectDevice,
        now: Callable[[], float] = lease_now_s,
        on_renewal: Callable[[RenewalRecord], None] | None = None,
        publish_fire_timeout: bool = True,
        on_event: Callable[[Lockspace, ReceivedEvent], None] | None = None,
    ) -> None:
        self.on_event = on_event
        """Hears, on the renewal thread, of each host event another host sent us."""
        self._outgoing: HostEvent | None = None
        """The event our delta leader carries (None: whatever it carried when we joined)."""
        self._outgoing_until_s = 0.0
        self._publish_fire_timeout = publish_fire_timeout
        """False only in the simulator, for a host that behaves as a sanlock host."""
        self._open_device = open_device
        self.on_renewal = on_renewal
        """Hears of every renewal attempt's record (successful or failed), after it is kept."""
        self._now = now
        self.spec = spec
        self.host_name = host_name
        self.timeouts = timeouts
        self.on_change = on_change
        self.on_request = on_request
        self._flags: dict[int, float] = {}
        """host_id -> our lease-clock time until which its bit stays set in our bitmap."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._state = LockspaceState.JOINING
        self.error: LeasestoreError | None = None
        self.generation = 0
        self.last_success_s = 0.0
        self.joined_s = 0.0
        """The timestamp our join wrote (0 before it)."""
        self.table: HostTable | None = None
        self._history: collections.deque[RenewalRecord] = collections.deque(maxlen=history_size)
        self._thread = threading.Thread(target=self._run, name=f"lockspace-{spec.name}",
                                        daemon=True)

    # -- public ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> LockspaceState:
        return self._state

    @property
    def valid_until_s(self) -> float:
        """Our lease-clock time at which the host lease expires unless renewed."""
        return self.last_success_s + self.timeouts.id_renewal_fail_s

    def valid_at(self, now_s: float) -> bool:
        """Whether our host lease is held and unexpired at lease-clock time now_s."""
        return (self._state in (LockspaceState.HELD, LockspaceState.RENEWAL_FAILING)
                and now_s < self.valid_until_s)

    def start(self) -> None:
        self._thread.start()

    def wait_joined(self, timeout_s: float | None = None) -> None:
        """Block until the join finishes; raise its error if it failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while self._state == LockspaceState.JOINING:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"lockspace {self.name!r} still joining")
                self._changed.wait(remaining)
            if self._state in (LockspaceState.FAILED, LockspaceState.RELEASED) and self.error:
                raise self.error

    def stop(self, wait: bool = True, timeout_s: float | None = None) -> None:
        """Leave the lockspace: cancel a join in progress, or release the host_id."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(timeout_s)

    def is_running(self) -> bool:
        return self._thread.is_alive()

    def check_expiry(self, now_s: float) -> LockspaceState:
        """Fail the lockspace if the host lease outlived id_renewal_fail_s without renewal."""
        with self._lock:
            state = self._state
            expired = (state in (LockspaceState.HELD, LockspaceState.RENEWAL_FAILING)
                       and now_s >= self.valid_until_s)
        if expired:
            self._on(LockspaceEvent.LOST, HostLeaseExpired(
                f"lockspace {self.name!r}: no successful renewal for "
                f"{now_s - self.last_success_s:.1f} s (limit {self.timeouts.id_renewal_fail_s} s)"))
            self._stop.set()
        return self._state

    def hosts(self, host_id: int = 0) -> list[HostStatus]:
        with self._lock:
            if self.table is None:
                return []
            return self.table.status(self._now(), host_id)

    def flag_host(self, host_id: int) -> None:
        """Set host_id's bit in our delta bitmap for set_bitmap_seconds: "look at requests"."""
        with self._lock:
            self._flags[host_id] = self._now() + self.timeouts.set_bitmap_s

    def set_event(self, host_id: int, generation: int, event: int, data: int, *,
                  cur_generation: bool = False, clear_host: bool = False,
                  clear_event: bool = False, replace: bool = False,
                  all_hosts: bool = False) -> None:
        """Send a host event (sanlock's set_event): our next renewals carry it in our delta
        leader and set the target's bit (every host's with all_hosts) for set_bitmap_seconds.
        A different event (or data) still within that time is refused (LockspaceBusy) unless
        `replace`; the same one may go to more hosts (the last generation named is carried).
        cur_generation with generation 0 names the target's current generation; clear_host
        only clears its bit, clear_event withdraws the event."""
        if self.table is None:
            raise LockspaceBusy(f"lockspace {self.name!r} has no host table yet")
        max_hosts = self.table.geometry.max_hosts
        if not 1 <= host_id <= max_hosts:
            raise HostIdInvalid(f"host_id {host_id} is outside 1..{max_hosts}")
        now_s = self._now()
        targets = range(1, max_hosts + 1) if all_hosts else (host_id,)
        with self._lock:
            if clear_host or clear_event:
                for target in targets:
                    self._flags.pop(target, None)
                if clear_event:
                    self._outgoing = HostEvent(0, 0, max(1, int(now_s)))
                    self._outgoing_until_s = 0.0
                return
            if cur_generation and generation == 0 and not all_hosts:
                view = self.table.owner_view(host_id)
                generation = view.generation if view is not None else 0
            wanted = HostEvent(generation, event, data)
            pending = self._outgoing
            if (pending is not None and pending.event and now_s < self._outgoing_until_s
                    and (pending.event, pending.data) != (event, data) and not replace):
                raise LockspaceBusy(f"lockspace {self.name!r}: event {pending.event} is still "
                                    "being sent (replace it with the REPLACE flag)")
            self._outgoing = wanted
            self._outgoing_until_s = now_s + self.timeouts.set_bitmap_s
            for target in targets:
                if target != self.spec.host_id:
                    self._flags[target] = self._outgoing_until_s

    def _event_to_carry(self) -> HostEvent | None:
        with self._lock:
            return self._outgoing

    def _bitmap(self) -> bytes:
        now_s = self._now()
        with self._lock:
            live = {h for h, until in self._flags.items() if until > now_s}
        return set_host_bits(live) if live else b""

    def _news_for_us(self, area: bytes | memoryview) -> list[int]:
        """The slots of hosts that renewed since our last read with our bit set: each has a
        request for us to look at, and may carry an event for us."""
        assert self.table is not None
        ss = self.table.geometry.sector_size
        return [i for i in self.table.changed_last if i + 1 != self.spec.host_id
                and host_bit_is_set(area[i * ss:(i + 1) * ss], self.spec.host_id)]

    def _events_for_us(self, area: bytes | memoryview, senders: list[int]
                       ) -> list[ReceivedEvent]:
        """The non-zero events those senders carry. Delivered whatever generation they name
        (the listener gets it and judges, as sanlock's listeners do)."""
        assert self.table is not None
        ss = self.table.geometry.sector_size
        found = []
        for index in senders:
            try:
                leader = verify_delta(area[index * ss:(index + 1) * ss], self.name,
                                      self.spec.offset_b + index * ss)
            except CorruptRecord:
                continue
            event = HostEvent.carried_by(leader)
            if event.event:
                found.append(ReceivedEvent(self.spec.host_id, event, index + 1,
                                           leader.owner_generation))
        return found

    def owner_view(self, host_id: int) -> OwnerView | None:
        with self._lock:
            return None if self.table is None else self.table.owner_view(host_id)

    def history(self) -> list[RenewalRecord]:
        with self._lock:
            return list(self._history)

    # -- HostLeaseObserver (called on the renewal thread) -------------------------------------

    def joined(self, leader: Leader) -> None:
        with self._lock:
            self.generation = leader.owner_generation
            self.last_success_s = self.joined_s = float(leader.timestamp)
        log.info("lockspace %s: joined as host_id %d generation %d", self.name,
                 self.spec.host_id, leader.owner_generation)
        self._on(LockspaceEvent.JOINED)

    def renewed(self, outcome: RenewOutcome) -> None:
        record = RenewalRecord(
            time_s=outcome.read_started_s, timestamp=outcome.leader.timestamp,
            read_us=round(outcome.read_s * 1e6), write_us=round(outcome.write_s * 1e6),
            total_us=round((outcome.read_s + outcome.write_s) * 1e6),
        )
        with self._lock:
            self.last_success_s = float(outcome.leader.timestamp)
            self._history.append(record)
            senders: list[int] = []
            events: list[ReceivedEvent] = []
            if self.table is not None:
                self.table.observe(outcome.area, outcome.read_done_s)
                senders = self._news_for_us(outcome.area)
                if senders and self.on_event is not None:
                    events = self._events_for_us(outcome.area, senders)
        if self.on_renewal is not None:
            self.on_renewal(record)
        if senders and self.on_request is not None:
            self.on_request(self)
        if self.on_event is not None:
            for event in events:
                self.on_event(self, event)
        self._on(LockspaceEvent.RENEWED)

    def renewal_failed(self, error: LeasestoreError, started_s: float, elapsed_s: float) -> None:
        log.warning("lockspace %s: renewal failed: %s", self.name, error)
        record = RenewalRecord(started_s, 0, 0, 0, round(elapsed_s * 1e6), str(error))
        with self._lock:
            self._history.append(record)
        if self.on_renewal is not None:
            self.on_renewal(record)
        self._on(LockspaceEvent.RENEWAL_FAILED)

    def mismatch(self, message: str) -> None:
        log.warning("%s", message)

    def lost(self, error: LeasestoreError) -> None:
        log.error("lockspace %s: host lease lost: %s", self.name, error)
        self._on(LockspaceEvent.LOST, error)

    def released(self) -> None:
        self._on(LockspaceEvent.RELEASED)

    def may_release(self) -> bool:
        return self._state != LockspaceState.FAILED

    # -- internals -----------------------------------------------------------------------------

    def _on(self, event: LockspaceEvent, error: LeasestoreError | None = None) -> None:
        """Apply `event` through the transition table; waiters and `on_change` hear of every
        change of state (and only of changes). `error` says why, for LOST and RELEASED."""
        with self._changed:
            state = next_state(self._state, event)
            if state == self._state:
                return
            self._state = state
            if error is not None:
                self.error = error
            self._changed.notify_all()
        if self.on_change is not None:
            self.on_change(self)

    def _run(self) -> None:
        try:
            with self._open_device(self.spec.path) as device:
                DeviceRunner({self.spec.path: device}, self._stop).run(self.membership())
        except LeasestoreError as exc:  # the device would not open
            self._on(LockspaceEvent.LOST, exc)
        except Exception as exc:
            log.exception("lockspace %s: unexpected error", self.name)
            self._on(LockspaceEvent.LOST, LeasestoreError(f"internal error: {exc}"))
        finally:
            if self._state == LockspaceState.JOINING:
                self._on(LockspaceEvent.LOST, LeasestoreError("renewal thread ended"))

    def membership(self) -> Algorithm[None]:
        """Join, renew until stopped (Cancelled thrown into a Sleep) or lost, then release.
        Every outcome ends in a terminal state; nothing is raised to the runner."""
        device = self.spec.path
        try:
            geometry = yield from probe_geometry(
                device, self.spec.offset_b, self.spec.name, self.spec.host_id, self.timeouts)
            params = DeltaParams(device, self.spec.offset_b, geometry, self.spec.name,
                                 self.spec.host_id, self.host_name, self.timeouts,
                                 self._publish_fire_timeout)
            with self._lock:
                self.table = HostTable(geometry, self.spec.name, self.spec.host_id,
                                       self.timeouts)
            yield from host_lease_loop(params, self, self._bitmap, self._event_to_carry)
        except Cancelled:
            self._on(LockspaceEvent.RELEASED, Cancelled(f"join of {self.name!r} cancelled"))
        except LeasestoreError as exc:
            self._on(LockspaceEvent.LOST, exc)
        except Exception as exc:  # a bug must not leave waiters blocked forever
            log.exception("lockspace %s: unexpected error", self.name)
            self._on(LockspaceEvent.LOST, LeasestoreError(f"internal error: {exc}"))
        if self._state == LockspaceState.JOINING:
            self._on(LockspaceEvent.LOST, LeasestoreError("renewal ended before the join"))
