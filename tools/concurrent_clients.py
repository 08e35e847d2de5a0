#!/usr/bin/env python3
"""Throughput of one daemon serving N client processes at once.

Each client registers, then acquires and releases its own resource lease (all on one loop
device) `--rounds` times as fast as it can; the clients start together. Prints the wall time
and acquire+release pairs per second. Needs root (a loop device); stops the daemon it starts
and detaches the device.

    python3 tools/concurrent_clients.py --clients 4 --rounds 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from leasestore import client
from leasestore.direct import format_lockspace, format_resource
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file

MiB = 1 << 20
LOCKSPACE = "conc"
CLIENT = r"""
import json, sys, time
from leasestore import client
lockspace, resource, path, offset, rounds = sys.argv[1:6]
disks = [(path, int(offset))]
fd = client.register()
print("ready", flush=True)
sys.stdin.readline()
started = time.perf_counter()
for _ in range(int(rounds)):
    client.acquire(lockspace.encode(), resource.encode(), disks, slkfd=fd)
    client.release(lockspace.encode(), resource.encode(), disks, slkfd=fd)
print(json.dumps(time.perf_counter() - started), flush=True)
"""


def run(clients: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="leasestore-conc-") as tmp:
        base, loops = Path(tmp), LoopDevices()
        try:
            device = loops.attach(make_file(base / "shared.img", (clients + 2) * MiB,
                                            allocate=True))
            format_lockspace(device, LOCKSPACE, 0, io_timeout_s=1)
            for index in range(clients):
                format_resource(device, LOCKSPACE, f"r{index}", (index + 1) * MiB)
            daemon = DaemonProc(base, "conc", io_timeout_s=1, watchdog_fire_timeout_s=60)
            try:
                daemon.call(client.add_lockspace, LOCKSPACE, 1, device, 0)
                env = {**os.environ, "LEASESTORE_RUN_DIR": daemon.run_dir}
                procs = [subprocess.Popen(
                    [sys.executable, "-c", CLIENT, LOCKSPACE, f"r{index}", device,
                     str((index + 1) * MiB), str(rounds)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                    for index in range(clients)]
                try:
                    for proc in procs:
                        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
                    started = time.perf_counter()
                    for proc in procs:
                        assert proc.stdin is not None
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                    for proc in procs:
                        assert proc.stdout is not None
                        json.loads(proc.stdout.readline())
                    wall_s = time.perf_counter() - started
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
            finally:
                daemon.stop()
        finally:
            loops.detach_all()
    return {"clients": clients, "rounds": rounds, "wall_s": wall_s,
            "pairs_per_s": clients * rounds / wall_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("concurrent_clients: needs root for a loop device", file=sys.stderr)
        return 2
    result = run(args.clients, args.rounds)
    print(f"{result['clients']} clients x {result['rounds']} acquire+release: wall "
          f"{result['wall_s']:.2f} s, {result['pairs_per_s']:.0f} pairs/s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
