"""`leasestore demo`: the main job on an embedded default, a file-backed shared disk in a temp dir.

It formats a lockspace and a resource lease, starts three daemons as three hosts (io_timeout 1 s,
watchdog_fire_timeout 5 s, so host_dead is 13 s), joins them, runs a worker holding the lease on
host 1, and kills host 1 (its daemon and its worker, as a machine failure would). Host 2 is
refused while host 1 looks alive, judges it FAIL then DEAD on its own clock, and takes the lease
over with a larger lver. Every process and file the demo made is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leasestore import client, direct
from leasestore.cli.area_cmds import print_table
from leasestore.daemon.commands import RUN_DIR_ENV
from leasestore.daemon.sanlock_proto import SOCKET_NAME
from leasestore.errors import AcquireIdLive
from leasestore.ondisk.leader import Leader
from leasestore.timeouts import Timeouts
from leasestore.units import MiB

DISK_SIZE_B = 4 * MiB
LOCKSPACE = "demo-space"
IO_TIMEOUT_S = 1
WATCHDOG_FIRE_TIMEOUT_S = 5
HOSTS = 3


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the demo on a file-backed shared disk in a temp dir")
    demo.add_argument("--dir", help="parent directory for the temp dir (default: system temp)")
    demo.set_defaults(handler=run_demo)


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def step(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.3f}s] {message}", flush=True)


def _start_daemon(base: Path, index: int) -> tuple[subprocess.Popen[bytes], str]:
    run_dir = str(base / f"host{index}")
    log = (base / f"host{index}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "leasestore.cli.main", "daemon", "--run-dir", run_dir,
         "--host-name", f"demo-host-{index}", "--io-timeout", str(IO_TIMEOUT_S),
         "--watchdog-fire-timeout", str(WATCHDOG_FIRE_TIMEOUT_S)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(run_dir, SOCKET_NAME)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon {index} did not start; see {base}/host{index}.log")
        time.sleep(0.05)
    return proc, run_dir


def _start_worker(run_dir: str, resource: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "leasestore.cli.main", "client", "--run-dir", run_dir,
         "command", "-r", resource, "-c", "sleep", "600"])


def _wait_for_owner(disk: str, owner: int) -> Leader:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leader = direct.read_paxos_leader(disk, MiB)
        if leader.owner_id == owner and leader.timestamp:
            return leader
        time.sleep(0.1)
    raise RuntimeError(f"host {owner} never acquired the lease")


def _try_acquire(clock: Clock, run_dir: str, disk: str, expect_refused: bool) -> bool:
    os.environ[RUN_DIR_ENV] = run_dir
    try:
        held = client.acquire(LOCKSPACE, "vm-disk-1", [(disk, MiB)])
    except AcquireIdLive as exc:
        if expect_refused:
            clock.step(f"host 2 asks for the lease: refused ({exc})")
        return False
    clock.step(f"host 2 acquired 'vm-disk-1': lver {held['lver']}")
    client.release(LOCKSPACE, "vm-disk-1", [(disk, MiB)])
    clock.step("host 2 released it again")
    return True


def _take_over(clock: Clock, run_dir: str, disk: str, timeouts: Timeouts) -> None:
    deadline = time.monotonic() + timeouts.host_dead_s + 20
    while not _try_acquire(clock, run_dir, disk, expect_refused=False):
        if time.monotonic() > deadline:
            raise RuntimeError("host 2 never took the lease over")
        time.sleep(0.5)


def _hosts(run_dir: str) -> dict[int, dict[str, Any]]:
    os.environ[RUN_DIR_ENV] = run_dir
    return {h["host_id"]: h for h in client.get_hosts(LOCKSPACE)}


def _watch_death(clock: Clock, observer_dir: str, victim: int, timeouts: Timeouts) -> None:
    last_state = ""
    deadline = time.monotonic() + timeouts.host_dead_s + 15
    while time.monotonic() < deadline:
        view = _hosts(observer_dir)[victim]
        if view["state"] != last_state:
            last_state = view["state"]
            clock.step(f"host 2 sees host {victim}: {last_state.upper()} "
                       f"(its last timestamp {view['timestamp']})")
        if last_state == "dead":
            return
        time.sleep(0.25)
    raise RuntimeError("host 1 was never judged dead")


def _format(clock: Clock, disk: Path, timeouts: Timeouts) -> None:
    with disk.open("wb") as f:
        f.truncate(DISK_SIZE_B)
    clock.step(f"created a {DISK_SIZE_B // MiB} MiB shared disk at {disk}")
    geometry = direct.format_lockspace(str(disk), LOCKSPACE, 0, io_timeout_s=IO_TIMEOUT_S)
    direct.format_resource(str(disk), LOCKSPACE, "vm-disk-1", MiB)
    clock.step(f"formatted lockspace {LOCKSPACE!r} ({geometry}, {geometry.max_hosts} "
               "host slots) and resource 'vm-disk-1' at 1 MiB")
    clock.step(f"timings from io_timeout {IO_TIMEOUT_S} s: renew every "
               f"{timeouts.id_renewal_s:g} s, fail after {timeouts.id_renewal_fail_s:g} s, "
               f"dead after {timeouts.host_dead_s:g} s")


def _start_hosts(clock: Clock, base: Path, disk: Path,
                 procs: list[subprocess.Popen[bytes]]) -> list[str]:
    dirs = []
    for index in range(1, HOSTS + 1):
        proc, run_dir = _start_daemon(base, index)
        procs.append(proc)
        dirs.append(run_dir)
    clock.step(f"started {HOSTS} daemons (pids {', '.join(str(p.pid) for p in procs)})")
    for index, run_dir in enumerate(dirs, start=1):
        os.environ[RUN_DIR_ENV] = run_dir
        began = time.monotonic()
        client.add_lockspace(LOCKSPACE, index, str(disk), 0)
        clock.step(f"host {index} joined as host_id {index} in "
                   f"{time.monotonic() - began:.2f} s")
    deadline = time.monotonic() + 15
    while any(h["state"] != "live" for h in _hosts(dirs[1]).values()):
        if time.monotonic() > deadline:
            raise RuntimeError("hosts never saw each other live")
        time.sleep(0.25)
    clock.step("host 2 sees: " + ", ".join(
        f"host {i} {h['state'].upper()}" for i, h in sorted(_hosts(dirs[1]).items())))
    return dirs


def _story(clock: Clock, disk: Path, dirs: list[str], procs: list[subprocess.Popen[bytes]],
           timeouts: Timeouts) -> None:
    worker = _start_worker(dirs[0], f"{LOCKSPACE}:vm-disk-1:{disk}:{MiB}")
    procs.append(worker)
    leader = _wait_for_owner(str(disk), 1)
    clock.step(f"a worker (pid {worker.pid}) holds 'vm-disk-1' on host 1: lver "
               f"{leader.lver}, owner host {leader.owner_id}")
    _try_acquire(clock, dirs[1], str(disk), expect_refused=True)
    for proc in (procs[0], worker):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    clock.step("host 1 died: its daemon and its worker were killed with SIGKILL")
    _watch_death(clock, dirs[1], 1, timeouts)
    _take_over(clock, dirs[1], str(disk), timeouts)


def _stop(clock: Clock, procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    clock.step(f"stopped {len(procs)} processes")


def run_demo(args: argparse.Namespace) -> int:
    clock = Clock()
    timeouts = Timeouts(IO_TIMEOUT_S, WATCHDOG_FIRE_TIMEOUT_S)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="leasestore-demo-", dir=args.dir) as tmp:
        base = Path(tmp)
        disk = base / "shared-disk.img"
        try:
            _format(clock, disk, timeouts)
            dirs = _start_hosts(clock, base, disk, procs)
            _story(clock, disk, dirs, procs, timeouts)
            records = [r for r in direct.dump(str(disk)) if r.kind != "delta" or r.acquired]
            clock.step("the shared disk now holds:")
            print_table(records)
        finally:
            _stop(clock, procs)
    clock.step("removed the temp dir; done")
    return 0
