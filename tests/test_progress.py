"""Long waits show an elapsed-time line on a terminal, and nothing elsewhere (logs, pipes)."""

from __future__ import annotations

import io
import sys

import pytest

from leasestore.cli import progress
from leasestore.testing.procs import poll


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _wait_for_ticks(stream: io.StringIO, ticks: int) -> None:
    poll(lambda: stream.getvalue().count("joining LS") >= ticks, 10, what="progress ticks")


def test_a_wait_on_a_terminal_shows_what_and_how_long(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.while_waiting("joining LS as host_id 1"):
        _wait_for_ticks(terminal, 3)
    assert "joining LS as host_id 1: 00:00" in terminal.getvalue()


def test_no_progress_when_not_a_terminal_or_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    with progress.while_waiting("joining LS"):
        pass
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.while_waiting("joining LS", quiet=True):
        pass
    assert pipe.getvalue() == "" and terminal.getvalue() == ""
