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
    accepted: dict[str, int] = {}
    lines = 0
    for line in hostile_lines():
        lines += 1
        try:
            _seq, command = wire.parse_request(line.rstrip(b"\n"))
        except LeasestoreError:
            continue
        accepted[command.name] = accepted.get(command.name, 0) + 1
    assert lines > 1000
    assert set(accepted) <= set(BASELINES)


def test_baselines_are_well_formed() -> None:
    for name, args in BASELINES.items():
        command = wire.command_from(name, args)
        assert command.name == name


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
