"""`leasestore systemd`: print the shipped unit file (with this installation's program path)
or the example configuration, for an operator to install."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

SHIPPED_PROGRAM = "/usr/local/bin/leasestore"


def register(sub: Any) -> None:
    systemd = sub.add_parser("systemd", help="print the systemd unit or the example config")
    what = systemd.add_mutually_exclusive_group(required=True)
    what.add_argument("--unit", action="store_true",
                      help="the unit file, for /etc/systemd/system/leasestore.service")
    what.add_argument("--config", action="store_true",
                      help="the example configuration, for /etc/leasestore/leasestore.toml")
    systemd.set_defaults(handler=run_systemd)


def shipped(name: str) -> str:
    return resources.files("leasestore").joinpath("systemd", name).read_text()


def program() -> str:
    """How systemd should start this installation's `leasestore`: the console script beside
    this Python, else the one on PATH, else this Python running the module."""
    beside = Path(sys.executable).parent / "leasestore"
    if beside.is_file():
        return str(beside)
    found = shutil.which("leasestore")
    return found if found else f"{shlex.quote(sys.executable)} -m leasestore.cli.main"


def run_systemd(args: argparse.Namespace) -> int:
    if args.unit:
        sys.stdout.write(shipped("leasestore.service").replace(SHIPPED_PROGRAM, program()))
    else:
        sys.stdout.write(shipped("leasestore.toml"))
    return 0
