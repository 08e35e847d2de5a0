"""The shipped systemd unit and example configuration: the unit passes `systemd-analyze
verify`, keeps what makes a restart safe (the run dir and its holder record survive the daemon;
only the daemon is killed), and starts a daemon with exactly the example configuration, which
loads as it is."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from leasestore.cli.main import build_parser, main
from leasestore.daemon.config import DaemonConfig


def _printed(option: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["systemd", option]) == 0
    return capsys.readouterr().out


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_the_unit_makes_restarts_safe_and_notifies(capsys: pytest.CaptureFixture[str]) -> None:
    service = _unit(_printed("--unit", capsys))["Service"]
    assert service["Type"] == "notify"
    assert service["RuntimeDirectory"] == "leasestore"
    assert service["RuntimeDirectoryPreserve"] == "yes"  # the holder record outlives a crash
    assert service["KillMode"] == "process"
    assert service["Restart"] == "on-failure"
    argv = shlex.split(service["ExecStart"])
    program = argv[0]
    assert os.access(program, os.X_OK), program
    args = build_parser().parse_args(argv[argv.index("daemon"):])
    assert args.command == "daemon" and args.config == "/etc/leasestore/leasestore.toml"


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is needed (.ci/run installs systemd)"
    unit = tmp_path / "leasestore.service"
    unit.write_text(_printed("--unit", capsys))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          check=False)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if "leasestore.service" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_the_example_config_loads_as_shipped(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "leasestore.toml"
    path.write_text(_printed("--config", capsys))
    config = DaemonConfig.load(str(path))
    assert (config.run_dir, config.io_timeout, config.watchdog) == (
        "/run/leasestore", 10, "/dev/watchdog")
    assert config.watchdog_fire_timeout == 60 and not config.metrics_address
