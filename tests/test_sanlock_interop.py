"""Mixed lockspace: the real sanlock daemon and a leasestore daemon as hosts of one lockspace."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from leasestore import client, daemonless
from leasestore.direct import dump, format_lockspace, format_resource, read_paxos_leader
from leasestore.errors import AcquireIdLive, HostIdBusy
from leasestore.testing.procs import DaemonProc, LoopDevices, SanlockProc, make_file, poll
from tests.prereq import require_blockdev

pytestmark = [pytest.mark.slow, pytest.mark.sanlock]
LS = "mixed-ls"
MiB = 1 << 20
RES_THEIRS = 1 << 20
RES_OURS = 2 << 20


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory,
          sanlock_bin: str) -> Iterator[tuple[SanlockProc, DaemonProc, list[str]]]:
    require_blockdev()
    base: Path = tmp_path_factory.mktemp("mixed")
    loops = LoopDevices()
    procs: list[SanlockProc | DaemonProc] = []
    try:
        backing = make_file(base / "shared.img", 12 << 20)
        devices = [loops.attach(backing), loops.attach(backing)]
        format_lockspace(devices[0], LS, 0, io_timeout_s=1)
        format_resource(devices[0], LS, "theirs", RES_THEIRS)
        format_resource(devices[0], LS, "ours", RES_OURS)
        theirs = SanlockProc(base, "slk-host", sanlock_bin)
        procs.append(theirs)
        ours = DaemonProc(base, "our-host", io_timeout_s=1, watchdog_fire_timeout_s=60)
        procs.append(ours)
        yield theirs, ours, devices
    finally:
        for proc in reversed(procs):
            proc.stop()
        loops.detach_all()


def _both_joined(theirs: SanlockProc, ours: DaemonProc, devices: list[str]) -> None:
    """sanlock as host 1 and leasestore as host 2 of the lockspace (an earlier test may have
    left them joined)."""
    if ours.call(client.inq_lockspace, LS, 2, devices[1], 0) is not True:
        theirs.client("add_lockspace", "-s", f"{LS}:1:{devices[0]}:0", "-o", "1", check=False)
        ours.call(client.add_lockspace, LS, 2, devices[1], 0)


def _states(out: str) -> dict[int, str]:
    return {int(h): s for h, s in re.findall(r"^h (\d+) gen \d+ timestamp \d+ (\w+)", out, re.M)}



def _owners(device: str) -> list[daemonless.ResourceOwner]:
    return daemonless.resource_owners([(device, RES_CONVERT)])


def _run_together(calls: list[Callable[[], object]], timeout_s: float) -> None:
    """Run `calls` in threads at once; re-raise the first error any of them raised, and fail if
    any is still running after timeout_s."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), f"still running after {timeout_s} s"

