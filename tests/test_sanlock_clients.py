"""sanlock's own clients against leasestore's sanlock-protocol socket, compared with the real
sanlock daemon.

The same scenario runs against two daemons, each on its own lease file formatted to identical
bytes by `sanlock direct init`: the real `sanlock daemon` (the reference) and `leasestore daemon`
(serving `<run_dir>/sanlock.sock`). Both are driven only through unmodified sanlock clients with
SANLOCK_RUN_DIR pointing at their run dir:

- `sanlock client …` (the CLI): per step the exit status must be equal, and the output the same
  once normalised (leasestore.testing.sanlock_clients.Normaliser): its shape (every number N)
  and its stable values (only paths, host names, pids and clock readings replaced).
- python3-sanlock, run by /usr/bin/python3 in child processes that print one JSON result per
  call: values and SanlockException errno/args must be equal after the same normalisation.

Each scenario runs once per daemon (module-scoped fixtures, both daemons at once); each test
compares one step, so every difference is reported on its own. `test_reference_*` check the
harness itself against the real sanlock.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from leasestore.testing.procs import DaemonProc, SanlockProc, make_file, poll
from leasestore.testing.sanlock_clients import (
    CLI_STEP_NAMES,
    FILE_SIZE,
    PY_GROUPS,
    PY_SCRIPT,
    RX_AT,
    CliScenario,
    CliStep,
    Normaliser,
    format_areas,
    run_py_group,
    unique_lines,
    write_py_script,
)

pytestmark = [pytest.mark.slow, pytest.mark.sanlock]

KINDS = ("sanlock", "leasestore")
HOST = "compat-host"
"""The host name of both daemons (normalised anyway)."""
SOCKET = "sanlock.sock"
UNORDERED_STEPS = {"renewal"}
"""Steps whose line count depends on time: compared as sets of distinct lines."""
PY_BUDGET_S = 100.0
"""At most this long for all python groups against one daemon (each group has its own limit
too): a daemon that never answers makes the rest "not run" instead of a long wait."""
STATUS_STEPS = [name for name in CLI_STEP_NAMES
                if (name.startswith("status") and name != "status_detail")
                or name.startswith("@exits_seen")]  # these run `client status` too


@dataclass
class Target:
    """One daemon under test and how its clients reach it."""

    kind: str
    path: str
    env: dict[str, str]
    alive: Callable[[], bool]
    stop: Callable[[], None]
    log_path: Path


def _start(kind: str, base: Path, sanlock_bin: str) -> Target:
    base.mkdir(parents=True, exist_ok=True)
    path = make_file(base / "lease.img", FILE_SIZE)
    format_areas(sanlock_bin, path)
    if kind == "sanlock":
        slk = SanlockProc(base, HOST, sanlock_bin)
        return Target(kind, path, {**slk.env}, lambda: slk.proc.poll() is None, slk.stop,
                      slk.log_path)
    ours = DaemonProc(base, HOST, io_timeout_s=1, watchdog_fire_timeout_s=5)
    socket_path = os.path.join(ours.run_dir, SOCKET)
    # Its leasestore socket is up; give the sanlock-protocol one a moment as well. Without it
    # every client step records its failure to connect.
    with contextlib.suppress(AssertionError):
        poll(lambda: os.path.exists(socket_path), 10, what=socket_path)
    env = {**os.environ, "SANLOCK_RUN_DIR": ours.run_dir}
    return Target(kind, path, env, lambda: ours.proc.poll() is None, ours.stop, ours.log_path)


def _in_parallel(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the calls in threads at once; their results by key, re-raising the first error."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(key: str, call: Callable[[], Any]) -> None:
        try:
            results[key] = call()
        except BaseException as exc:  # handed to the calling thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def _targets(base: Path, sanlock_bin: str) -> Iterator[dict[str, Target]]:
    """Both daemons started; every one stopped afterwards."""
    started: dict[str, Target] = {}
    try:
        for kind in KINDS:
            started[kind] = _start(kind, base / kind, sanlock_bin)
        yield started
    finally:
        for target in reversed(list(started.values())):
            target.stop()


# ---------------------------------------------------------------------------------------------
# Fixtures: each scenario once per daemon


@dataclass
class CliRun:
    steps: dict[str, CliStep]
    norm: Normaliser
    log_path: Path
    lease_path: str


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory,
             sanlock_bin: str) -> Iterator[dict[str, CliRun]]:
    base = tmp_path_factory.mktemp("cli")
    with _targets(base, sanlock_bin) as targets:
        scenarios = {kind: CliScenario(sanlock_bin, t.env, t.path, t.alive)
                     for kind, t in targets.items()}
        try:
            steps = _in_parallel({kind: s.run for kind, s in scenarios.items()})
        finally:
            for scenario in scenarios.values():
                scenario.stop_holder()
        runs = {}
        for kind, scenario in scenarios.items():
            pids = (scenario.holder.pid,) if scenario.holder is not None else ()
            norm = Normaliser((targets[kind].path,), (HOST,), pids)
            runs[kind] = CliRun(steps[kind], norm, targets[kind].log_path, targets[kind].path)
    yield runs  # the daemons are stopped by now: the tests only compare what was recorded


@dataclass
class PyRun:
    results: dict[str, dict[str, dict[str, Any]]]
    """group → step → the script's JSON record"""
    norm: Normaliser
    log_path: Path


