"""Mixed lockspace: the real sanlock daemon and a leasestore daemon as hosts of one lockspace."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasestore import client
from leasestore.direct import dump, format_lockspace, format_resource, read_paxos_leader
from leasestore.errors import AcquireIdLive, HostIdBusy
from leasestore.testing.procs import DaemonProc, LoopDevices, SanlockProc, make_file, poll

pytestmark = [pytest.mark.slow, pytest.mark.sanlock]
LS = "mixed-ls"
RES_THEIRS = 1 << 20
RES_OURS = 2 << 20


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory,
          sanlock_bin: str) -> Iterator[tuple[SanlockProc, DaemonProc, list[str]]]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        if os.environ.get("LEASESTORE_REQUIRE_BLOCKDEV") == "1":
            pytest.fail("root and losetup are required")
        pytest.skip("needs root and losetup")
    base: Path = tmp_path_factory.mktemp("mixed")
    loops = LoopDevices()
    procs: list[SanlockProc | DaemonProc] = []
    try:
        backing = make_file(base / "shared.img", 4 << 20)
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


def _states(out: str) -> dict[int, str]:
    return {int(h): s for h, s in re.findall(r"^h (\d+) gen \d+ timestamp \d+ (\w+)", out, re.M)}


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