def test_sanlock_and_leasestore_see_each_other_live(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    theirs, ours, devices = mixed
    theirs.client("add_lockspace", "-s", f"{LS}:1:{devices[0]}:0", "-o", "1")
    ours.call(client.add_lockspace, LS, 2, devices[1], 0)
    poll(lambda: ours.hosts(LS).get(1, {}).get("state") == "live", 20,
         what="leasestore sees sanlock live")
    assert ours.hosts(LS)[1]["host_name"] == "slk-host"
    poll(lambda: _states(theirs.client("gets", "-s", LS, "-h", "1").stdout).get(2) == "LIVE",
         20, what="sanlock sees leasestore live")
    records = {r.host_id: r for r in dump(devices[0], 0, 1 << 20) if r.acquired}
    assert records[1].host_name == "slk-host" and records[2].host_name == "our-host"
    assert records[1].io_timeout == records[2].io_timeout == 1


def test_a_lease_held_through_sanlock_is_refused_to_leasestore(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    theirs, ours, devices = mixed
    holder = subprocess.Popen(
        [theirs.bin, "client", "command", "-r", f"{LS}:theirs:{devices[0]}:{RES_THEIRS}",
         "-c", "/bin/sleep", "600"], env=theirs.env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        poll(lambda: read_paxos_leader(devices[1], RES_THEIRS).timestamp != 0, 20,
             what="sanlock holds the lease")
        leader = read_paxos_leader(devices[1], RES_THEIRS)
        assert (leader.owner_id, leader.lver) == (1, 1)
        with pytest.raises(AcquireIdLive, match="held by live host 1"):
            ours.call(client.acquire, LS, "theirs", [(devices[1], RES_THEIRS)])
        assert read_paxos_leader(devices[1], RES_THEIRS).owner_id == 1
    finally:
        holder.kill()
        holder.wait()
    poll(lambda: read_paxos_leader(devices[1], RES_THEIRS).timestamp == 0, 20,
         what="sanlock released after its holder died")
    # Free again: leasestore takes it at the next version, then gives it back.
    held = ours.call(client.acquire, LS, "theirs", [(devices[1], RES_THEIRS)])
    assert held["lver"] == 2
    ours.call(client.release, LS, "theirs", [(devices[1], RES_THEIRS)])


def test_a_lease_held_through_leasestore_is_refused_to_sanlock(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    theirs, ours, devices = mixed
    held = ours.call(client.acquire, LS, "ours", [(devices[1], RES_OURS)])
    try:
        assert held["lver"] == 1
        refused = theirs.client("command", "-r", f"{LS}:ours:{devices[0]}:{RES_OURS}",
                                "-c", "/bin/true", check=False)
        assert refused.returncode != 0
        assert "-243" in refused.stdout + refused.stderr  # ACQUIRE_IDLIVE
        assert read_paxos_leader(devices[0], RES_OURS).owner_id == 2
    finally:
        ours.call(client.release, LS, "ours", [(devices[1], RES_OURS)])
    # Released by us, sanlock now takes it at the next version.
    taken = theirs.client("command", "-r", f"{LS}:ours:{devices[0]}:{RES_OURS}", "-c",
                          "/bin/true", check=False)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert read_paxos_leader(devices[0], RES_OURS).lver == 2


def test_leasestore_refuses_the_host_id_sanlock_holds(
    mixed: tuple[SanlockProc, DaemonProc, list[str]], tmp_path: Path
) -> None:
    theirs, _ours, devices = mixed
    other = DaemonProc(tmp_path, "our-other", io_timeout_s=1, watchdog_fire_timeout_s=60)
    try:
        with pytest.raises(HostIdBusy, match="held by live host 'slk-host'"):
            other.call(client.add_lockspace, LS, 1, devices[1], 0)
    finally:
        other.stop()
    assert f"s {LS}:1:" in theirs.client("gets", "-s", LS).stdout  # sanlock still holds it
    record = next(r for r in dump(devices[0], 0, 1 << 20) if r.host_id == 1)
    assert record.host_name == "slk-host" and record.owner_generation == 1


BINDING_HOLDER = r"""
import sys, sanlock
ls, path, offset = sys.argv[1].encode(), sys.argv[2], int(sys.argv[3])
print(sanlock.inq_lockspace(ls, 2, path, 0), flush=True)
print(sorted((h["host_id"], h["flags"]) for h in sanlock.get_hosts(ls)), flush=True)
fd = sanlock.register()
sanlock.acquire(ls, b"ours", [(path, offset)], slkfd=fd)
print([r["resource"].decode() for r in sanlock.inquire(slkfd=fd)], flush=True)
sys.stdin.readline()
sanlock.release(ls, b"ours", [(path, offset)], slkfd=fd)
print("released", flush=True)
"""


def test_the_leasestore_host_driven_only_through_python3_sanlock(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    """Every call on the leasestore host goes through the sanlock binding (as vdsm's would):
    it sees the sanlock host live, holds a lease that sanlock is refused, and gives it back."""
    theirs, ours, devices = mixed
    _both_joined(theirs, ours, devices)
    poll(lambda: ours.hosts(LS).get(1, {}).get("state") == "live", 20, what="sanlock live")
    holder = subprocess.Popen(
        ["/usr/bin/python3", "-c", BINDING_HOLDER, LS, devices[1], str(RES_OURS)],
        env={**os.environ, "SANLOCK_RUN_DIR": ours.run_dir}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "True"
        assert holder.stdout.readline().strip() == "[(1, 3), (2, 3)]"  # both LIVE
        assert holder.stdout.readline().strip() == "['ours']"
        lver = read_paxos_leader(devices[0], RES_OURS).lver
        refused = theirs.client("command", "-r", f"{LS}:ours:{devices[0]}:{RES_OURS}",
                                "-c", "/bin/true", check=False)
        assert refused.returncode != 0 and "-243" in refused.stdout + refused.stderr
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait()
    taken = theirs.client("command", "-r", f"{LS}:ours:{devices[0]}:{RES_OURS}", "-c",
                          "/bin/true", check=False)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert read_paxos_leader(devices[0], RES_OURS).lver == lver + 1


RES_LVB = 3 << 20
LVB_TURN = r"""
import sanlock, sys
ls, disks = sys.argv[1].encode(), [(sys.argv[2], int(sys.argv[3]))]
fd = sanlock.register()
sanlock.acquire(ls, b"lvb", disks, slkfd=fd, lvb=True)
print(sanlock.get_lvb(ls, b"lvb", disks, 16).rstrip(b"\0").decode(), flush=True)
sanlock.set_lvb(ls, b"lvb", disks, sys.argv[4].encode().ljust(16, b"\0"))
sanlock.release(ls, b"lvb", disks, slkfd=fd)
"""


def test_the_lvb_passes_between_sanlock_and_leasestore_holders(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    """Each host in turn (python3-sanlock against its own daemon) acquires with the LVB flag,
    reads what the previous holder left, sets its own value and releases: sanlock's value is
    read by leasestore's holder, and leasestore's by sanlock's."""
    theirs, ours, devices = mixed
    _both_joined(theirs, ours, devices)
    format_resource(devices[0], LS, "lvb", RES_LVB)

    def turn(run_dir: str, device: str, value: str) -> str:
        done = subprocess.run(["/usr/bin/python3", "-c", LVB_TURN, LS, device, str(RES_LVB),
                               value], env={**os.environ, "SANLOCK_RUN_DIR": run_dir},
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert turn(theirs.run_dir, devices[0], "from-sanlock") == ""
    assert turn(ours.run_dir, devices[1], "from-leasestore") == "from-sanlock"
    assert turn(theirs.run_dir, devices[0], "sanlock-again") == "from-leasestore"
    assert turn(ours.run_dir, devices[1], "x") == "sanlock-again"


RES_ORPHAN = 4 << 20


def test_an_orphan_keeps_its_lease_from_the_other_implementation(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    """Each host in turn leaves a persistent lease as an orphan (`client command -P 1` whose
    program exits), through the sanlock CLI against its own daemon: the other host is refused
    it (its owner lives), and a plain acquire on the owner's host too (-EUCLEAN); the owner's
    host adopts it (-O 1) and its exit releases it; then the other host takes it."""
    theirs, ours, devices = mixed
    _both_joined(theirs, ours, devices)
    format_resource(devices[0], LS, "orphan", RES_ORPHAN)
    ours_cli = SanlockCli(theirs.bin, ours.run_dir)

    def command(cli: SanlockProc | SanlockCli, device: str, *flags: str) -> str:
        """"acquire done 0" if the program ran (the CLI's own lines are lost at its exec),
        else the CLI's last line."""
        out = cli.client("command", "-r", f"{LS}:orphan:{device}:{RES_ORPHAN}", *flags,
                         "-c", "/bin/true", check=False)
        if out.returncode == 0 and not out.stdout:
            return "acquire done 0"
        return (out.stdout + out.stderr).strip().splitlines()[-1]

    for owner, other, mine, its in ((theirs, ours_cli, devices[0], devices[1]),
                                    (ours_cli, theirs, devices[1], devices[0])):
        assert command(owner, mine, "-P", "1") == "acquire done 0"
        owner_id = read_paxos_leader(mine, RES_ORPHAN).owner_id
        listed = functools.partial(lambda cli: " ORPHAN" in cli.client("status").stdout, owner)
        poll(listed, 10, what="the orphan listed")  # the daemon sees the exit in its own time
        assert command(other, its) == "acquire done -243"  # ACQUIRE_IDLIVE: the owner lives
        assert command(owner, mine) == "acquire done -117"  # EUCLEAN: an orphan is here
        assert read_paxos_leader(mine, RES_ORPHAN).owner_id == owner_id
        assert read_paxos_leader(mine, RES_ORPHAN).timestamp != 0
        assert command(owner, mine, "-O", "1") == "acquire done 0"  # adopted; exit frees it
        freed = functools.partial(lambda dev: read_paxos_leader(dev, RES_ORPHAN).timestamp == 0,
                                  mine)
        poll(freed, 10, what="the adopted orphan released")
        assert command(other, its) == "acquire done 0"


RES_CONVERT = 5 << 20


def test_a_convert_to_exclusive_waits_for_the_other_implementations_shared_holder(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    """Each host holds the lease shared (`client command -r RES:SH`); each host's holder asks
    its own daemon (`client convert -p PID`) to go exclusive: refused (-EAGAIN) while the other
    host's holder lives, and the holder stays shared; once that holder exits, the convert
    succeeds and the other host's shared acquire is refused (-243); converted back to shared,
    the other host may join again."""
    theirs, ours, devices = mixed
    _both_joined(theirs, ours, devices)
    format_resource(devices[0], LS, "conv", RES_CONVERT)
    ours_cli = SanlockCli(theirs.bin, ours.run_dir)
    holders: list[subprocess.Popen[str]] = []

    def hold(cli: SanlockProc | SanlockCli, device: str) -> subprocess.Popen[str]:
        holder = subprocess.Popen([theirs.bin, "client", "command", "-r",
                                   f"{LS}:conv:{device}:{RES_CONVERT}:SH", "-c", "/bin/sleep",
                                   "600"], env=cli.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, text=True)
        holders.append(holder)
        held = functools.partial(  # the line without ADD: its acquire has ended
            lambda pid: re.search(rf":SH p {pid}$", cli.client("status").stdout, re.M),
            holder.pid)
        poll(held, 20, what="the shared holding")
        return holder

    def convert(cli: SanlockProc | SanlockCli, device: str, pid: int, tail: str = "") -> str:
        out = cli.client("convert", "-r", f"{LS}:conv:{device}:{RES_CONVERT}{tail}", "-p",
                         str(pid), check=False)
        return out.stdout.strip().splitlines()[-1]

    try:
        for first, second, one, two in ((ours_cli, theirs, devices[1], devices[0]),
                                        (theirs, ours_cli, devices[0], devices[1])):
            mine, other = hold(first, one), hold(second, two)
            assert convert(first, one, mine.pid) == "convert done -11"
            assert f":SH p {mine.pid}" in first.client("status").stdout  # still shared
            other.kill()
            other.wait(10)
            poll(functools.partial(lambda d: not _owners(d)[1:], one), 20,
                 what="the other host's shared holding gone")
            assert convert(first, one, mine.pid) == "convert done 0"
            refused = second.client("command", "-r", f"{LS}:conv:{two}:{RES_CONVERT}:SH",
                                    "-c", "/bin/true", check=False)
            assert refused.returncode == 1 and "-243" in refused.stdout, refused.stdout
            assert convert(first, one, mine.pid, ":SH") == "convert done 0"
            joined = second.client("command", "-r", f"{LS}:conv:{two}:{RES_CONVERT}:SH",
                                   "-c", "/bin/true", check=False)
            assert joined.returncode == 0, joined.stdout
            mine.kill()
            mine.wait(10)
            poll(functools.partial(lambda d: not _owners(d), one), 20,
                 what="the lease free again")
    finally:
        for holder in holders:
            if holder.poll() is None:
                holder.kill()
                holder.wait(10)


RX_AT = 6 << 20


def test_both_implementations_share_one_resource_index(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    """One index, formatted by leasestore: each host's daemon (through the sanlock CLI)
    creates a resource in it, finds the other's, deletes it, and the next create takes the
    freed slot; both serialise on the index's lease."""
    theirs, ours, devices = mixed
    _both_joined(theirs, ours, devices)
    ours_cli = SanlockCli(theirs.bin, ours.run_dir)
    index = {id(theirs): f"{LS}:{devices[0]}:{RX_AT}", id(ours_cli): f"{LS}:{devices[1]}:{RX_AT}"}

    def rx(cli: SanlockProc | SanlockCli, *args: str) -> list[str]:
        out = cli.client(*args[:1], "-x", index[id(cli)], *args[1:], check=False)
        return out.stdout.strip().splitlines()

    assert rx(ours_cli, "format") == ["format done 0"]
    assert rx(theirs, "create", "-e", "from-sanlock") == [
        "create_resource done 0", f"offset {RX_AT + 2 * MiB}"]
    assert rx(ours_cli, "create", "-e", "from-leasestore") == [
        "create_resource done 0", f"offset {RX_AT + 3 * MiB}"]
    assert rx(ours_cli, "lookup", "-e", "from-sanlock")[1] == (
        f"name from-sanlock offset {RX_AT + 2 * MiB}")
    assert rx(theirs, "lookup", "-e", "from-leasestore")[1] == (
        f"name from-leasestore offset {RX_AT + 3 * MiB}")
    assert rx(theirs, "delete", "-e", "from-leasestore") == ["delete_resource done 0"]
    assert rx(ours_cli, "lookup", "-e", "from-leasestore") == ["lookup done -2"]
    assert rx(ours_cli, "create", "-e", "again") == [
        "create_resource done 0", f"offset {RX_AT + 3 * MiB}"]
    # The resources are real leases: sanlock takes the one leasestore created.
    taken = theirs.client("command", "-r", f"{LS}:again:{devices[0]}:{RX_AT + 3 * MiB}", "-c",
                          "/bin/true", check=False)
    assert taken.returncode == 0, taken.stdout
    assert read_paxos_leader(devices[0], RX_AT + MiB).resource_name == "rindex_lease"


class SanlockCli:
    """The sanlock CLI pointed at a leasestore daemon's run dir."""

    def __init__(self, sanlock_bin: str, run_dir: str) -> None:
        self.bin = sanlock_bin
        self.env = {**os.environ, "SANLOCK_RUN_DIR": run_dir}

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([self.bin, "client", *args], env=self.env, capture_output=True,
                             text=True, timeout=120, check=False)
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out


EVENT_LISTENER = r"""
import json, select, sys, time, sanlock
ls = sys.argv[1].encode()
fd = sanlock.reg_event(ls)
print("listening", flush=True)
deadline = time.monotonic() + 40
events = []
while not events and time.monotonic() < deadline:
    select.select([fd], [], [], 1)
    events = sanlock.get_event(fd)
sanlock.end_event(fd, ls)
print(json.dumps(events), flush=True)
"""
EVENT_SENDER = r"""
import sys, sanlock
sanlock.set_event(sys.argv[1].encode(), int(sys.argv[2]), 0, int(sys.argv[3]),
                  data=int(sys.argv[4]), flags=sanlock.SETEV_CUR_GENERATION)
"""


def test_host_events_pass_between_sanlock_and_leasestore(
    mixed: tuple[SanlockProc, DaemonProc, list[str]]
) -> None:
    """python3-sanlock on each side: a listener registered with one daemon (reg_event) gets
    the event the other host's daemon was asked to send it (set_event), with the sender's
    host_id and generation, both ways; end_event then ends the listener."""
    theirs, ours, devices = mixed
    _both_joined(theirs, ours, devices)
    poll(lambda: ours.hosts(LS).get(1, {}).get("state") == "live", 20, what="sanlock live")
    for listen_dir, send_dir, to_host, from_host, event in (
            (ours.run_dir, theirs.run_dir, 2, 1, 5), (theirs.run_dir, ours.run_dir, 1, 2, 6)):
        listener = subprocess.Popen(["/usr/bin/python3", "-c", EVENT_LISTENER, LS],
                                    env={**os.environ, "SANLOCK_RUN_DIR": listen_dir},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == "listening"
            sent = subprocess.run(["/usr/bin/python3", "-c", EVENT_SENDER, LS, str(to_host),
                                   str(event), "77"],
                                  env={**os.environ, "SANLOCK_RUN_DIR": send_dir},
                                  capture_output=True, text=True, timeout=30, check=False)
            assert sent.returncode == 0, sent.stderr
            line = listener.stdout.readline()
            assert listener.wait(30) == 0, listener.stderr.read() if listener.stderr else ""
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
        got = json.loads(line)
        assert got, f"host {to_host}'s listener got no event"
        assert {(e["host_id"], e["event"], e["data"], e["from_host_id"]) for e in got} == {
            (to_host, event, 77, from_host)}


# --- takeover across implementations after host_dead ----------------------------------------

DEAD_LS = "mixed-dead"
R_SLK = 1 << 20
R_OURS = 2 << 20
W_S = 60
"""sanlock 3.8 fixes watchdog_fire_timeout at 60 s, so our daemons use 60 s too: the cluster
must agree on it, since host_dead = 8 × io_timeout + watchdog_fire_timeout."""
HOST_DEAD_S = 8 * 1 + W_S
HOLDER = r"""
import sys, time
from leasestore import client
fd = client.register()
client.acquire(sys.argv[1], "r-ours", [(sys.argv[2], int(sys.argv[3]))], slkfd=fd)
print("held", flush=True)
time.sleep(600)
"""


def test_each_implementation_takes_a_dead_hosts_lease_only_after_host_dead(
        tmp_path: Path, sanlock_bin: str) -> None:
    """sanlock host 1 and leasestore host 2 each hold a lease and die together; then
    leasestore host 4 takes sanlock's lease and sanlock host 3 takes ours, each no earlier than
    host_dead after the dead host's last renewal, and soon after it."""
    require_blockdev()
    loops = LoopDevices()
    procs: list[SanlockProc | DaemonProc] = []
    holders: list[subprocess.Popen[str]] = []
    try:
        backing = make_file(tmp_path / "shared.img", 4 << 20)
        dev = [loops.attach(backing) for _ in range(4)]
        format_lockspace(dev[0], DEAD_LS, 0, io_timeout_s=1)
        format_resource(dev[0], DEAD_LS, "r-slk", R_SLK)
        format_resource(dev[0], DEAD_LS, "r-ours", R_OURS)
        slk1, slk3 = (SanlockProc(tmp_path, f"slk{i}", sanlock_bin) for i in (1, 3))
        ours2, ours4 = (DaemonProc(tmp_path, f"ours{i}", 1, W_S) for i in (2, 4))
        procs += [slk1, slk3, ours2, ours4]
        joins: list[Callable[[], object]] = [
            functools.partial(s.client, "add_lockspace", "-o", "1", "-s",
                              f"{DEAD_LS}:{h}:{dev[h - 1]}:0")
            for s, h in ((slk1, 1), (slk3, 3))]
        joins += [functools.partial(o.call, client.add_lockspace, DEAD_LS, h, dev[h - 1], 0)
                  for o, h in ((ours2, 2), (ours4, 4))]
        _run_together(joins, 120)
        holders.append(subprocess.Popen(
            [slk1.bin, "client", "command", "-r", f"{DEAD_LS}:r-slk:{dev[0]}:{R_SLK}", "-c",
             "/bin/sleep", "600"], env=slk1.env, text=True))
        holders.append(subprocess.Popen(
            [sys.executable, "-c", HOLDER, DEAD_LS, dev[1], str(R_OURS)],
            env={**os.environ, "LEASESTORE_RUN_DIR": ours2.run_dir}, stdout=subprocess.PIPE,
            text=True))
        assert holders[1].stdout is not None and holders[1].stdout.readline() == "held\n"
        poll(lambda: read_paxos_leader(dev[3], R_SLK).timestamp != 0, 30,
             what="sanlock holds r-slk")
        assert read_paxos_leader(dev[3], R_SLK).owner_id == 1
        assert read_paxos_leader(dev[2], R_OURS).owner_id == 2

        # Both owners die at once: daemon and holder, as a machine would.
        dying: list[subprocess.Popen[Any]] = [slk1.proc, ours2.proc, *holders]
        for victim in dying:
            victim.kill()
        died_at = time.monotonic()
        taken: dict[str, float] = {}

        def ours_takes_theirs() -> None:
            def attempt() -> bool:
                try:
                    ours4.call(client.acquire, DEAD_LS, "r-slk", [(dev[3], R_SLK)])
                except AcquireIdLive:
                    return False
                return True
            poll(attempt, HOST_DEAD_S + 40, interval_s=0.5, what="leasestore takes r-slk")
            taken["leasestore"] = time.monotonic()
            # This test process holds it now: give it back before the daemon stops (a daemon
            # that stops kills the holders of its leases).
            ours4.call(client.release, DEAD_LS, "r-slk", [(dev[3], R_SLK)])

        def theirs_takes_ours() -> None:
            def attempt() -> bool:
                out = slk3.client("command", "-r", f"{DEAD_LS}:r-ours:{dev[2]}:{R_OURS}", "-c",
                                  "/bin/true", check=False)
                return out.returncode == 0
            poll(attempt, HOST_DEAD_S + 40, interval_s=0.5, what="sanlock takes r-ours")
            taken["sanlock"] = time.monotonic()

        _run_together([ours_takes_theirs, theirs_takes_ours], HOST_DEAD_S + 60)
        assert set(taken) == {"leasestore", "sanlock"}, taken
        for who, when in taken.items():
            # The last renewal was at most one renewal interval (2 s) before the kill.
            print(f"{who} took the dead host's lease {when - died_at:.1f} s after its death")
            assert HOST_DEAD_S - 2 <= when - died_at <= HOST_DEAD_S + 12, (who, when - died_at)
        taken_by_us = read_paxos_leader(dev[3], R_SLK)
        assert (taken_by_us.owner_id, taken_by_us.lver) == (4, 2)
        taken_by_them = read_paxos_leader(dev[2], R_OURS)
        assert (taken_by_them.owner_id, taken_by_them.lver) == (3, 2)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        for proc in reversed(procs):
            proc.stop()
        loops.detach_all()