@pytest.fixture(scope="module")
def py_runs(tmp_path_factory: pytest.TempPathFactory, sanlock_bin: str,
            sanlock_python: str) -> Iterator[dict[str, PyRun]]:
    base = tmp_path_factory.mktemp("py")
    script = write_py_script(str(base))

    def scenario(target: Target) -> dict[str, dict[str, dict[str, Any]]]:
        deadline = time.monotonic() + PY_BUDGET_S
        return {group: run_py_group(group, script, target.env, target.path,
                                    timeout_s=deadline - time.monotonic())
                for group in PY_GROUPS}

    with _targets(base, sanlock_bin) as targets:
        results = _in_parallel({kind: functools.partial(scenario, t)
                                for kind, t in targets.items()})
        runs = {kind: PyRun(results[kind], Normaliser((targets[kind].path,), (HOST,)),
                            targets[kind].log_path) for kind in KINDS}
    yield runs


# ---------------------------------------------------------------------------------------------
# The reference run: the harness and the scenario are right against the real sanlock


def test_reference_cli_run_complete(cli_runs: dict[str, CliRun]) -> None:
    steps = cli_runs["sanlock"].steps
    assert list(steps) == CLI_STEP_NAMES
    broken = [s.describe() for s in steps.values()
              if s.note.startswith(("timeout", "not run"))]
    assert not broken, "\n".join(broken)
    assert steps["@hosts_ready"].note == "ready"
    assert steps["@command"].note == "running"
    assert steps["add_lockspace"].rc == 0 and steps["add_lockspace_again"].rc != 0
    assert "r LS:R1:" in steps["status_held"].stdout
    assert steps["inquire_held"].rc == 0 and steps["release_again"].rc != 0
    assert steps["@holder_after_rem"].note == "exited -9"
    assert steps["@daemon_exited"].note == "exited"


def test_reference_py_run_complete(py_runs: dict[str, PyRun]) -> None:
    results = py_runs["sanlock"].results
    broken = [f"{group}/{name}: {record}" for group, steps in results.items()
              for name, record in steps.items() if "timeout" in record or "not_run" in record
              or "exception" in record]
    assert not broken, "\n".join(broken)
    assert results["lockspace"]["add_lockspace"] == {"ok": None}
    assert results["leases"]["acquire_wrong_version"]["errno"] == -240
    assert results["errors"]["inquire_unknown_pid"]["errno"] == 3
    # The LVB is written back at an exclusive release, set copies over its start:
    assert results["lvb"]["lvb_on_disk_before_release"] == {"ok": "b:" + "\0" * 16}
    assert results["lvb"]["lvb_on_disk_after_release"] == {"ok": "b:hello" + "q" * 11}
    assert results["lvb"]["set_lvb_larger_than_sector"]["errno"] == 7
    # Leases on several disks: acquired and listed with every disk, refused to another pid.
    multidisk = results["multidisk"]
    assert multidisk["acquire_3_disks"] == multidisk["acquire_2_disks"] == {"ok": None}
    assert [len(lease["disks"]) for lease in multidisk["inquire_multi"]["ok"]] == [3, 2]
    assert multidisk["acquire_3_disks_held_by_other_pid"]["errno"] == 17  # EEXIST


