"""Mixed cluster on leases of two and three disks: the real sanlock daemon (host 1) and a
leasestore daemon (host 2) exclude each other both ways, with every disk healthy and with one
of three read-only (sanlock marks its multi-disk reads untested; this is what it does)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from leasestore import client
from leasestore.direct import format_lockspace, format_resource, read_paxos_leader
from leasestore.errors import AcquireIdLive
from leasestore.testing.procs import DaemonProc, LoopDevices, SanlockProc, make_file, poll
from tests.prereq import require_blockdev

pytestmark = [pytest.mark.slow, pytest.mark.sanlock]
LS = "mdx-ls"
MiB = 1 << 20
AT = MiB


@dataclass
class Mixed:
    theirs: SanlockProc
    ours: DaemonProc
    disks: list[str]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, sanlock_bin: str) -> Iterator[Mixed]:
    require_blockdev()
    base: Path = tmp_path_factory.mktemp("mdx")
    loops = LoopDevices()
    procs: list[SanlockProc | DaemonProc] = []
    disks: list[str] = []
    try:
        lockspace_device = loops.attach(make_file(base / "ls.img", 2 * MiB))
        disks = [loops.attach(make_file(base / f"d{i}.img", 3 * MiB)) for i in range(3)]
        format_lockspace(lockspace_device, LS, 0, io_timeout_s=1)
        format_resource(disks[0], LS, "md2", AT, extra_disks=[(disks[1], AT)])
        format_resource(disks[0], LS, "md3", 2 * AT,
                        extra_disks=[(d, 2 * AT) for d in disks[1:]])
        theirs = SanlockProc(base, "slk-md", sanlock_bin)
        procs.append(theirs)
        ours = DaemonProc(base, "our-md", io_timeout_s=1, watchdog_fire_timeout_s=60)
        procs.append(ours)
        theirs.client("add_lockspace", "-s", f"{LS}:1:{lockspace_device}:0", "-o", "1")
        ours.call(client.add_lockspace, LS, 2, lockspace_device, 0)
        yield Mixed(theirs, ours, disks)
    finally:
        for disk in disks:
            subprocess.run(["blockdev", "--setrw", disk], check=False)
        for proc in reversed(procs):
            proc.stop()
        loops.detach_all()


@pytest.mark.parametrize(("name", "count", "at"), [("md2", 2, AT), ("md3", 3, 2 * AT)])
def test_exclusion_both_ways(mixed: Mixed, name: str, count: int, at: int) -> None:
    lease = [(disk, at) for disk in mixed.disks[:count]]
    spec = f"{LS}:{name}:" + ":".join(f"{disk}:{at}" for disk in mixed.disks[:count])
    holder = subprocess.Popen([mixed.theirs.bin, "client", "command", "-r", spec, "-c",
                               "/bin/sleep", "600"], env=mixed.theirs.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: all(read_paxos_leader(d, at).timestamp != 0 for d, _ in lease), 20,
             what="sanlock holds it on every disk")
        with pytest.raises(AcquireIdLive, match="held by live host 1"):
            mixed.ours.call(client.acquire, LS, name, lease)
    finally:
        holder.kill()
        holder.wait()
    poll(lambda: all(read_paxos_leader(d, at).timestamp == 0 for d, _ in lease), 20,
         what="sanlock released it")
    fd = mixed.ours.call(client.register)
    held = mixed.ours.call(client.acquire, LS, name, lease, slkfd=fd)
    assert {read_paxos_leader(d, at).owner_id for d, _ in lease} == {2}
    refused = mixed.theirs.client("command", "-r", spec, "-c", "/bin/true", check=False)
    assert refused.returncode != 0 and "-243" in refused.stdout + refused.stderr
    mixed.ours.call(client.release, LS, name, lease, slkfd=fd)
    taken = mixed.theirs.client("command", "-r", spec, "-c", "/bin/true", check=False)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert {read_paxos_leader(d, at).lver for d, _ in lease} == {held["lver"] + 1}


def test_one_of_three_disks_read_only(mixed: Mixed) -> None:
    name, lease, at = "md3", [(d, 2 * AT) for d in mixed.disks], 2 * AT
    spec = f"{LS}:{name}:" + ":".join(f"{d}:{at}" for d, _ in lease)
    subprocess.run(["blockdev", "--setro", mixed.disks[2]], check=True)
    try:
        taken = mixed.theirs.client("command", "-r", spec, "-c", "/bin/true", check=False)
        assert taken.returncode == 0, taken.stdout + taken.stderr  # a majority is enough
        fd = mixed.ours.call(client.register)
        held = mixed.ours.call(client.acquire, LS, name, lease, slkfd=fd)
        refused = mixed.theirs.client("command", "-r", spec, "-c", "/bin/true", check=False)
        assert refused.returncode != 0 and "-243" in refused.stdout + refused.stderr
        mixed.ours.call(client.release, LS, name, lease, slkfd=fd)
        taken = mixed.theirs.client("command", "-r", spec, "-c", "/bin/true", check=False)
        assert taken.returncode == 0, taken.stdout + taken.stderr
        lvers = [read_paxos_leader(d, at).lver for d, _ in lease]
        assert lvers[0] == lvers[1] == held["lver"] + 1 and lvers[2] < lvers[0]
    finally:
        subprocess.run(["blockdev", "--setrw", mixed.disks[2]], check=True)
    again = mixed.ours.call(client.acquire, LS, name, lease, slkfd=fd)
    mixed.ours.call(client.release, LS, name, lease, slkfd=fd)
    copies = [read_paxos_leader(d, at) for d, _ in lease]
    assert copies[0] == copies[1] == copies[2] and copies[0].lver == again["lver"]
