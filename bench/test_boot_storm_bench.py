"""A boot storm: 100 registered processes acquire 100 distinct leases at once, then release them
at once, through python3-sanlock (the same client) against sanlock's daemon and against
leasestore's, each daemon on its own twin loop device, rounds alternating A B A B.

Each process registers and opens its lease's acquire only when the storm starts (a line on its
stdin), reports when it holds, and releases on a second line. Timed: from the start of the storm
until the last process holds, and from the release signal until the last has released; and the
daemon's CPU time (user + system, /proc/PID/stat) per acquire + release. Results:
bench/boot_storm_results.json and the terminal summary.
"""

from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from leasestore.testing.sidebyside import (
    LOCKSPACE,
    RESOURCE_AT,
    SANLOCK_PYTHON,
    lease_name,
    prerequisites_missing,
    twins,
)

from .conftest import STORM_REPORTS

MiB = 1 << 20
PROCESSES = 100
ROUNDS = 3
STORM = r"""
import sys, time, sanlock
lockspace, resource, path, offset = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fd = sanlock.register()
print("ready", flush=True)
sys.stdin.readline()
sanlock.acquire(lockspace.encode(), resource.encode(), [(path, offset)], slkfd=fd)
print("held", time.monotonic(), flush=True)
sys.stdin.readline()
sanlock.release(lockspace.encode(), resource.encode(), [(path, offset)], slkfd=fd)
print("released", time.monotonic(), flush=True)
"""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_all(procs: list[subprocess.Popen[str]], word: str) -> float:
    """The latest time (monotonic) at which a process printed `word`."""
    selector = selectors.DefaultSelector()
    for proc in procs:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ, proc)
    latest, waiting = 0.0, len(procs)
    deadline = time.monotonic() + 120
    while waiting:
        assert time.monotonic() < deadline, f"{waiting} processes never said {word}"
        for key, _ in selector.select(timeout=1):
            line = key.fileobj.readline()  # type: ignore[union-attr]
            verb, _, at = line.strip().partition(" ")
            assert verb == word, line
            latest = max(latest, float(at) if at else time.monotonic())
            selector.unregister(key.fileobj)
            waiting -= 1
    return latest


def _tell_all(procs: list[subprocess.Popen[str]], line: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


def _storm(env: dict[str, str], device: str, daemon_pid: int) -> dict[str, float]:
    procs = [subprocess.Popen([SANLOCK_PYTHON, "-c", STORM, LOCKSPACE, lease_name(i), device,
                               str(RESOURCE_AT + i * MiB)],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
             for i in range(PROCESSES)]
    try:
        _wait_all(procs, "ready")
        cpu_before = _cpu_s(daemon_pid)
        started = time.monotonic()
        _tell_all(procs, "go")
        all_held = _wait_all(procs, "held")
        release_at = time.monotonic()
        _tell_all(procs, "release")
        all_released = _wait_all(procs, "released")
        cpu_s = _cpu_s(daemon_pid) - cpu_before
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {"acquire_all_s": all_held - started, "release_all_s": all_released - release_at,
            "daemon_cpu_ms_per_lease": cpu_s * 1e3 / PROCESSES}


def test_boot_storm_beside_sanlock(tmp_path_factory: pytest.TempPathFactory) -> None:
    missing = prerequisites_missing()
    if missing:
        pytest.skip(missing)
    with twins(tmp_path_factory.mktemp("storm"), leases=PROCESSES) as pair:
        sides = {
            "sanlock": (pair.sanlock.env, pair.devices["sanlock"], pair.sanlock.proc.pid),
            "leasestore": ({**os.environ, "SANLOCK_RUN_DIR": pair.ours.run_dir},
                           pair.devices["leasestore"], pair.ours.pid),
        }
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(ROUNDS):
            for side, (env, device, pid) in sides.items():
                runs[side].append(_storm(env, device, pid))
    report: dict[str, Any] = {"processes": PROCESSES, "rounds": ROUNDS}
    for metric in ("acquire_all_s", "release_all_s", "daemon_cpu_ms_per_lease"):
        medians = {side: statistics.median(r[metric] for r in runs[side]) for side in runs}
        report[metric] = {**medians, "ratio": medians["leasestore"] / medians["sanlock"]}
    STORM_REPORTS.append(report)
    Path(__file__).with_name("boot_storm_results.json").write_text(json.dumps(report, indent=1))
    assert all(len(r) == ROUNDS for r in runs.values())
