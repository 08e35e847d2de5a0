"""The lockspace's transition table: what each event does in each state."""

from __future__ import annotations

import itertools

import pytest

from leasestore.errors import LeasestoreError
from leasestore.lockspace import TERMINAL, LockspaceEvent, LockspaceState, next_state

S, E = LockspaceState, LockspaceEvent


@pytest.mark.parametrize(("state", "event", "expected"), [
    (S.JOINING, E.JOINED, S.HELD),
    (S.JOINING, E.RENEWED, S.JOINING),
    (S.JOINING, E.LOST, S.FAILED),
    (S.JOINING, E.RELEASED, S.RELEASED),
    (S.HELD, E.RENEWAL_FAILED, S.RENEWAL_FAILING),
    (S.RENEWAL_FAILING, E.RENEWED, S.HELD),
    (S.RENEWAL_FAILING, E.LOST, S.FAILED),
    (S.HELD, E.RELEASED, S.RELEASED),
])
def test_legal_transitions(state: LockspaceState, event: LockspaceEvent,
                           expected: LockspaceState) -> None:
    assert next_state(state, event) == expected


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_absorb_every_event(state: LockspaceState) -> None:
    for event in LockspaceEvent:
        assert next_state(state, event) == state


def test_a_second_join_is_refused() -> None:
    for state in (S.HELD, S.RENEWAL_FAILING):
        with pytest.raises(LeasestoreError, match="internal error"):
            next_state(state, E.JOINED)


def test_no_event_leads_back_to_joining_or_out_of_a_terminal_state() -> None:
    for state, event in itertools.product(LockspaceState, LockspaceEvent):
        try:
            following = next_state(state, event)
        except LeasestoreError:
            continue
        assert following != S.JOINING or state == S.JOINING
        assert state not in TERMINAL or following == state