def test_py_groups_found() -> None:
    """PY_GROUPS is read from PY_SCRIPT: every group has steps, each named once."""
    assert list(PY_GROUPS) == ["lockspace", "leases", "restrict", "hangup", "bypid", "disk",
                               "errors", "same_pid", "lvb", "events", "multidisk", "teardown"]
    for group, names in PY_GROUPS.items():
        assert names and len(names) == len(set(names)), group
        assert f"def group_{group}():" in PY_SCRIPT


def test_normaliser() -> None:
    norm = Normaliser(("/t/lease.img",), ("h1",), (4243,))
    text = "r LS:R1:/t/lease.img:1048576:2 p 4243\n1 timestamp 396\ndaemon h1\np -1 helper"
    assert norm.stable(text) == ("r LS:R1:FILE:1048576:2 p PID\n1 timestamp T\ndaemon HOST\n"
                                 "p -1 helper")
    assert norm.shape(text) == "r LS:RN:FILE:N:N p PID\nN timestamp T\ndaemon HOST\np -N helper"
    assert norm.stable("h 2 gen 0 timestamp 0 FREE") == "h 2 gen 0 timestamp 0 FREE"
    assert norm.value([{"timestamp": 5, "path": "/t/lease.img"}, {"timestamp": 0}]) == [
        {"timestamp": "T", "path": "FILE"}, {"timestamp": 0}]


# ---------------------------------------------------------------------------------------------
# `sanlock client`: the same exit status and output against both daemons


NO_HELPER_PROCESS = "p -1 helper"
"""sanlock's status lists its helper process (which runs killpaths); leasestore has none (the
daemon runs killpaths itself), so that one line is left out of sanlock's output."""


TEXT_STEPS = {"log_dump"}
"""Steps that print the daemon's own log: compared by exit status and whether text came."""

DETAIL_STEPS = {"status_detail"}
"""`status -D`: each record's head line (as `status` prints it), then one `key=value` line per
field of the daemon's text. Compared by heads and, per record, the keys in their order (the
values are each daemon's own: its pids, clocks, slots, tunables)."""


def _detail_records(run: CliRun, text: str) -> list[tuple[str, list[str]]]:
    records: list[tuple[str, list[str]]] = []
    for line in run.norm.stable(text).splitlines():
        if line.startswith("    ") and records:
            records[-1][1].append(line.strip().split("=", 1)[0])
        else:
            records.append((line, []))
    kept = [r for r in records if r[0] != NO_HELPER_PROCESS]
    clients = iter(sorted(r for r in kept if r[0].startswith("p ")))  # slot order varies
    return [next(clients) if r[0].startswith("p ") else r for r in kept]


def _cli_views(run: CliRun, name: str) -> dict[str, Any]:
    step = run.steps[name]
    if name in DETAIL_STEPS:
        return {"exit status": step.rc, "outcome": step.note,
                "records": _detail_records(run, step.stdout),
                "stderr values": run.norm.stable(step.stderr).splitlines()}
    if name in TEXT_STEPS:
        return {"exit status": step.rc, "outcome": step.note,
                "stdout has text": len(step.stdout.strip()) > 0,
                "stderr values": run.norm.stable(step.stderr).splitlines()}

    def lines(text: str) -> list[str]:
        split = unique_lines(text) if name in UNORDERED_STEPS else text.splitlines()
        kept = [line for line in split if line not in (NO_HELPER_PROCESS, "p -N helper")]
        if name in STATUS_STEPS:  # client lines come in sanlock's slot order, which depends
            clients = iter(sorted(line for line in kept if line.startswith("p ")))  # on timing
            kept = [next(clients) if line.startswith("p ") else line for line in kept]
        return kept

    return {
        "exit status": step.rc,
        "outcome": step.note,
        "stdout shape": lines(run.norm.shape(step.stdout)),
        "stderr shape": lines(run.norm.shape(step.stderr)),
        "stdout values": lines(run.norm.stable(step.stdout)),
        "stderr values": lines(run.norm.stable(step.stderr)),
    }


def _report(what: str, expected: dict[str, Any], got: dict[str, Any], raw: str) -> str:
    lines = [f"{what}: leasestore differs from sanlock"]
    for key, value in expected.items():
        if got[key] != value:
            lines.append(f"  {key}:\n    sanlock:    {value!r}\n    leasestore: {got[key]!r}")
    return "\n".join([*lines, raw])


