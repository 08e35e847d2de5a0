#!/usr/bin/env python3
"""Real-process chaos: leasestore daemons on loop devices over one shared file, with faults.

Each host is a daemon on its own loop device (all over one backing file, so they share one
disk) with workers that acquire a random resource, use it (writing a ledger line every 50 ms),
and release it. Hosts may join with different io_timeouts (`--io-timeouts 1,2`), and the area
may be formatted with yet another (`--format-io-timeout`). Faults, at random: SIGKILL and
SIGSTOP of daemons and workers; SIGKILL of a daemon that is then started again at once on the
same run dir while its workers still hold leases (the restarted daemon must end them before it
pets the watchdog); and `blockdev --setro` of a host's device for a while.

A hardware watchdog is emulated per host: the daemon's watchdog is a FIFO the tool reads; when
the daemon has not petted it for watchdog_fire_timeout, the tool SIGKILLs every process of that
host (a machine reset) and reboots the host a little later. That is the guarantee sanlock's
safety rests on, so hosts that hang or lose their device are fenced exactly as in production.

The checker reads the ledger afterwards: no two holdings of one resource may overlap in time,
and lver must increase strictly with each acquisition. Exit status 1 on any violation.

    python3 tools/chaos.py --hosts 3 --resources 2 --seconds 60 --seed 1 --json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leasestore import client
from leasestore.direct import format_lockspace, format_resource
from leasestore.errors import LeasestoreError
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file
from leasestore.timeouts import Timeouts

LOCKSPACE = "chaos"
MiB = 1 << 20
HEARTBEAT_S = 0.05


def resource_offset(index: int) -> int:
    return (index + 1) * MiB


# --- the worker (a separate process per worker) ------------------------------------------------


def worker_main(args: argparse.Namespace) -> int:
    """Acquire a random resource, use it (a ledger line every HEARTBEAT_S), release, repeat.

    Ledger lines: `A|H|R resource host_id lver monotonic_ns pid`. A holding is from its A line
    to its last H or R line; nothing is written for a lease after its R line."""
    rng = random.Random(args.seed)
    ledger = open(args.ledger, "a", buffering=1)  # noqa: SIM115 (open for the process' life)
    try:
        slkfd = client.register()
    except LeasestoreError:
        return 3  # the daemon is gone (its host was reset)
    while True:
        index = rng.randrange(args.resources)
        disks = [(args.device, resource_offset(index))]
        try:
            held = client.acquire(LOCKSPACE, f"res{index}", disks, slkfd=slkfd)
        except LeasestoreError:
            time.sleep(rng.uniform(0.05, 0.5))
            continue
        except OSError:
            return 3  # the daemon is gone: so is our registration
        lver = held["lver"]

        def note(kind: str, index: int = index, lver: int = lver) -> None:
            ledger.write(f"{kind} {index} {args.host_id} {lver} {time.monotonic_ns()} "
                         f"{os.getpid()}\n")

        note("A")
        until = time.monotonic() + rng.uniform(0.1, 1.5)
        while time.monotonic() < until:
            time.sleep(HEARTBEAT_S)
            note("H")
        note("R")
        try:
            client.release(LOCKSPACE, f"res{index}", disks, slkfd=slkfd)
        except LeasestoreError:
            pass
        except OSError:
            return 3  # the daemon is gone
        time.sleep(rng.uniform(0, 0.3))


# --- the ledger checker ------------------------------------------------------------------------


@dataclass
class Holding:
    resource: int
    host_id: int
    lver: int
    pid: int
    start_ns: int
    end_ns: int
    released: bool = False


def read_ledger(directory: Path) -> list[Holding]:
    """Every holding in every ledger file (a torn last line is ignored)."""
    holdings: list[Holding] = []
    for path in sorted(directory.glob("*.ledger")):
        current: dict[tuple[int, int, int], Holding] = {}
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 6 or parts[0] not in "AHR" or not all(p.isdigit() for p in parts[1:]):
                continue
            kind = parts[0]
            resource, host_id, lver, when_ns, pid = map(int, parts[1:])
            key = (resource, lver, pid)
            if kind == "A":
                current[key] = Holding(resource, host_id, lver, pid, when_ns, when_ns)
                holdings.append(current[key])
            elif key in current:
                current[key].end_ns = when_ns
                current[key].released = kind == "R"
    return holdings


@dataclass
class Verdict:
    violations: list[str]
    acquisitions: int
    takeovers: int


def check_ledger(holdings: list[Holding]) -> Verdict:
    """No two holdings of a resource overlap; lver rises strictly in order of acquisition."""
    violations: list[str] = []
    takeovers = 0
    for resource in sorted({h.resource for h in holdings}):
        ordered = sorted((h for h in holdings if h.resource == resource),
                         key=lambda h: h.start_ns)
        for i, first in enumerate(ordered):
            for later in ordered[i + 1:]:
                if later.start_ns > first.end_ns:
                    break
                violations.append(
                    f"res{resource}: host {first.host_id} (lver {first.lver}, pid {first.pid}) "
                    f"still used it {(first.end_ns - later.start_ns) / 1e6:.1f} ms after host "
                    f"{later.host_id} acquired lver {later.lver}")
        for before, after in itertools.pairwise(ordered):
            if after.lver <= before.lver:
                violations.append(f"res{resource}: lver {after.lver} (host {after.host_id}) "
                                  f"acquired after lver {before.lver} (host {before.host_id})")
            if not before.released:
                takeovers += 1
    return Verdict(violations, len(holdings), takeovers)


@dataclass(frozen=True)
class Restart:
    """A daemon started again on the run dir of one just killed, serving from `serving_ns`."""

    host_id: int
    serving_ns: int
    earlier_workers: frozenset[int]


RESTART_SLACK_NS = 100_000_000
"""A ledger line is written up to a heartbeat late; 0.1 s covers the write itself."""


def check_restarts(holdings: list[Holding], restarts: list[Restart]) -> list[str]:
    """No lease of a worker of the killed daemon is still used once the restarted daemon
    serves: the restarted daemon kills the recorded holders before it opens its socket."""
    violations: list[str] = []
    for restart in restarts:
        for h in holdings:
            if (h.pid in restart.earlier_workers and h.host_id == restart.host_id
                    and h.start_ns < restart.serving_ns
                    and h.end_ns > restart.serving_ns + RESTART_SLACK_NS):
                violations.append(
                    f"host {h.host_id}: worker {h.pid} still used res{h.resource} (lver "
                    f"{h.lver}) {(h.end_ns - restart.serving_ns) / 1e6:.0f} ms after the "
                    "restarted daemon began serving")
    return violations


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# --- hosts, fences and faults ------------------------------------------------------------------


class Fence:
    """An emulated hardware watchdog: a FIFO the daemon pets; fires fire_timeout_s after the
    last pet unless disarmed with 'V' (a clean daemon shutdown)."""

    def __init__(self, path: Path, fire_timeout_s: float) -> None:
        os.mkfifo(path)
        self.path = path
        self.fire_timeout_s = fire_timeout_s
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.last_pet_s: float | None = None

    def due(self, now_s: float) -> bool:
        """Read pending pets; whether the watchdog fires now. Fires a little early (by the
        tool's polling interval) so that polling never makes it late."""
        with contextlib.suppress(BlockingIOError):
            data = os.read(self._fd, 4096)
            if data:
                self.last_pet_s = None if data.endswith(b"V") else now_s
        return (self.last_pet_s is not None
                and now_s - self.last_pet_s > self.fire_timeout_s - 0.2)

    def reset(self) -> None:
        self.last_pet_s = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class Host:
    index: int
    device: str
    fence: Fence
    daemon: DaemonProc | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    io_timeout_s: int = 1
    booting: bool = False
    boots: int = 0
    down_until_s: float = 0.0
    run_dir_name: str = ""

    @property
    def host_id(self) -> int:
        return self.index + 1


class Chaos:
    def __init__(self, args: argparse.Namespace, base: Path, loops: LoopDevices) -> None:
        self.args = args
        self.base = base
        self.rng = random.Random(args.seed)
        io_timeouts = [int(x) for x in args.io_timeouts.split(",")]
        self.timeouts = Timeouts(max(io_timeouts), args.watchdog_fire_timeout)
        """The slowest host's: every wait here must outlast its host_dead."""
        self.ledgers = base / "ledger"
        self.ledgers.mkdir()
        self.faults: Counter[str] = Counter()
        self.restarts: list[Restart] = []
        self.lock = threading.RLock()
        self.closing = False
        self.stopped: dict[int, float] = {}
        """pid → when to SIGCONT it."""
        self.readonly: dict[str, float] = {}
        """device → when to make it writable again."""
        backing = make_file(base / "shared.img", (1 + args.resources) * MiB)
        self.hosts: list[Host] = []
        for index in range(args.hosts):
            device = loops.attach(backing)
            self.hosts.append(Host(index, device, Fence(base / f"wd{index}", self.timeouts.
                                                        watchdog_fire_timeout_s),
                                   io_timeout_s=io_timeouts[index % len(io_timeouts)]))
        format_lockspace(self.hosts[0].device, LOCKSPACE, 0,
                         io_timeout_s=args.format_io_timeout or io_timeouts[0])
        for index in range(args.resources):
            format_resource(self.hosts[0].device, LOCKSPACE, f"res{index}",
                            resource_offset(index))

    # -- host lifecycle ----------------------------------------------------------------------

    def boot(self, host: Host, restart_after_s: float | None = None) -> None:
        """Boot the host (a fresh run dir), or with `restart_after_s` start its daemon again on
        the run dir of the one just killed, whose workers may still run."""
        host.booting, host.boots = True, host.boots + 1
        if restart_after_s is None:
            host.run_dir_name = f"run{host.index}-{host.boots}"
        threading.Thread(target=self._boot, args=(host, host.boots, restart_after_s or 0.0),
                         daemon=True).start()

    def _boot(self, host: Host, boot: int, delay_s: float) -> None:
        time.sleep(delay_s)  # the restart comes this long after the daemon died
        try:
            daemon = DaemonProc(self.base, f"host{host.index}", host.io_timeout_s,
                                self.args.watchdog_fire_timeout, watchdog=str(host.fence.path),
                                run_dir_name=host.run_dir_name)
            with self.lock:
                if host.boots != boot:  # the host was reset while this daemon started
                    daemon.kill()
                    daemon.stop()
                    return
                host.daemon = daemon
                if delay_s:  # a restart: the earlier daemon's holders must be gone by now
                    self.restarts.append(Restart(host.host_id, time.monotonic_ns(),
                                                 frozenset(p.pid for p in host.workers)))
            self._admin(daemon, client.add_lockspace, LOCKSPACE, host.host_id, host.device, 0)
            for number in range(self.args.workers_per_host):
                self._start_worker(host, number)
        except (LeasestoreError, OSError, AssertionError) as exc:
            print(f"host {host.host_id}: boot {boot} failed: {exc}", file=sys.stderr)
            with self.lock:
                self.faults["failed_boot"] += 1
                self._reset(host, time.monotonic(), count=False)
            return
        finally:
            if host.boots == boot:
                host.booting = False
        self._administer(host, daemon)

    def _administer(self, host: Host, daemon: DaemonProc) -> None:
        """What an operator's agent does: when the lockspace has failed (its holders killed),
        remove it and add it again once the storage allows."""
        while host.daemon is daemon and daemon.proc.poll() is None and not self.closing:
            time.sleep(0.5)
            if daemon.proc.pid in self.stopped:
                continue
            try:
                states = {ls["lockspace"]: ls["state"]
                          for ls in self._admin(daemon, client.get_lockspaces)}
                if states.get(LOCKSPACE) == "failed":
                    self._admin(daemon, client.rem_lockspace, LOCKSPACE, host.host_id,
                                host.device, 0)
                    with self.lock:
                        self.faults["lockspace_failed"] += 1
                elif LOCKSPACE not in states:
                    self._admin(daemon, client.add_lockspace, LOCKSPACE, host.host_id,
                                host.device, 0)
            except (LeasestoreError, OSError):
                continue

    @staticmethod
    def _admin(daemon: DaemonProc, operation: Callable[..., Any], *args: Any) -> Any:
        """One request to this daemon (threads here must not share the run-dir variable)."""
        with client.using(daemon.run_dir):
            return operation(*args)

    def _start_worker(self, host: Host, number: int) -> None:
        daemon = host.daemon
        if daemon is None:
            return
        seed = self.rng.randrange(1 << 30)
        ledger = self.ledgers / f"host{host.index}-boot{host.boots}-w{number}-{seed}.ledger"
        env = {**os.environ, "LEASESTORE_RUN_DIR": daemon.run_dir}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--ledger", str(ledger), "--device",
             host.device, "--resources", str(self.args.resources), "--host-id",
             str(host.host_id), "--seed", str(seed)], env=env)
        with self.lock:
            host.workers.append(proc)

    def _reset(self, host: Host, now_s: float, count: bool = True) -> None:
        """A machine reset: every process of the host dies at once. Caller holds the lock."""
        for proc in [*host.workers, *([host.daemon.proc] if host.daemon else [])]:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self.stopped.pop(proc.pid, None)
        for proc in host.workers:
            proc.wait()
        if host.daemon is not None:
            host.daemon.proc.wait()
            host.daemon.stop()
        host.workers, host.daemon = [], None
        host.boots += 1  # a boot under way (a daemon restart) is void
        host.fence.reset()
        host.down_until_s = now_s + self.rng.uniform(0.5, 3.0)
        if count:
            self.faults["watchdog_reset"] += 1
            log(f"host {host.host_id}: watchdog reset")

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        start = time.monotonic()
        end = start + self.args.seconds
        next_fault = start + self.rng.uniform(1, 3)
        for host in self.hosts:
            self.boot(host)
        while (now := time.monotonic()) < end:
            with self.lock:
                self._tick(now)
                if now >= next_fault:
                    self._inject(now)
                    next_fault = now + self.rng.uniform(1, 4)
            time.sleep(0.02)

    def _tick(self, now: float) -> None:
        for pid, until in list(self.stopped.items()):
            if now >= until:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                del self.stopped[pid]
        for device, until in list(self.readonly.items()):
            if now >= until:
                subprocess.run(["blockdev", "--setrw", device], check=True)
                del self.readonly[device]
        for host in self.hosts:
            if host.fence.due(now) and not self.args.no_fence:
                self._reset(host, now)
            if host.booting:
                continue
            alive = host.daemon is not None and host.daemon.proc.poll() is None
            if not alive and host.daemon is None and now >= host.down_until_s:
                self.boot(host)
            elif alive and host.daemon is not None and host.daemon.proc.pid not in self.stopped:
                self._respawn_workers(host)

    def _respawn_workers(self, host: Host) -> None:
        for number, proc in enumerate(list(host.workers)):
            if proc.poll() is not None and self.rng.random() < 0.05:
                host.workers.remove(proc)
                self._start_worker(host, number)

    def _inject(self, now: float) -> None:
        host = self.rng.choice(self.hosts)
        if host.booting or host.daemon is None or host.daemon.proc.poll() is not None:
            return
        kind = self.rng.choice(["kill_daemon", "restart_daemon", "stop_daemon", "kill_worker",
                                "kill_worker", "stop_worker", "stop_worker", "setro"])
        try:
            if not self._apply(host, kind, now):
                return
        except ProcessLookupError:
            return  # it died on its own just now
        self.faults[kind] += 1
        log(f"host {host.host_id}: {kind}")

    def _apply(self, host: Host, kind: str, now: float) -> bool:
        """Inject one fault; False if there was nothing to inject it into."""
        assert host.daemon is not None
        dead_s = self.timeouts.host_dead_s
        if kind == "kill_daemon":
            host.daemon.proc.kill()
        elif kind == "restart_daemon":
            if host.daemon.proc.pid in self.stopped:
                return False
            host.daemon.proc.kill()
            host.daemon.proc.wait()
            host.daemon.stop()
            host.daemon = None  # its workers run on, holding what they held
            self.boot(host, restart_after_s=self.rng.uniform(0.1, 1.0))
        elif kind == "stop_daemon":
            pid = host.daemon.proc.pid
            os.kill(pid, signal.SIGSTOP)
            self.stopped[pid] = now + self.rng.uniform(0.5, 1.5 * dead_s)
        elif kind in ("kill_worker", "stop_worker"):
            running = [p for p in host.workers if p.poll() is None and p.pid not in self.stopped]
            if not running:
                return False
            proc = self.rng.choice(running)
            if kind == "kill_worker":
                proc.kill()
            else:
                os.kill(proc.pid, signal.SIGSTOP)
                self.stopped[proc.pid] = now + self.rng.uniform(0.5, dead_s)
        elif kind == "setro":
            if host.device in self.readonly:
                return False
            subprocess.run(["blockdev", "--setro", host.device], check=True)
            self.readonly[host.device] = now + self.rng.uniform(1, 1.5 * dead_s)
        return True

    def stop(self) -> None:
        if self.closing:
            return
        with self.lock:
            self.closing = True
            for pid in list(self.stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self.stopped.clear()
            for device in list(self.readonly):
                subprocess.run(["blockdev", "--setrw", device], check=False)
            self.readonly.clear()
            for host in self.hosts:
                for proc in host.workers:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
                host.workers = []
        log("stopping: workers killed")
        deadline = time.monotonic() + 60
        while any(h.booting for h in self.hosts) and time.monotonic() < deadline:
            time.sleep(0.1)  # a boot thread still joining: let it finish before stopping
        for host in self.hosts:
            for proc in host.workers:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
            if host.daemon is not None:
                host.daemon.stop()
                log(f"host {host.host_id}: daemon stopped")
            host.fence.close()


@contextlib.contextmanager
def chaos_run(args: argparse.Namespace) -> Iterator[Chaos]:
    loops = LoopDevices()
    with tempfile.TemporaryDirectory(prefix="leasestore-chaos-") as tmp:
        chaos: Chaos | None = None
        try:
            chaos = Chaos(args, Path(tmp), loops)
            yield chaos
        finally:
            if chaos is not None:
                chaos.stop()
            loops.detach_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--resources", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers-per-host", type=int, default=2)
    parser.add_argument("--io-timeouts", default="1,2",
                        help="io_timeouts the hosts join with, in turn (comma-separated)")
    parser.add_argument("--format-io-timeout", type=int, default=0,
                        help="io_timeout the area is formatted with (default: the first)")
    parser.add_argument("--watchdog-fire-timeout", type=float, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-fence", action="store_true",
                        help="UNSAFE: never reset a host whose daemon stopped petting its "
                             "watchdog (shows what the checker catches without one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ledger", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--host-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if os.geteuid() != 0:
        parser.error("needs root (loop devices, blockdev)")
    if args.hosts < 2 or args.resources < 1:
        parser.error("need --hosts ≥ 2 and --resources ≥ 1")

    with chaos_run(args) as chaos:
        chaos.run()
        faults = dict(sorted(chaos.faults.items()))
        ledgers = chaos.ledgers
        chaos.stop()
        holdings = read_ledger(ledgers)
        verdict = check_ledger(holdings)
        verdict.violations.extend(check_restarts(holdings, chaos.restarts))
    for violation in verdict.violations:
        print(f"VIOLATION: {violation}")
    print(f"{args.hosts} hosts × {args.resources} resources for {args.seconds:g} s "
          f"(seed {args.seed}): {len(verdict.violations)} violations, "
          f"{verdict.acquisitions} acquisitions, {verdict.takeovers} takeovers, faults {faults}")
    if args.json:
        print(json.dumps({"violations": len(verdict.violations),
                          "acquisitions": verdict.acquisitions, "takeovers": verdict.takeovers,
                          "faults": faults}))
    return 1 if verdict.violations else 0


if __name__ == "__main__":
    sys.exit(main())
