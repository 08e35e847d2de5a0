"""Drive sanlock's own clients (the `sanlock client` CLI and python3-sanlock) against a daemon
that serves `<run_dir>/sanlock.sock`, and normalise what they print, so that the answers of the
real sanlock daemon and of leasestore's can be compared step by step.

A scenario is a fixed list of steps. `CliScenario.run` runs the CLI steps in order against one
daemon and returns one `CliStep` per step; `run_py_group` runs one group of python3-sanlock
steps in a child `/usr/bin/python3` (the interpreter that has the binding) and returns one JSON
result per step. Every step has a time limit, so a daemon that never answers costs seconds, not
the run: the step is recorded as timed out and the scenario goes on (CLI) or the rest of the
group is recorded as not run (python).

`Normaliser` removes what legitimately differs between two runs: the lease file's path, the host
name, the pids, and the numbers that depend on the clock (timestamps, renewal times).
`Normaliser.stable` keeps every other number (lvers, host ids, offsets, result codes), and
`Normaliser.shape` replaces every remaining number with N as well.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20
SANLOCK_PYTHON = "/usr/bin/python3"
"""Debian's interpreter, which has python3-sanlock (`import sanlock`)."""

# The lease file, 16 MiB, one 1 MiB area each (the python script spells these offsets out):
#   0 lockspace LS · 1 MiB resource LS:R1 · 2 MiB resource LS:R2 · 3 MiB resource LS:R5 (the
#   CLI's persistent and orphan leases)   (formatted by format_areas)
#   4 MiB python write_lockspace LS3 · 6 MiB python write_resource LS3:R3 · 7 MiB the same with
#   clear=True · 8 MiB never written · 10 MiB lockspace LS2 (formatted by format_areas; joined
#   asynchronously with the daemon's default io_timeout) · 12 / 13 MiB `client init -s / -r` ·
#   16 MiB the CLI's resource index (its lease at 17 MiB, its slots from 18 MiB)
LOCKSPACE = "LS"
R1_AT = 1 * MiB
R2_AT = 2 * MiB
R5_AT = 3 * MiB
ZEROED_AT = 8 * MiB
LS2_AT = 10 * MiB
RX_AT = 16 * MiB
FILE_SIZE = 24 * MiB
UNKNOWN_PID = 999_999
"""A pid no client registered (above any pid these tests create; below the kernel's pid_max)."""


