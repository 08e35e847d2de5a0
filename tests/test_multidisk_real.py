"""A resource lease on three loop devices, through two real daemons (shared, tests in order).

One disk read-only, then one returning errors (its backing file gone, later put back as it
was: stale), then two of three gone at once; last, the lease's owner dies while a disk fails
and the other host takes the lease over. Every copy is read back with `dump`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from leasestore import client
from leasestore.direct import format_lockspace, read_paxos_leader
from leasestore.errors import AcquireIdLive, AcquireOwnedRetry, LeasestoreError
from leasestore.ondisk.leader import Leader
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file, poll
from leasestore.timeouts import Timeouts
from tests.prereq import require_blockdev

pytestmark = pytest.mark.slow
LS = "md-ls"
T = Timeouts(1, 5)
MiB = 1 << 20
AT = MiB


@dataclass
class Cluster:
    lockspace_device: str
    disks: list[str]
    backing: list[str]
    daemons: list[DaemonProc]
    holders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    saved: dict[int, bytes] = field(default_factory=dict)
    """The contents of failed disks' backing files, put back by `bring_back`."""

    @property
    def lease(self) -> list[tuple[str, int]]:
        return [(disk, AT) for disk in self.disks]

    @property
    def spec(self) -> str:
        return f"{LS}:md:" + ":".join(f"{disk}:{AT}" for disk in self.disks)

    def hold(self, index: int) -> subprocess.Popen[bytes]:
        """A process on host `index` holding the lease until killed."""
        proc = self.daemons[index].hold(self.spec)
        self.holders.append(proc)
        return proc

    def leaders(self) -> list[Leader | None]:
        """Each disk's leader copy (None where it cannot be read)."""
        copies: list[Leader | None] = []
        for disk in self.disks:
            try:
                copies.append(read_paxos_leader(disk, AT))
            except LeasestoreError:
                copies.append(None)
        return copies

    def read_only(self, index: int, on: bool) -> None:
        subprocess.run(["blockdev", "--setro" if on else "--setrw", self.disks[index]],
                       check=True)

    def fail(self, index: int) -> None:
        """The disk's backing file goes away: reads return nothing, writes fail."""
        with open(self.backing[index], "rb") as f:
            # The loop device writes past the page cache: drop what it holds before reading.
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            self.saved[index] = f.read()
        os.truncate(self.backing[index], 0)
        subprocess.run(["losetup", "-c", self.disks[index]], check=True)

    def bring_back(self, index: int) -> None:
        """The disk returns as it was when it failed: behind every write since."""
        with open(self.backing[index], "r+b") as f:
            f.write(self.saved.pop(index))
            f.flush()
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        subprocess.run(["losetup", "-c", self.disks[index]], check=True)

    def stop_holder(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()
        poll(lambda: all(lease["pid"] != proc.pid for d in self.daemons if d.proc.poll() is None
                         for lease in d.call(client.status)["leases"]), 20, what="md released")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_blockdev()
    base = tmp_path_factory.mktemp("multidisk")
    loops = LoopDevices()
    daemons: list[DaemonProc] = []
    state: Cluster | None = None
    try:
        lockspace_device = loops.attach(make_file(base / "ls.img", 2 * MiB))
        backing = [make_file(base / f"disk-{c}.img", 3 * MiB) for c in "abc"]
        disks = [loops.attach(path) for path in backing]
        format_lockspace(lockspace_device, LS, 0, io_timeout_s=1)
        spec = f"{LS}:md:" + ":".join(f"{disk}:{AT}" for disk in disks)
        out = subprocess.run([sys.executable, "-m", "leasestore.cli.main", "format", "-r", spec],
                             capture_output=True, text=True, check=True).stdout
        assert all(disk in out for disk in disks)
        daemons = [DaemonProc(base, f"md-{c}", 1, 5) for c in "ab"]
        for index, daemon in enumerate(daemons):
            daemon.call(client.add_lockspace, LS, index + 1, lockspace_device, 0)
        state = Cluster(lockspace_device, disks, backing, daemons)
        yield state
    finally:
        if state is not None:
            for proc in state.holders:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for index in range(3):
                subprocess.run(["blockdev", "--setrw", state.disks[index]], check=False)
        for daemon in daemons:
            daemon.stop()
        loops.detach_all()


def test_format_wrote_every_disk_and_refuses_to_clobber_them(cluster: Cluster) -> None:
    copies = cluster.leaders()
    assert all(c is not None and c.resource_name == "md" for c in copies)
    done = subprocess.run([sys.executable, "-m", "leasestore.cli.main", "format", "-r",
                           cluster.spec], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--force" in done.stderr


def test_one_disk_read_only_leases_still_work_and_it_is_repaired_after(
        cluster: Cluster) -> None:
    b = cluster.daemons[1]
    cluster.read_only(1, True)
    try:
        holder = cluster.hold(0)
        with pytest.raises(AcquireIdLive, match="live host 1"):
            b.call(client.acquire, LS, "md", cluster.lease)
        cluster.stop_holder(holder)
        fd = b.call(client.register)
        held = b.call(client.acquire, LS, "md", cluster.lease, slkfd=fd)
        assert held["lver"] >= 2
        b.call(client.release, LS, "md", cluster.lease, slkfd=fd)
        copies = cluster.leaders()
        assert copies[0] == copies[2] and copies[0] is not None and copies[1] is not None
        assert copies[1].lver < copies[0].lver  # read-only: it missed all of that
    finally:
        cluster.read_only(1, False)
    holder = cluster.hold(0)  # the next writer brings disk b forward
    copies = cluster.leaders()
    assert copies[0] is not None and copies[0].owner_id == 1 and copies[0].timestamp != 0
    assert copies[0] == copies[1] == copies[2]
    dumped = subprocess.run([sys.executable, "-m", "leasestore.cli.main", "dump", "--json",
                             *(f"{disk}:{AT}:{MiB}" for disk in cluster.disks)],
                            capture_output=True, text=True, check=True)
    documents = json.loads(dumped.stdout)
    assert [d["target"] for d in documents] == [f"{disk}:{AT}:{MiB}" for disk in cluster.disks]
    leaders = [d["records"][0] for d in documents]  # each area begins with its leader
    assert {r["kind"] for r in leaders} == {"paxos"}
    assert len({(r["owner_id"], r["lver"], r["timestamp"]) for r in leaders}) == 1
    cluster.stop_holder(holder)


def test_one_disk_returning_errors_then_back_stale(cluster: Cluster) -> None:
    a = cluster.daemons[0]
    cluster.fail(2)
    try:
        assert cluster.leaders()[2] is None
        holder = cluster.hold(1)
        with pytest.raises(AcquireIdLive, match="live host 2"):
            a.call(client.acquire, LS, "md", cluster.lease)
        cluster.stop_holder(holder)
    finally:
        cluster.bring_back(2)
    copies = cluster.leaders()
    assert copies[0] == copies[1] and copies[2] is not None and copies[2] != copies[0]
    fd = a.call(client.register)
    a.call(client.acquire, LS, "md", cluster.lease, slkfd=fd)
    copies = cluster.leaders()
    assert copies[0] == copies[1] == copies[2] and copies[0] is not None
    assert copies[0].owner_id == 1
    a.call(client.release, LS, "md", cluster.lease, slkfd=fd)


def test_two_of_three_gone_fails_clearly_and_nobody_holds_it(cluster: Cluster) -> None:
    a, b = cluster.daemons
    before = cluster.leaders()
    cluster.read_only(0, True)
    cluster.fail(2)
    try:
        fd = b.call(client.register)
        with pytest.raises(LeasestoreError, match="of 3 disks, 2 needed"):
            b.call(client.acquire, LS, "md", cluster.lease, slkfd=fd)
        assert not b.call(client.status)["leases"] and not a.call(client.status)["leases"]
    finally:
        cluster.read_only(0, False)
        cluster.bring_back(2)
    copies = cluster.leaders()
    assert all(c is not None and c.timestamp == 0 for c in copies)
    assert copies[0] == before[0] and copies[2] == before[2]
    held = b.call(client.acquire, LS, "md", cluster.lease, slkfd=fd)
    assert held["lver"] > (before[0].lver if before[0] is not None else 0)
    b.call(client.release, LS, "md", cluster.lease, slkfd=fd)
    copies = cluster.leaders()
    assert copies[0] == copies[1] == copies[2]


OWNERS_PROBE = r"""
import json, sys, sanlock
disks = [(d, int(sys.argv[3])) for d in sys.argv[4:]]
print(json.dumps(sanlock.read_resource_owners(sys.argv[1].encode(), sys.argv[2].encode(), disks)))
"""


def test_reads_judge_by_majority_with_the_first_disk_behind(
        cluster: Cluster, sanlock_python: str) -> None:
    """The first disk misses a grant (read-only meanwhile): who-holds, `direct read_leader`
    and READ_RESOURCE_OWNERS (python3-sanlock, through our daemon) report the holder a
    majority shows, where the first disk alone shows the lease free."""
    cluster.read_only(0, True)
    try:
        holder = cluster.hold(1)
        stale = cluster.leaders()[0]
        assert stale is not None and stale.timestamp == 0  # disk a alone: free
        who = subprocess.run([sys.executable, "-m", "leasestore.cli.main", "who-holds", "-r",
                              cluster.spec, "--no-daemon", "--watch", "0", "--json"],
                             capture_output=True, text=True)
        assert who.returncode == 0, who.stderr
        [lease] = json.loads(who.stdout)
        assert [(h["host_id"], h["shared"]) for h in lease["holders"]] == [(2, False)]
        read = _direct("read_leader", "-r", cluster.spec)
        assert read.returncode == 0, read.stderr
        fields = dict(line.split(None, 1) for line in read.stdout.splitlines()[1:])
        assert fields["owner_id"] == "2" and fields["timestamp"] != "0", read.stdout
        env = dict(os.environ, SANLOCK_RUN_DIR=cluster.daemons[0].run_dir)
        probe = subprocess.run([sanlock_python, "-c", OWNERS_PROBE, LS, "md", str(AT),
                                *cluster.disks], capture_output=True, text=True, env=env)
        assert probe.returncode == 0, probe.stderr
        assert [owner["host_id"] for owner in json.loads(probe.stdout)] == [2]
        cluster.stop_holder(holder)
    finally:
        cluster.read_only(0, False)


def _direct(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leasestore.cli.main", "direct", *args],
                          capture_output=True, text=True)


def test_a_daemonless_acquire_and_release_on_three_disks(cluster: Cluster) -> None:
    """`leasestore direct acquire|release` as host 3 (no daemon), with one disk read-only
    throughout: written on the other two, refused to a daemon's host while held, released."""
    host3 = f"{LS}:3:{cluster.lockspace_device}:0"
    assert _direct("acquire_id", "-s", host3, "-o", "1").returncode == 0
    cluster.read_only(2, True)
    try:
        taken = _direct("acquire", "-r", cluster.spec, "-s", host3)
        assert taken.returncode == 0, taken.stderr
        copies = cluster.leaders()
        assert copies[0] == copies[1] and copies[0] is not None and copies[0].owner_id == 3
        # Host 3 renews no more (no daemon): a daemon would take it after host_dead; it is
        # refused at once while nobody has seen host 3 renew or expire.
        fd = cluster.daemons[1].call(client.register)
        with pytest.raises((AcquireIdLive, AcquireOwnedRetry)):
            cluster.daemons[1].call(client.acquire, LS, "md", cluster.lease, slkfd=fd,
                                    owner_nowait=True)
        released = _direct("release", "-r", cluster.spec, "-s", host3)
        assert released.returncode == 0, released.stderr
        assert all(c is not None and c.timestamp == 0 for c in cluster.leaders()[:2])
    finally:
        cluster.read_only(2, False)
        _direct("release_id", "-s", host3)


def test_takeover_of_a_dead_owner_with_one_disk_failing(cluster: Cluster) -> None:
    a, b = cluster.daemons
    holder = cluster.hold(0)
    lver = cluster.leaders()[0]
    assert lver is not None and lver.owner_id == 1
    cluster.fail(1)
    a.kill()  # host 1 dies (its watchdog would reset it; here nothing is left running)
    holder.kill()
    holder.wait()
    fd = b.call(client.register)  # this test process holds it for host 2 (and releases it)

    def take() -> bool:
        try:
            b.call(client.acquire, LS, "md", cluster.lease, slkfd=fd)
        except AcquireIdLive:
            return False
        return True

    poll(take, T.host_dead_s + 30, interval_s=0.5, what="host 2 takes md over")
    copies = cluster.leaders()
    assert copies[1] is None
    assert copies[0] == copies[2] and copies[0] is not None
    assert copies[0].owner_id == 2 and copies[0].lver > lver.lver
    b.call(client.release, LS, "md", cluster.lease, slkfd=fd)
    cluster.bring_back(1)