@pytest.mark.parametrize("name", CLI_STEP_NAMES)
def test_cli(cli_runs: dict[str, CliRun], name: str) -> None:
    ref, ours = cli_runs["sanlock"], cli_runs["leasestore"]
    expected, got = _cli_views(ref, name), _cli_views(ours, name)
    raw = (f"sanlock    {ref.steps[name].describe()}\n"
           f"leasestore {ours.steps[name].describe()}\nleasestore log: {ours.log_path}")
    assert got == expected, _report(name, expected, got, raw)


def _lease_lines(run: CliRun, name: str) -> list[str]:
    """The status lines about lockspaces, resources and the lease holder's client record,
    without the daemon-internal client slots (helper, listener, the status connection)."""
    text = run.norm.stable(run.steps[name].stdout)
    return sorted(line for line in text.splitlines()
                  if line.startswith(("daemon ", "s ", "r ", "p PID")))


@pytest.mark.parametrize("name", STATUS_STEPS)
def test_cli_status_leases(cli_runs: dict[str, CliRun], name: str) -> None:
    """`client status` minus sanlock's internal client slots."""
    ref, ours = cli_runs["sanlock"], cli_runs["leasestore"]
    expected, got = _lease_lines(ref, name), _lease_lines(ours, name)
    assert got == expected, (f"{name}:\n  sanlock:    {expected}\n  leasestore: {got}\n"
                             f"leasestore {ours.steps[name].describe()}\n"
                             f"leasestore log: {ours.log_path}")


def test_cli_rindex_bytes(cli_runs: dict[str, CliRun]) -> None:
    """After the same rindex steps the index's area (header and entries), its lease's leader
    and the slots' resource areas hold the same bytes, but for the deleted slot's clearing
    time and the writers' timestamps in the index lease's leader."""
    def regions(run: CliRun) -> dict[str, bytes]:
        with open(run.lease_path, "rb") as f:
            data = f.read()
        lease = bytearray(data[RX_AT + MiB:RX_AT + MiB + 512])
        lease[LEADER_TAIL] = bytes(len(range(*LEADER_TAIL.indices(512))))
        lease[LEADER_CHECKSUM] = bytes(4)
        deleted = bytearray(data[RX_AT + 2 * MiB:RX_AT + 3 * MiB])
        deleted[LEADER_TAIL] = bytes(len(range(*LEADER_TAIL.indices(512))))
        deleted[LEADER_CHECKSUM] = bytes(4)
        return {"area 1": data[RX_AT:RX_AT + MiB], "lease leader": bytes(lease),
                "deleted slot": bytes(deleted), "slots": data[RX_AT + 3 * MiB:RX_AT + 8 * MiB]}

    ref, ours = regions(cli_runs["sanlock"]), regions(cli_runs["leasestore"])
    for name, value in ref.items():
        assert ours[name] == value, name


MiB = 1 << 20
LEADER_CHECKSUM = slice(168, 172)
LEADER_TAIL = slice(176, 200)
"""A leader's write_id, write_generation and write_timestamp."""


# ---------------------------------------------------------------------------------------------
# python3-sanlock: the same results and errors against both daemons

PY_STEPS = [(group, name) for group, names in PY_GROUPS.items() for name in names]
DELIBERATE: dict[tuple[str, str], tuple[str, Callable[[Any], Any]]] = {
    ("lockspace", "read_lockspace_default_io_timeout"): (
        "add_lockspace with io_timeout 0 joins with the daemon's configured io_timeout (1 s "
        "here), as sanlock after 3.8.5 does; Debian's 3.8.5 writes 10",
        lambda ref: {"ok": {**ref["ok"], "iotimeout": 1}}),
    ("leases", "killpath_ran_after_request"): (
        "leasestore honours a request for a lease held on its own host (the holder's killpath "
        "runs); sanlock never sees requests its own host wrote",
        lambda ref: {"ok": True}),
}
"""Where leasestore differs from sanlock on purpose: what it answers instead, and why."""


@pytest.mark.parametrize(("group", "name"), PY_STEPS, ids=[f"{g}-{n}" for g, n in PY_STEPS])
def test_python(py_runs: dict[str, PyRun], group: str, name: str) -> None:
    ref, ours = py_runs["sanlock"], py_runs["leasestore"]
    expected = ref.norm.value(ref.results[group][name])
    if (group, name) in DELIBERATE:
        expected = DELIBERATE[group, name][1](expected)
    got = ours.norm.value(ours.results[group][name])
    assert got == expected, (f"{group}/{name}:\n  sanlock:    {expected}\n"
                             f"  leasestore: {got}\nleasestore log: {ours.log_path}")