def format_areas(sanlock_bin: str, path: str) -> None:
    """Write the same initial bytes into a lease file for every daemon under test, with
    `sanlock direct` (no daemon involved): lockspace LS at 0 and LS2 at LS2_AT (io_timeout 1
    in every slot, so a first join waits about 2 s), resources R1, R2 and R5."""
    for args in (["-s", f"{LOCKSPACE}:0:{path}:0", "-o", "1"],
                 ["-s", f"LS2:0:{path}:{LS2_AT}", "-o", "1"],
                 ["-r", f"{LOCKSPACE}:R1:{path}:{R1_AT}"],
                 ["-r", f"{LOCKSPACE}:R2:{path}:{R2_AT}"],
                 ["-r", f"{LOCKSPACE}:R5:{path}:{R5_AT}"]):
        out = subprocess.run([sanlock_bin, "direct", "init", *args], capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# Normalising


_VOLATILE = [
    # delta-lease timestamps: 0 (never written / free / shared holder) is kept, others are not
    (re.compile(r"\b(timestamp[ =])(?!0\b)\d+"), r"\1T"),
    (re.compile(r"\b(\w+_ms=)\d+"), r"\1T"),
    (re.compile(r"\b(last_\w+=|monotime=|helper_last_status=)\d+"), r"\1T"),
    # an exclusive orphan is listed under the pid of its holder, a `client command` gone since
    (re.compile(r"\bp [1-9]\d* ORPHAN$", re.M), "p GONE ORPHAN"),
]
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")


@dataclass(frozen=True)
class Normaliser:
    """Replaces one run's lease file paths with FILE, host names with HOST and pids with PID."""

    paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()

    def names(self, text: str) -> str:
        for path in sorted(self.paths, key=len, reverse=True):
            text = text.replace(path, "FILE")
        for host in sorted(self.hosts, key=len, reverse=True):
            text = re.sub(rf"\b{re.escape(host)}\b", "HOST", text)
        for pid in self.pids:
            text = re.sub(rf"(?<![\d-]){pid}\b", "PID", text)
        return text

    def stable(self, text: str) -> str:
        """The text without paths, host names, pids and clock-dependent numbers."""
        for pattern, replacement in _VOLATILE:
            text = pattern.sub(replacement, text)
        return self.names(text)

    def shape(self, text: str) -> str:
        """`stable`, with every remaining number replaced by N too."""
        return _NUMBER.sub("N", self.stable(text))

    def value(self, obj: Any) -> Any:
        """A JSON value from the python scripts: strings through `names`; non-zero
        "timestamp" values (clock-dependent) replaced with "T"."""
        if isinstance(obj, str):
            return self.names(obj)
        if isinstance(obj, list):
            return [self.value(item) for item in obj]
        if isinstance(obj, dict):
            return {key: ("T" if key == "timestamp" and item != 0 else self.value(item))
                    for key, item in obj.items()}
        return obj


def unique_lines(text: str) -> list[str]:
    """Sorted distinct lines (for output whose line count depends on time, such as the renewal
    history)."""
    return sorted(set(text.splitlines()))


# ---------------------------------------------------------------------------------------------
# `sanlock client` scenario


@dataclass
class CliStep:
    """One CLI invocation (or one observation of a process) and what came back."""

    name: str
    argv: list[str] = field(default_factory=list)
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    note: str = ""
    """"timeout", "not run", or the outcome of a step that observes a process."""

    def describe(self) -> str:
        return (f"{self.name}: argv={self.argv} rc={self.rc} note={self.note!r}\n"
                f"  stdout={self.stdout!r}\n  stderr={self.stderr!r}")


def _ls(path: str, host_id: int = 1, name: str = LOCKSPACE, at: int = 0) -> str:
    return f"{name}:{host_id}:{path}:{at}"


def _res(path: str, name: str = "R1", at: int = R1_AT, tail: str = "",
         lockspace: str = LOCKSPACE) -> str:
    return f"{lockspace}:{name}:{path}:{at}{tail}"


# (step name, arguments after `sanlock client`), with {F} for the lease file and {PID} for the
# pid of the `client command` lease holder. "@..." steps are actions of the runner itself.
CLI_STEPS: list[tuple[str, list[str]]] = [
    ("version", ["version"]),
    ("status_empty", ["status"]),
    ("gets_empty", ["gets"]),
    ("add_lockspace", ["add_lockspace", "-o", "1", "-s", "{LS}"]),
    ("gets_hosts_right_after_join", ["gets", "-h", "1"]),
    ("inq_lockspace", ["inq_lockspace", "-s", "{LS}"]),
    ("add_lockspace_again", ["add_lockspace", "-o", "1", "-s", "{LS}"]),
    ("inq_lockspace_not_joined", ["inq_lockspace", "-s", "NOLS:1:{F}:0"]),
    ("@hosts_ready", []),
    ("status_joined", ["status"]),
    ("gets", ["gets"]),
    ("gets_hosts", ["gets", "-h", "1"]),
    ("host_status_ls", ["host_status", "-s", LOCKSPACE]),
    ("host_status_all", ["host_status"]),
    ("host_status_not_joined", ["host_status", "-s", "NOLS"]),
    ("renewal", ["renewal", "-s", LOCKSPACE]),
    ("renewal_not_joined", ["renewal", "-s", "NOLS"]),
    ("@command", ["command", "-r", "{R1}", "-c", "/bin/sleep", "30"]),
    ("status_held", ["status"]),
    ("status_by_pid", ["status", "-o", "p"]),
    ("status_by_lockspace", ["status", "-o", "s"]),
    ("inquire_held", ["inquire", "-p", "{PID}"]),
    ("release", ["release", "-r", "{R1}", "-p", "{PID}"]),
    ("inquire_released", ["inquire", "-p", "{PID}"]),
    ("release_again", ["release", "-r", "{R1}", "-p", "{PID}"]),
    ("acquire", ["acquire", "-r", "{R1}", "-p", "{PID}"]),
    ("inquire_reacquired", ["inquire", "-p", "{PID}"]),
    ("acquire_again", ["acquire", "-r", "{R1}", "-p", "{PID}"]),
    ("status_reacquired", ["status"]),
    ("acquire_shared_r2", ["acquire", "-r", "{R2}:SH", "-p", "{PID}"]),
    ("inquire_two", ["inquire", "-p", "{PID}"]),
    ("status_detail", ["status", "-D"]),
    # Convert, each way, on the holder's two leases; the lvers that follow are compared too.
    ("convert_r2_to_ex", ["convert", "-r", "{R2}", "-p", "{PID}"]),
    ("inquire_r2_exclusive", ["inquire", "-p", "{PID}"]),
    ("convert_r2_to_sh", ["convert", "-r", "{R2}:SH", "-p", "{PID}"]),
    ("convert_r1_to_sh", ["convert", "-r", "{R1}:SH", "-p", "{PID}"]),
    ("inquire_both_shared", ["inquire", "-p", "{PID}"]),
    ("read_r1_shared", ["read", "-r", "{R1}"]),
    ("convert_r1_to_ex", ["convert", "-r", "{R1}", "-p", "{PID}"]),
    ("convert_r1_to_ex_again", ["convert", "-r", "{R1}", "-p", "{PID}"]),
    ("convert_not_held", ["convert", "-r", "{R9}", "-p", "{PID}"]),
    ("convert_unknown_pid", ["convert", "-r", "{R1}", "-p", str(UNKNOWN_PID)]),
    ("inquire_converted_back", ["inquire", "-p", "{PID}"]),
    ("acquire_not_joined", ["acquire", "-r", "NOLS:R1:{F}:1048576", "-p", "{PID}"]),
    ("acquire_zeroed_area", ["acquire", "-r", "{R9}", "-p", "{PID}"]),
    ("read_resource", ["read", "-r", "{R1}"]),
    ("read_resource_zeroed", ["read", "-r", "{R9}"]),
    ("read_lockspace", ["read", "-s", "{LS}"]),
    ("read_lockspace_host0", ["read", "-s", "LS:0:{F}:0"]),
    ("read_lockspace_zeroed", ["read", "-s", "LS:0:{F}:8388608"]),
    ("init_lockspace", ["init", "-s", "LS4:0:{F}:12582912", "-o", "1"]),
    ("read_init_lockspace", ["read", "-s", "LS4:0:{F}:12582912"]),
    ("init_resource", ["init", "-r", "LS4:R4:{F}:13631488"]),
    ("read_init_resource", ["read", "-r", "LS4:R4:{F}:13631488"]),
    ("request", ["request", "-r", "{R1}:5", "-f", "0"]),
    ("inquire_unknown_pid", ["inquire", "-p", str(UNKNOWN_PID)]),
    ("acquire_unknown_pid", ["acquire", "-r", "{R1}", "-p", str(UNKNOWN_PID)]),
    ("release_unknown_pid", ["release", "-r", "{R1}", "-p", str(UNKNOWN_PID)]),
    ("set_config_used", ["set_config", "-s", LOCKSPACE, "-u", "1"]),
    ("set_config_not_joined", ["set_config", "-s", "NOLS", "-u", "1"]),
    ("set_config_no_command", ["set_config", "-s", LOCKSPACE]),
    ("set_config_used_by_orphans", ["set_config", "-s", LOCKSPACE, "-O", "1"]),
    ("set_config_unused_by_orphans", ["set_config", "-s", LOCKSPACE, "-O", "0"]),
    ("set_config_unused", ["set_config", "-s", LOCKSPACE, "-u", "0"]),
    ("log_dump", ["log_dump"]),
    # Persistent leases: the command exits holding R5, which stays as an orphan; an acquire
    # refuses it (-EUCLEAN) unless it adopts it (-O 1), here persistent again (-P 1).
    # Each command's exit is awaited (@exits_seen) before the next step: a daemon notices the
    # hang-up of the exited command in its own time.
    ("command_persistent", ["command", "-r", "{R5}", "-P", "1", "-c", "/bin/true"]),
    ("@exits_seen", []),
    ("status_orphan", ["status"]),
    ("command_refused_by_orphan", ["command", "-r", "{R5}", "-c", "/bin/true"]),
    ("@exits_seen_2", []),
    ("command_adopts_orphan", ["command", "-r", "{R5}", "-O", "1", "-P", "1", "-c",
                               "/bin/true"]),
    ("@exits_seen_3", []),
    ("status_orphan_adopted", ["status"]),
    ("command_adopts_and_releases", ["command", "-r", "{R5}", "-O", "1", "-c", "/bin/true"]),
    ("@exits_seen_4", []),
    ("status_orphan_gone", ["status"]),
    ("command_persistent_again", ["command", "-r", "{R5}", "-P", "1", "-c", "/bin/true"]),
    ("read_orphan", ["read", "-r", "{R5}"]),
    # The resource index: its slots are 18..23 MiB (the 2nd at 19922944, the 4th at 22020096).
    ("rindex_format", ["format", "-x", "{RX}"]),
    ("rindex_lookup_free", ["lookup", "-x", "{RX}"]),
    ("rindex_create", ["create", "-x", "{RX}", "-e", "vol1"]),
    ("rindex_create_2", ["create", "-x", "{RX}", "-e", "vol2"]),
    ("rindex_lookup", ["lookup", "-x", "{RX}", "-e", "vol2"]),
    ("rindex_lookup_offset", ["lookup", "-x", "{RX}", "-e", ":19922944"]),
    ("rindex_lookup_diff", ["lookup", "-x", "{RX}", "-e", "vol1:19922944"]),
    ("rindex_lookup_missing", ["lookup", "-x", "{RX}", "-e", "nope"]),
    ("rindex_delete", ["delete", "-x", "{RX}", "-e", "vol1"]),
    ("rindex_read_deleted", ["read", "-r", "LS:vol1:{F}:18874368"]),
    ("rindex_lookup_after_delete", ["lookup", "-x", "{RX}"]),
    ("rindex_update_add", ["update", "-x", "{RX}", "-e", "manual:22020096"]),
    ("rindex_update_unaligned", ["update", "-x", "{RX}", "-e", "bad:22020097"]),
    ("rindex_update_no_offset", ["update", "-x", "{RX}", "-e", "manual"]),
    ("rindex_lookup_manual", ["lookup", "-x", "{RX}", "-e", "manual"]),
    ("rindex_update_remove", ["update", "-x", "{RX}", "-e", "manual:22020096", "-z", "1"]),
    ("rindex_update_add_again", ["update", "-x", "{RX}", "-e", "manual:22020096"]),
    ("rindex_rebuild", ["rebuild", "-x", "{RX}"]),
    ("rindex_lookup_rebuilt", ["lookup", "-x", "{RX}", "-e", "vol2"]),
    ("rindex_lookup_rebuilt_manual", ["lookup", "-x", "{RX}", "-e", "manual"]),
    ("rindex_read_created", ["read", "-r", "LS:vol2:{F}:19922944"]),
    ("rindex_not_an_index", ["lookup", "-x", "LS:{F}:0"]),
    ("rindex_other_lockspace", ["lookup", "-x", "LS2:{F}:16777216"]),
    ("shutdown_busy", ["shutdown", "-w", "1"]),
    ("rem_lockspace", ["rem_lockspace", "-s", "{LS}"]),
    ("@holder_after_rem", []),
    ("inq_lockspace_removed", ["inq_lockspace", "-s", "{LS}"]),
    ("gets_removed", ["gets"]),
    ("status_removed", ["status"]),
    ("rem_lockspace_again", ["rem_lockspace", "-s", "{LS}"]),
    ("shutdown", ["shutdown"]),
    ("@daemon_exited", []),
]
CLI_STEP_NAMES = [name for name, _ in CLI_STEPS]


def _expand(args: list[str], path: str, pid: int | None) -> list[str]:
    values = {"{LS}": _ls(path), "{R1}": _res(path), "{R2}": _res(path, "R2", R2_AT),
              "{R5}": _res(path, "R5", R5_AT), "{RX}": f"{LOCKSPACE}:{path}:{RX_AT}",
              "{R9}": _res(path, "R9", ZEROED_AT), "{F}": path,
              "{PID}": str(pid if pid is not None else UNKNOWN_PID)}
    out = []
    for arg in args:
        expanded = arg
        for key, value in values.items():
            expanded = expanded.replace(key, value)
        out.append(expanded)
    return out


class CliScenario:
    """Runs CLI_STEPS against the daemon behind `env["SANLOCK_RUN_DIR"]`."""

    def __init__(self, sanlock_bin: str, env: Mapping[str, str], path: str,
                 daemon_alive: Callable[[], bool], budget_s: float = 90,
                 step_timeout_s: float = 15) -> None:
        self.bin = sanlock_bin
        self.env = dict(env)
        self.path = path
        self.daemon_alive = daemon_alive
        self.deadline = time.monotonic() + budget_s
        self.step_timeout_s = step_timeout_s
        self.holder: subprocess.Popen[bytes] | None = None
        self.steps: dict[str, CliStep] = {}

    def client(self, name: str, args: list[str]) -> CliStep:
        argv = [self.bin, "client", *args]
        step = CliStep(name, argv)
        timeout = min(self.step_timeout_s, self.deadline - time.monotonic())
        if timeout <= 0:
            step.note = "not run"
            return step
        try:
            out = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            step.note = f"timeout after {timeout:.0f} s"
            step.stdout = _text(exc.stdout)
            step.stderr = _text(exc.stderr)
            return step
        step.rc, step.stdout, step.stderr = out.returncode, out.stdout, out.stderr
        return step

    def run(self) -> dict[str, CliStep]:
        try:
            for name, args in CLI_STEPS:
                pid = self.holder.pid if self.holder is not None else None
                argv = _expand(args, self.path, pid)
                if name == "@hosts_ready":
                    step = self._hosts_ready()
                elif name == "@command":
                    step = self._command(argv)
                elif name == "@holder_after_rem":
                    step = self._holder_after_rem()
                elif name == "@daemon_exited":
                    step = self._daemon_exited()
                elif name.startswith("@exits_seen"):
                    step = self._exits_seen(name, pid)
                else:
                    step = self.client(name, argv)
                self.steps[name] = step
        finally:
            self.stop_holder()
        return self.steps

    def _poll(self, name: str, args: list[str], done: Callable[[CliStep], bool],
              timeout_s: float) -> CliStep:
        deadline = min(time.monotonic() + timeout_s, self.deadline)
        while True:
            step = self.client(name, args)
            if done(step) or step.note or time.monotonic() > deadline:
                return step
            time.sleep(0.2)

    def _hosts_ready(self) -> CliStep:
        """Wait (up to 10 s) for `gets -h 1` to list our own host as LIVE: right after a join
        sanlock answers "hosts not ready" until its first renewal."""
        step = self._poll("@hosts_ready", ["gets", "-h", "1"],
                          lambda s: " LIVE" in s.stdout, 10)
        step.note = step.note or ("ready" if " LIVE" in step.stdout else "never LIVE")
        return step

    def _command(self, argv: list[str]) -> CliStep:
        """Start `client command ... -c /bin/sleep 30` and wait (up to 5 s) until status shows
        its lease; the note tells whether the holder is still running then."""
        step = CliStep("@command", [self.bin, "client", *argv])
        self.holder = subprocess.Popen(step.argv, env=self.env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        held = re.compile(rf"^r \S+ p {self.holder.pid}$", re.M)  # acquired, not "ADD"
        self._poll("@command-status", ["status"],
                   lambda s: held.search(s.stdout) is not None
                   or self.holder is None or self.holder.poll() is not None, 5)
        rc = self.holder.poll()
        step.rc = rc
        step.note = "running" if rc is None else f"exited {rc}"
        return step

    def _holder_after_rem(self) -> CliStep:
        """After rem_lockspace the lease holder must have been killed (sanlock uses SIGKILL)."""
        step = CliStep("@holder_after_rem")
        if self.holder is None:
            step.note = "no holder"
            return step
        try:
            step.rc = self.holder.wait(min(8.0, max(0.1, self.deadline - time.monotonic())))
            step.note = f"exited {step.rc}"
        except subprocess.TimeoutExpired:
            step.note = "still running 8 s after rem_lockspace"
        return step

    def _exits_seen(self, name: str, holder_pid: int | None) -> CliStep:
        """Wait (up to 5 s) until status lists no client but the lease holder and no lease of
        R5 held by a process (the `client command` runs before exited)."""
        gone = re.compile(rf"^p (-1|{holder_pid}) |^r (?!\S*:R5:)|^r .* ORPHAN$|^(?!p |r )")

        def settled(step: CliStep) -> bool:
            return all(gone.match(line) for line in step.stdout.splitlines())

        step = self._poll(name, ["status"], settled, 5)
        step.note = step.note or ("settled" if settled(step) else "a client remains")
        return step

    def _daemon_exited(self) -> CliStep:
        step = CliStep("@daemon_exited")
        deadline = time.monotonic() + 10
        while self.daemon_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        step.note = "running" if self.daemon_alive() else "exited"
        return step

    def stop_holder(self) -> None:
        """Kill the `client command` holder this scenario started, if it still runs."""
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(10)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# python3-sanlock scenario

PY_SCRIPT = r'''
import ctypes, json, os, subprocess, sys, threading, time
import sanlock

GROUP, F, UNKNOWN_PID = sys.argv[1], sys.argv[2], int(sys.argv[3])
MiB = M = 1 << 20
LS = b"LS"
R1 = [(F, 1 * MiB)]
R2 = [(F, 2 * MiB)]
LS2_AT = 10 * MiB


def plain(v):
    if isinstance(v, bytes):
        return "b:" + v.decode(errors="replace")
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def outcome(fn):
    try:
        return {"ok": plain(fn())}
    except sanlock.SanlockException as e:
        return {"errno": e.errno, "args": plain(list(e.args))}
    except Exception as e:
        return {"exception": type(e).__name__, "message": str(e)}


def step(name, fn):
    emit({"start": name})
    r = outcome(fn)
    emit({"step": name, **r})
    return r


def step_other(name, expr):
    """The python expression evaluated by another process: a one-shot call from a pid that is
    not this (possibly registered) one."""
    emit({"start": name})
    out = subprocess.run([sys.executable, __file__, "call", F, str(UNKNOWN_PID), expr],
                         capture_output=True, text=True, timeout=20)
    try:
        r = json.loads(out.stdout.splitlines()[-1])
    except Exception:
        r = {"exception": "child", "message": out.stdout + out.stderr}
    emit({"step": name, **r})
    return r


def group_call():
    emit(outcome(lambda: eval(sys.argv[4])))


def retry(fn, errnos, timeout_s, again=lambda v: False):
    """fn() again while it raises one of errnos or again(its value), up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            v = fn()
            if not again(v) or time.monotonic() > deadline:
                return v
        except sanlock.SanlockException as e:
            if e.errno not in errnos or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def until(fn, pred, timeout_s):
    """fn() again until pred(its value), up to timeout_s; the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = fn()
        if pred(v) or time.monotonic() > deadline:
            return v
        time.sleep(0.2)


def pause(value, seconds=0.5):
    """value, after a pause (the daemon notices a closed connection asynchronously)."""
    time.sleep(seconds)
    return value


def by_name(spaces):
    return sorted(spaces, key=lambda s: (s["lockspace"], s["offset"]))


def restrict(fd, flags):
    """python3-sanlock has no restrict(): libsanlock's sanlock_restrict, as libvirt calls it."""
    lib = ctypes.CDLL("libsanlock.so.1")
    lib.sanlock_restrict.argtypes = [ctypes.c_int, ctypes.c_uint32]
    return lib.sanlock_restrict(fd, flags)


class Options(ctypes.Structure):
    _fields_ = [("owner_name", ctypes.c_char * 48), ("flags", ctypes.c_uint32),
                ("len", ctypes.c_uint32)]


def acquire_no_resources(pid, owner_name):
    """libsanlock's sanlock_acquire(-1, pid, 0, 0, NULL, &opt), as libvirt sends it."""
    lib = ctypes.CDLL("libsanlock.so.1")
    lib.sanlock_acquire.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.c_int,
                                    ctypes.c_void_p, ctypes.POINTER(Options)]
    return lib.sanlock_acquire(-1, pid, 0, 0, None, ctypes.byref(Options(owner_name, 0, 0)))


def client_lines(action, prefix, pid):
    """The lines of `sanlock client ACTION` that start with prefix, pid replaced by PID."""
    out = subprocess.run(["sanlock", "client", action], capture_output=True, text=True,
                         timeout=20)
    return [line.replace(str(pid), "PID") for line in out.stdout.splitlines()
            if line.startswith(prefix)]


def no_reply_within(fn, timeout_s):
    """"no reply" if fn() is still blocked after timeout_s (the thread is left behind)."""
    box = []
    th = threading.Thread(target=lambda: box.append(outcome(fn)), daemon=True)
    th.start()
    th.join(timeout_s)
    return "no reply" if th.is_alive() else box[0]


def group_lockspace():
    step("add_lockspace", lambda: sanlock.add_lockspace(LS, 1, F, 0, iotimeout=1))
    step("get_hosts_right_after_join", lambda: sanlock.get_hosts(LS))
    step("add_lockspace_again", lambda: sanlock.add_lockspace(LS, 1, F, 0, iotimeout=1))
    step("add_lockspace_other_host_id", lambda: sanlock.add_lockspace(LS, 2, F, 0, iotimeout=1))
    step("add_lockspace_host_id_0", lambda: sanlock.add_lockspace(b"LSZ", 0, F, 0, iotimeout=1))
    step("inq_lockspace", lambda: sanlock.inq_lockspace(LS, 1, F, 0))
    step("inq_lockspace_wait", lambda: sanlock.inq_lockspace(LS, 1, F, 0, wait=True))
    step("inq_lockspace_other_name", lambda: sanlock.inq_lockspace(b"NOLS", 1, F, 0))
    step("inq_lockspace_other_path", lambda: sanlock.inq_lockspace(LS, 1, F + ".x", 0))
    step("inq_lockspace_other_host_id", lambda: sanlock.inq_lockspace(LS, 2, F, 0))
    step("get_lockspaces", lambda: sanlock.get_lockspaces())
    # polled until the own host is listed (sanlock: EAGAIN until its first renewal)
    step("get_hosts", lambda: retry(lambda: sanlock.get_hosts(LS), {11}, 10,
                                    again=lambda v: not v))
    step("get_hosts_self", lambda: sanlock.get_hosts(LS, 1))
    step("get_hosts_free", lambda: sanlock.get_hosts(LS, 2))
    step("get_hosts_not_joined", lambda: sanlock.get_hosts(b"NOLS"))
    step("add_lockspace_async", lambda: sanlock.add_lockspace(b"LS2", 1, F, LS2_AT, wait=False))
    step("inq_lockspace_adding", lambda: sanlock.inq_lockspace(b"LS2", 1, F, LS2_AT))
    step("add_lockspace_while_adding",
         lambda: sanlock.add_lockspace(b"LS2", 1, F, LS2_AT, wait=False))
    step("get_lockspaces_adding", lambda: by_name(sanlock.get_lockspaces()))
    step("get_hosts_adding", lambda: sanlock.get_hosts(b"LS2"))
    step("inq_lockspace_wait_added",
         lambda: sanlock.inq_lockspace(b"LS2", 1, F, LS2_AT, wait=True))
    step("get_lockspaces_two", lambda: by_name(sanlock.get_lockspaces()))
    step("read_lockspace_default_io_timeout", lambda: sanlock.read_lockspace(F, LS2_AT))
    step("rem_lockspace_async",
         lambda: sanlock.rem_lockspace(b"LS2", 1, F, LS2_AT, wait=False))
    step("inq_lockspace_removed_async",
         lambda: until(lambda: sanlock.inq_lockspace(b"LS2", 1, F, LS2_AT),
                       lambda v: v is False, 10))
    step("get_lockspaces_after_async_rem", lambda: by_name(sanlock.get_lockspaces()))
    step("rem_lockspace_not_joined", lambda: sanlock.rem_lockspace(b"NOLS", 1, F, 0))


def group_leases():
    # One-shot calls go through step_other (another pid): group "same_pid" tests them from the
    # registered process itself.
    g = {}
    step("register", lambda: g.setdefault("fd", sanlock.register()) >= 0)
    fd = g["fd"]
    me = os.getpid()
    marker = F + ".killpath-ran"
    step("killpath", lambda: sanlock.killpath(b"/bin/touch", [marker.encode()], slkfd=fd))
    step("acquire", lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd))
    step("acquire_again", lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd))
    step("inquire_self", lambda: sanlock.inquire(slkfd=fd))
    step_other("inquire_by_pid", f"sanlock.inquire(pid={me})")
    step_other("read_resource", "sanlock.read_resource(F, M)")
    step_other("read_resource_owners", "sanlock.read_resource_owners(LS, b'R1', R1)")
    step("release", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd))
    step("release_again", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd))
    step("inquire_empty", lambda: sanlock.inquire(slkfd=fd))
    step_other("read_resource_owners_released", "sanlock.read_resource_owners(LS, b'R1', R1)")
    r = step_other("read_resource_released", "sanlock.read_resource(F, M)")
    lver = r["ok"]["version"] if "ok" in r else 1
    step("acquire_wrong_version",
         lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd, version=lver + 7))
    step("acquire_current_version",
         lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd, version=lver))
    step("inquire_versioned", lambda: sanlock.inquire(slkfd=fd))
    step_other("read_resource_versioned", "sanlock.read_resource(F, M)")
    step("acquire_shared", lambda: sanlock.acquire(LS, b"R2", R2, slkfd=fd, shared=True))
    step("inquire_two", lambda: sanlock.inquire(slkfd=fd))
    step_other("read_resource_owners_shared", "sanlock.read_resource_owners(LS, b'R2', R2)")
    # a graceful request for a lease held on this very host: sanlock's renewals never see it
    # (no killpath run, lease kept)
    step_other("request", "sanlock.request(LS, b'R1', R1)")
    step_other("read_resource_after_request", "sanlock.read_resource(F, M)")
    step("killpath_ran_after_request", lambda: pause(os.path.exists(marker), 3))
    step("inquire_after_request", lambda: sanlock.inquire(slkfd=fd))
    # a second registration by the same process (sanlock allows any number)
    step("register_second", lambda: g.setdefault("fd2", sanlock.register()) >= 0)
    fd2 = g["fd2"]
    step("inquire_second_empty", lambda: sanlock.inquire(slkfd=fd2))
    step("acquire_shared_second", lambda: sanlock.acquire(LS, b"R2", R2, slkfd=fd2, shared=True))
    step("acquire_exclusive_held_by_other",
         lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd2))
    step("acquire_exclusive_held_shared",
         lambda: sanlock.acquire(LS, b"R2", R2, slkfd=fd2))
    step("inquire_second", lambda: sanlock.inquire(slkfd=fd2))
    step("inquire_first_unchanged", lambda: sanlock.inquire(slkfd=fd))
    # Exit without releasing: the daemon must release both connections' leases on hang-up
    # (checked by the "hangup" group).


def group_restrict():
    # libvirt's QEMU: register, killpath, restrict; libvirtd then works by pid from outside.
    g = {}
    step("register", lambda: g.setdefault("fd", sanlock.register()) >= 0)
    fd = g["fd"]
    me = os.getpid()
    step("killpath", lambda: sanlock.killpath("/bin/true", ["qemu:///system", "uuid"], slkfd=fd))
    step("restrict_sigterm", lambda: restrict(fd, 0x4))
    step("acquire_shared_after_restrict_sigterm",
         lambda: sanlock.acquire(LS, b"R2", R2, slkfd=fd, shared=True))
    step("inquire_self", lambda: sanlock.inquire(slkfd=fd))
    step("restrict_all", lambda: restrict(fd, 0x1))
    step("inquire_restricted_all", lambda: no_reply_within(lambda: sanlock.inquire(slkfd=fd), 2))
    step_other("inquire_by_pid", f"sanlock.inquire(pid={me})")
    step_other("acquire_by_pid", f"sanlock.acquire(LS, b'R1', R1, pid={me})")
    step_other("inquire_by_pid_two", f"sanlock.inquire(pid={me})")
    step_other("release_by_pid", f"sanlock.release(LS, b'R1', R1, pid={me})")
    step_other("inquire_by_pid_one", f"sanlock.inquire(pid={me})")
    # libvirtd on resume: ACQUIRE by pid with no resources, only the VM name as owner_name
    step_other("acquire_by_pid_no_resources", f"acquire_no_resources({me}, b'vm-demo')")
    step("status_shows_owner_name", lambda: client_lines("status", f"p {me}", me))
    # exit holding R2 shared: released on hang-up (group "hangup")


def group_hangup():
    g = {}
    step("register", lambda: g.setdefault("fd", sanlock.register()) >= 0)
    fd = g["fd"]
    step("acquire_exclusive_after_hangup",
         lambda: retry(lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd), {11, 16, 17}, 8))
    step("acquire_r2_exclusive_after_hangup",
         lambda: retry(lambda: sanlock.acquire(LS, b"R2", R2, slkfd=fd), {11, 16, 17}, 8))
    step("inquire", lambda: sanlock.inquire(slkfd=fd))
    step("release_both", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd)
         or sanlock.release(LS, b"R2", R2, slkfd=fd))
    step("inquire_empty", lambda: sanlock.inquire(slkfd=fd))


CHILD = "import sanlock, sys, time; sanlock.register(); print('ready', flush=True); time.sleep(60)"


def group_bypid():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    try:
        step("child_registered", lambda: child.stdout.readline().decode().strip())
        pid = child.pid
        # REGISTER has no reply: the daemon may read it after the child said it was ready
        step("inquire_no_leases", lambda: retry(lambda: sanlock.inquire(pid=pid), {3}, 5))
        step("acquire", lambda: sanlock.acquire(LS, b"R1", R1, pid=pid))
        step("acquire_again", lambda: sanlock.acquire(LS, b"R1", R1, pid=pid))
        step("inquire", lambda: sanlock.inquire(pid=pid))
        step("acquire_shared", lambda: sanlock.acquire(LS, b"R2", R2, pid=pid, shared=True))
        step("inquire_two", lambda: sanlock.inquire(pid=pid))
        step("release", lambda: sanlock.release(LS, b"R1", R1, pid=pid))
        step("release_again", lambda: sanlock.release(LS, b"R1", R1, pid=pid))
        step("inquire_one", lambda: sanlock.inquire(pid=pid))
        step("child_killed", lambda: child.kill() or child.wait())
        step("inquire_dead_child",
             lambda: until(lambda: _inquire_errno(pid), lambda v: v == 3, 8))
        step("acquire_r2_exclusive_after_death", lambda: _acquire_release(b"R2", R2))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _inquire_errno(pid):
    try:
        return ["inquire ok", plain(sanlock.inquire(pid=pid))]
    except sanlock.SanlockException as e:
        return e.errno


def _acquire_release(name, disks):
    fd = sanlock.register()
    try:
        retry(lambda: sanlock.acquire(LS, name, disks, slkfd=fd), {11, 16, 17}, 8)
        return plain(sanlock.inquire(slkfd=fd))
    finally:
        os.close(fd)


def group_disk():
    step("read_lockspace", lambda: sanlock.read_lockspace(F, 0))
    step("read_lockspace_zeroed", lambda: sanlock.read_lockspace(F, 8 * MiB))
    step("read_resource", lambda: sanlock.read_resource(F, 1 * MiB))
    step("read_resource_zeroed", lambda: sanlock.read_resource(F, 8 * MiB))
    step("read_resource_owners_zeroed",
         lambda: sanlock.read_resource_owners(LS, b"R9", [(F, 8 * MiB)]))
    step("write_lockspace", lambda: sanlock.write_lockspace(b"LS3", F, 4 * MiB, iotimeout=1))
    step("read_lockspace_written", lambda: sanlock.read_lockspace(F, 4 * MiB))
    step("write_resource", lambda: sanlock.write_resource(b"LS3", b"R3", [(F, 6 * MiB)]))
    step("read_resource_written", lambda: sanlock.read_resource(F, 6 * MiB))
    step("read_resource_owners_written",
         lambda: sanlock.read_resource_owners(b"LS3", b"R3", [(F, 6 * MiB)]))
    step("write_resource_clear",
         lambda: sanlock.write_resource(b"LS3", b"R5", [(F, 7 * MiB)], clear=True))
    step("read_resource_cleared", lambda: sanlock.read_resource(F, 7 * MiB))
    step("request_not_joined", lambda: sanlock.request(b"LS3", b"R3", [(F, 6 * MiB)]))
    step("get_alignment", lambda: sanlock.get_alignment(F))


def group_errors():
    g = {}
    step("register", lambda: g.setdefault("fd", sanlock.register()) >= 0)
    fd = g["fd"]
    step("acquire_not_joined", lambda: sanlock.acquire(b"NOLS", b"R1", R1, slkfd=fd))
    step("acquire_zeroed_area", lambda: sanlock.acquire(LS, b"R9", [(F, 8 * MiB)], slkfd=fd))
    step("acquire_wrong_name", lambda: sanlock.acquire(LS, b"R2", R1, slkfd=fd))
    step("release_not_held", lambda: sanlock.release(LS, b"R9", R1, slkfd=fd))
    step("inquire_unknown_pid", lambda: sanlock.inquire(pid=UNKNOWN_PID))
    step("acquire_unknown_pid", lambda: sanlock.acquire(LS, b"R1", R1, pid=UNKNOWN_PID))
    step("release_unknown_pid", lambda: sanlock.release(LS, b"R1", R1, pid=UNKNOWN_PID))
    step("acquire", lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd))
    step_other("rem_lockspace_unused_busy", "sanlock.rem_lockspace(LS, 1, F, 0, unused=True)")
    step_other("inq_lockspace_still_joined", "sanlock.inq_lockspace(LS, 1, F, 0)")
    step("release", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd))


def group_same_pid():
    # vdsm's pattern: one registered connection per process, and one-shot calls (reads,
    # lockspace queries, pid-targeted inquire) from the same process meanwhile.
    g = {}
    step("register", lambda: g.setdefault("fd", sanlock.register()) >= 0)
    fd = g["fd"]
    step("acquire", lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd))
    step("oneshot_read_resource", lambda: pause(sanlock.read_resource(F, 1 * MiB)))
    step("inquire_after_oneshot_read", lambda: sanlock.inquire(slkfd=fd))
    step("oneshot_inq_lockspace", lambda: pause(sanlock.inq_lockspace(LS, 1, F, 0)))
    step("inquire_after_oneshot_inq_lockspace", lambda: sanlock.inquire(slkfd=fd))
    step("oneshot_inquire_own_pid", lambda: pause(sanlock.inquire(pid=os.getpid())))
    step("inquire_after_oneshot_inquire", lambda: sanlock.inquire(slkfd=fd))
    step("release", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd))


def _lvb_on_disk(offset):
    """The first 16 bytes of the LVB sector (2002) of the 512/1M area at offset, as stored."""
    with open(F, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # no stale cached page
        f.seek(offset + 2002 * 512)
        return f.read(16)


LVB_CHILD = ("import sanlock, sys, os; d = [(sys.argv[1], int(sys.argv[2]))]; "
             "fd = sanlock.register(); sanlock.acquire(b'LS', b'R1', d, slkfd=fd, lvb=True); "
             "sanlock.set_lvb(b'LS', b'R1', d, b'at-exit'); os._exit(0)")


def group_lvb():
    g = {}
    step("register", lambda: g.setdefault("fd", sanlock.register()) >= 0)
    fd = g["fd"]
    step("set_lvb_not_held", lambda: sanlock.set_lvb(LS, b"R1", R1, b"x"))
    step("get_lvb_not_held", lambda: sanlock.get_lvb(LS, b"R1", R1, 16))
    step("acquire_without_lvb", lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd))
    step("get_lvb_without_flag", lambda: sanlock.get_lvb(LS, b"R1", R1, 16))
    step("set_lvb_without_flag", lambda: sanlock.set_lvb(LS, b"R1", R1, b"x"))
    step("release_without_lvb", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd))
    step("acquire_lvb", lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd, lvb=True))
    step("get_lvb_fresh", lambda: sanlock.get_lvb(LS, b"R1", R1, 16))
    step("set_lvb_larger_than_sector", lambda: sanlock.set_lvb(LS, b"R1", R1, b"y" * 513))
    step("set_lvb_larger_than_4096", lambda: sanlock.set_lvb(LS, b"R1", R1, b"y" * 4097))
    step("set_lvb_whole_sector", lambda: sanlock.set_lvb(LS, b"R1", R1, b"q" * 512))
    step("set_lvb", lambda: sanlock.set_lvb(LS, b"R1", R1, b"hello"))
    step("get_lvb_after_set", lambda: sanlock.get_lvb(LS, b"R1", R1, 20))
    step_other("get_lvb_from_another_process", "sanlock.get_lvb(LS, b'R1', R1, 8)")
    step("lvb_on_disk_before_release", lambda: _lvb_on_disk(M))
    step("release_lvb", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd))
    step("lvb_on_disk_after_release", lambda: _lvb_on_disk(M))
    step("acquire_lvb_again", lambda: sanlock.acquire(LS, b"R1", R1, slkfd=fd, lvb=True))
    step("get_lvb_again", lambda: sanlock.get_lvb(LS, b"R1", R1, 8))
    step("get_lvb_larger_than_sector", lambda: len(sanlock.get_lvb(LS, b"R1", R1, 700)))
    step("release_lvb_unset", lambda: sanlock.release(LS, b"R1", R1, slkfd=fd))
    step("lvb_on_disk_after_unset_release", lambda: _lvb_on_disk(M))
    step("acquire_shared_lvb",
         lambda: sanlock.acquire(LS, b"R2", R2, slkfd=fd, shared=True, lvb=True))
    step("set_lvb_shared", lambda: sanlock.set_lvb(LS, b"R2", R2, b"shared"))
    step("get_lvb_shared", lambda: sanlock.get_lvb(LS, b"R2", R2, 8))
    step("release_shared_lvb", lambda: sanlock.release(LS, b"R2", R2, slkfd=fd))
    step("lvb_on_disk_after_shared_release", lambda: _lvb_on_disk(2 * M))
    step("holder_sets_lvb_and_exits",
         lambda: subprocess.run([sys.executable, "-c", LVB_CHILD, F, str(M)],
                                timeout=15).returncode)
    step("lvb_on_disk_after_holder_exit",
         lambda: until(lambda: _lvb_on_disk(M), lambda v: v.startswith(b"at-exit"), 8))


def group_events():
    g = {}
    step("reg_event", lambda: g.setdefault("fd", sanlock.reg_event(LS)) >= 0)
    fd = g["fd"]
    step("reg_event_not_joined", lambda: sanlock.reg_event(b"NOLS"))
    step("set_event", lambda: sanlock.set_event(LS, 2, 0, 5, data=1))
    step("set_event_other_event_pending", lambda: sanlock.set_event(LS, 2, 0, 6, data=1))
    step("set_event_replace",
         lambda: sanlock.set_event(LS, 2, 0, 6, data=1, flags=sanlock.SETEV_REPLACE_EVENT))
    step("set_event_same_to_another_host", lambda: sanlock.set_event(LS, 3, 0, 6, data=1))
    step("set_event_host_id_0", lambda: sanlock.set_event(LS, 0, 0, 6, data=1))
    step("set_event_host_id_too_big", lambda: sanlock.set_event(LS, 2001, 0, 6, data=1))
    step("set_event_not_joined", lambda: sanlock.set_event(b"NOLS", 2, 0, 6, data=1))
    step("set_event_own_host", lambda: sanlock.set_event(
        LS, 1, 0, 6, data=1, flags=sanlock.SETEV_CUR_GENERATION))
    step("get_event_own_listener", lambda: pause(sanlock.get_event(fd), 3))
    step("set_event_clear", lambda: sanlock.set_event(
        LS, 2, 0, 0, flags=sanlock.SETEV_CLEAR_EVENT))
    step("set_event_after_clear", lambda: sanlock.set_event(LS, 2, 0, 7, data=2))
    step("end_event", lambda: sanlock.end_event(fd, LS))
    step("end_event_not_joined", lambda: sanlock.end_event(-1, b"NOLS"))


def group_multidisk():
    g = {}
    md3 = [(F, 9 * MiB), (F, 11 * MiB), (F, 14 * MiB)]
    md2 = [(F, 15 * MiB), (F, 5 * MiB)]
    step("write_resource_3_disks", lambda: sanlock.write_resource(LS, b"MD", md3))
    step("write_resource_2_disks", lambda: sanlock.write_resource(LS, b"MD2", md2))
    step("read_resource_3rd_disk", lambda: sanlock.read_resource(F, 14 * MiB))
    step("read_resource_owners_3_disks", lambda: sanlock.read_resource_owners(LS, b"MD", md3))
    step("register", lambda: g.setdefault("fd", sanlock.register()) >= 0)
    fd = g["fd"]
    step("acquire_3_disks", lambda: sanlock.acquire(LS, b"MD", md3, slkfd=fd))
    step("acquire_2_disks", lambda: sanlock.acquire(LS, b"MD2", md2, slkfd=fd))
    step("inquire_multi", lambda: sanlock.inquire(slkfd=fd))
    step_other("acquire_3_disks_held_by_other_pid",
               "sanlock.acquire(LS, b'MD', [(F, 9 * M), (F, 11 * M), (F, 14 * M)], "
               "slkfd=sanlock.register())")
    step("release_3_disks", lambda: sanlock.release(LS, b"MD", md3, slkfd=fd))
    step("release_2_disks", lambda: sanlock.release(LS, b"MD2", md2, slkfd=fd))
    step("read_resource_owners_released", lambda: sanlock.read_resource_owners(LS, b"MD", md3))
    step("acquire_5_disks", lambda: sanlock.acquire(LS, b"MD", md3 + md2, slkfd=fd))
    step("acquire_disks_in_another_order",
         lambda: sanlock.acquire(LS, b"MD", md3[::-1], slkfd=fd))
    step("inquire_after_multi", lambda: sanlock.inquire(slkfd=fd))


def group_teardown():
    step("rem_lockspace", lambda: sanlock.rem_lockspace(LS, 1, F, 0))
    step("inq_lockspace_removed", lambda: sanlock.inq_lockspace(LS, 1, F, 0))
    step("get_lockspaces_removed", lambda: sanlock.get_lockspaces())
    step("get_hosts_removed", lambda: sanlock.get_hosts(LS))
    step("rem_lockspace_again", lambda: sanlock.rem_lockspace(LS, 1, F, 0))


globals()["group_" + GROUP]()
sys.stdout.flush()
os._exit(0)
'''


def _steps_by_group(script: str) -> dict[str, list[str]]:
    """The step names of each `group_*` function of the script, in the order they run."""
    groups: dict[str, list[str]] = {}
    for match in re.finditer(r"^def group_(\w+)\(\):\n(.*?)(?=^\S)", script, re.M | re.S):
        if match.group(1) != "call":
            groups[match.group(1)] = re.findall(r"\bstep(?:_other)?\(\s*\"(\w+)\"",
                                                match.group(2))
    return groups


PY_GROUPS = _steps_by_group(PY_SCRIPT)
"""The python3-sanlock steps, group by group, in the order PY_SCRIPT runs them. The groups run
in this order against one daemon, each in its own process."""

PY_GROUP_TIMEOUT_S = {"lockspace": 45.0, "hangup": 25.0, "bypid": 25.0}


def run_py_group(group: str, script: str, env: Mapping[str, str], path: str,
                 timeout_s: float | None = None) -> dict[str, dict[str, Any]]:
    """Run one group of PY_SCRIPT (saved at `script`); one result per step of the group. A
    step the script began but did not finish is {"timeout": ...}; later ones {"not_run": ...}."""
    timeout = PY_GROUP_TIMEOUT_S.get(group, 20.0)
    if timeout_s is not None:
        timeout = min(timeout, timeout_s)
    if timeout <= 0:
        return {name: {"not_run": "time budget used up"} for name in PY_GROUPS[group]}
    argv = [SANLOCK_PYTHON, script, group, path, str(UNKNOWN_PID)]
    note = ""
    try:
        out = subprocess.run(argv, env=dict(env), capture_output=True, text=True,
                             timeout=timeout, check=False)
        stdout, stderr = out.stdout, out.stderr
        if out.returncode != 0:
            note = f"script exited {out.returncode}: {stderr[-2000:]}"
    except subprocess.TimeoutExpired as exc:
        stdout, stderr = _text(exc.stdout), _text(exc.stderr)
        note = f"script killed after {timeout:.0f} s"
    results: dict[str, dict[str, Any]] = {}
    started = ""
    for line in stdout.splitlines():
        record = json.loads(line)
        if "start" in record:
            started = record["start"]
        elif record["step"] in PY_GROUPS[group]:
            name = record.pop("step")
            results[name] = record
            started = ""
    for name in PY_GROUPS[group]:
        if name not in results:
            results[name] = ({"timeout": note} if name == started
                             else {"not_run": note or "the script did not reach this step"})
    return results


def write_py_script(directory: str) -> str:
    path = os.path.join(directory, "sanlock_py_steps.py")
    with open(path, "w") as f:
        f.write(PY_SCRIPT)
    return path
