"""Hostile input that needs no daemon: the wire parser under every malformed message, and the
daemon's start-up checks of its run dir. (The same fuzz corpus against a running daemon is in
test_resource_real.py, which has one.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leasestore.daemon import wire
from leasestore.daemon.config import DaemonConfig
from leasestore.daemon.server import Daemon
from leasestore.errors import LeasestoreError, UsageError
from leasestore.testing.wirefuzz import BASELINES, hostile_lines


def test_every_hostile_line_parses_or_raises_a_protocol_level_error() -> None:
    """Each malformed line is refused with ProtocolError (nothing else escapes the parser),
    and a line that is accepted is a well-formed command: encoding it again gives a line that
    parses to the same command."""
    refused: dict[str, int] = {}
    accepted = 0
    for line in hostile_lines():
        try:
            seq, command = wire.parse_request(line.rstrip(b"\n"))
        except LeasestoreError as exc:
            refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
            continue
        accepted += 1
        assert command.name in BASELINES
        again = wire.parse_request(wire.encode_request(seq, command).rstrip(b"\n"))
        assert again == (seq, command), line
    assert set(refused) == {"ProtocolError"}, refused
    assert refused["ProtocolError"] > 4 * accepted, (refused, accepted)


def test_baselines_round_trip_through_the_wire() -> None:
    for seq, (name, args) in enumerate(BASELINES.items(), start=1):
        command = wire.command_from(name, args)
        line = wire.encode_request(seq, command)
        assert line.endswith(b"\n") and len(line) <= wire.MAX_MESSAGE_B
        assert wire.parse_request(line.rstrip(b"\n")) == (seq, command)


def _daemon(run_dir: Path) -> Daemon:
    return Daemon(DaemonConfig(run_dir=str(run_dir), host_name="perm-test"))


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_run_dir_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(mode)
    with pytest.raises(UsageError, match="writable"):
        _daemon(run_dir).open()
    assert not (run_dir / wire.SOCKET_NAME).exists()


def test_a_run_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("LEASESTORE_REQUIRE_BLOCKDEV") == "1":
            pytest.fail("root is required (LEASESTORE_REQUIRE_BLOCKDEV=1)")
        pytest.skip("needs root to give the directory away")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(UsageError, match="owned by uid 65534"):
        _daemon(run_dir).open()


def test_the_socket_is_not_open_to_other_users(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path / "run")
    daemon.open()
    try:
        mode = os.stat(daemon.socket_path).st_mode & 0o777
        assert mode & 0o007 == 0, oct(mode)
        assert os.stat(tmp_path / "run").st_mode & 0o022 == 0
    finally:
        daemon.shutdown()
        daemon._close()
