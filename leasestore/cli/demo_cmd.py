"""`leasestore demo`: the main job on an embedded default, a file-backed shared disk in a temp dir.

It formats a lockspace and a resource lease, dumps them, and removes everything it made.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from leasestore import direct
from leasestore.cli.area_cmds import print_table
from leasestore.units import MiB

DISK_SIZE_B = 4 * MiB


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the demo on a file-backed shared disk in a temp dir")
    demo.add_argument("--dir", help="parent directory for the temp dir (default: system temp)")
    demo.set_defaults(handler=run_demo)


def step(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.3f}s] {message}", flush=True)


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="leasestore-demo-", dir=args.dir) as tmp:
        disk = Path(tmp) / "shared-disk.img"
        with disk.open("wb") as f:
            f.truncate(DISK_SIZE_B)
        step(f"created a {DISK_SIZE_B // MiB} MiB shared disk at {disk}", started)
        geometry = direct.format_lockspace(str(disk), "demo-space", 0, io_timeout_s=1)
        step(f"formatted lockspace 'demo-space' at offset 0 ({geometry}, "
             f"{geometry.max_hosts} host slots)", started)
        direct.format_resource(str(disk), "demo-space", "vm-disk-1", MiB)
        step("formatted resource 'vm-disk-1' at offset 1 MiB", started)
        records = direct.dump(str(disk))
        shown = [r for r in records if r.kind != "delta" or r.acquired]
        step(f"dump found {len(records)} records ({len(records) - len(shown)} free host "
             "slots hidden):", started)
        print_table(shown)
    step("removed the temp dir; done", started)
    return 0
