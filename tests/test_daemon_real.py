"""Real daemons on loop devices (one per host over one backing file), io_timeout 1 s.

The daemons are shared by the tests of this module, which run in order: join, see each other,
refuse a duplicate, survive hostile clients, leave, and finally a SIGKILLed host is judged dead.
Each test also passes alone: the `joined` fixture joins whatever the tests before did not.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from leasestore import client
from leasestore.daemon import sanlock_proto as sp
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.direct import dump, format_lockspace
from leasestore.errors import HostIdBusy, LockspaceExists, LockspaceNotJoined, UsageError
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file, poll
from leasestore.timeouts import Timeouts

pytestmark = pytest.mark.slow
LS = "real-ls"
IO_TIMEOUT = 1
WATCHDOG = 5
T = Timeouts(IO_TIMEOUT, WATCHDOG)


@dataclass
class Cluster:
    devices: list[str]
    daemons: list[DaemonProc]

    def add(self, index: int, host_id: int) -> None:
        self.daemons[index].call(client.add_lockspace, LS, host_id, self.devices[index], 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("real")
    loops = LoopDevices()
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        if os.environ.get("LEASESTORE_REQUIRE_BLOCKDEV") == "1":
            pytest.fail("root and losetup are required")
        pytest.skip("needs root and losetup")
    backing = make_file(base / "shared.img", 8 << 20)
    daemons: list[DaemonProc] = []
    try:
        devices = [loops.attach(backing) for _ in range(3)]
        format_lockspace(devices[0], LS, 0, io_timeout_s=IO_TIMEOUT)
        daemons = [DaemonProc(base, f"host-{c}", IO_TIMEOUT, WATCHDOG) for c in "abc"]
        yield Cluster(devices, daemons)
    finally:
        for daemon in daemons:
            daemon.stop()
        loops.detach_all()


@pytest.fixture
def joined(cluster: Cluster) -> Cluster:
    """Daemon a joined as host 1 and b as host 2, whether the tests before ran or not."""
    for index, host_id in ((0, 1), (1, 2)):
        daemon = cluster.daemons[index]
        if daemon.call(client.inq_lockspace, LS, host_id, cluster.devices[index], 0) is not True:
            cluster.add(index, host_id)
    return cluster


def test_two_daemons_join_and_see_each_other_live(cluster: Cluster) -> None:
    started = time.monotonic()
    cluster.add(0, 1)
    joined_a = time.monotonic() - started
    cluster.add(1, 2)
    # A free slot takes the short delay, 2 x io_timeout, plus the I/O.
    assert 2 * IO_TIMEOUT <= joined_a < 2 * IO_TIMEOUT + 2
    a, b = cluster.daemons[0], cluster.daemons[1]
    assert a.call(client.inq_lockspace, LS, 1, cluster.devices[0], 0) is True
    poll(lambda: a.hosts(LS).get(2, {}).get("state") == "live", 15, what="a sees b live")
    poll(lambda: b.hosts(LS).get(1, {}).get("state") == "live", 15, what="b sees a live")
    view = b.hosts(LS)[1]
    assert view["host_name"] == "host-a" and view["generation"] == 1
    assert view["flags"] == client.HOST_LIVE
    lockspaces = a.call(client.get_lockspaces)
    assert [(ls["lockspace"], ls["host_id"], ls["state"]) for ls in lockspaces] == [
        (LS, 1, "held")]
    history = a.call(client.renewal_history, LS)
    assert history and all(r["error"] is None and r["read_us"] > 0 for r in history)


def test_duplicate_host_id_is_refused(joined: Cluster) -> None:
    cluster = joined
    c = cluster.daemons[2]
    with pytest.raises(HostIdBusy, match="held by live host 'host-a'"):
        cluster.add(2, 1)
    with pytest.raises(LockspaceExists):
        cluster.add(0, 1)
    assert c.call(client.inq_lockspace, LS, 1, cluster.devices[2], 0) is False
    # The refused host wrote nothing: host 1's record is still host-a's.
    record = next(r for r in dump(cluster.devices[0], 0, 1 << 20) if r.host_id == 1)
    assert record.host_name == "host-a" and record.timestamp != 0


def test_malformed_requests_get_errors_and_never_crash(joined: Cluster) -> None:
    """On a daemon that has joined a lockspace: requests with bad names, counts and ids are
    refused with sanlock's codes, and the lockspace is untouched."""
    cluster = joined
    a = cluster.daemons[0]
    bad = [
        (Cmd.GET_HOSTS, sp.LockspaceStruct("x" * 48, 0, 0, sp.Disk("", 0)).encode(), 0,
         -sp.ENOENT),
        (Cmd.GET_HOSTS, sp.LockspaceStruct(LS, 99999, 0, sp.Disk("", 0)).encode(), 0,
         -sp.EINVAL),
        (Cmd.ADD_LOCKSPACE, sp.LockspaceStruct("l", 0, 0, sp.Disk("/p", 0)).encode(), 0,
         -sp.EINVAL),
        (Cmd.ADD_LOCKSPACE, sp.LockspaceStruct(LS, 1, 0, sp.Disk("/p", 0)).encode(), 0,
         -sp.EINVAL),
        (Cmd.ACQUIRE, bytes(sp.OPTIONS_B), 9, -sp.E2BIG),
        (Cmd.INQUIRE, b"", 0, -sp.EBUSY),
        (Cmd.READ_RESOURCE, sp.Resource(LS, "r", num_disks=0).encode(), 0, -sp.ERANGE),
    ]
    for cmd, payload, data, expected in bad:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(Path(a.run_dir) / sp.SOCKET_NAME))
            data2 = sp.SELF if cmd in (Cmd.ACQUIRE, Cmd.INQUIRE) else 0
            request = Header(sp.SM_MAGIC, sp.SM_PROTO, cmd, 0, 32 + len(payload), 0, data,
                             data2)
            sock.sendall(request.encode() + payload)
            reply = Header.decode(sock.recv(32, socket.MSG_WAITALL))
            assert (cmd, reply.data) == (cmd, expected)
            if reply.length > 32:
                sock.recv(reply.length - 32, socket.MSG_WAITALL)
    assert a.proc.poll() is None
    assert a.call(client.inq_lockspace, LS, 1, cluster.devices[0], 0) is True
    with pytest.raises(UsageError, match="48 bytes"):
        a.call(client.get_hosts, "x" * 49)


def test_rem_lockspace_releases_the_sector(joined: Cluster) -> None:
    cluster = joined
    b = cluster.daemons[1]
    b.call(client.rem_lockspace, LS, 2, cluster.devices[1], 0)
    record = next(r for r in dump(cluster.devices[1], 0, 1 << 20) if r.host_id == 2)
    assert record.timestamp == 0 and record.host_name == "host-b"
    with pytest.raises(LockspaceNotJoined):
        b.call(client.get_hosts, LS)
    poll(lambda: cluster.daemons[0].hosts(LS).get(2, {}).get("state") == "free", 10,
         what="a sees host 2 free")
    cluster.add(1, 2)  # the same host name re-joins at once
    assert b.call(client.inq_lockspace, LS, 2, cluster.devices[1], 0) is True


def test_killed_host_is_dead_no_sooner_than_host_dead(joined: Cluster) -> None:
    cluster = joined
    a, b = cluster.daemons[0], cluster.daemons[1]
    poll(lambda: b.hosts(LS).get(1, {}).get("state") == "live", 15, what="b sees a live")
    a.kill()
    last_stamp = next(r for r in dump(cluster.devices[1], 0, 1 << 20) if r.host_id == 1).timestamp
    seen: dict[str, float] = {}

    def dead() -> bool:
        state = b.hosts(LS)[1]["state"]
        seen.setdefault(str(state), time.monotonic())
        return bool(state == "dead")

    poll(dead, T.host_dead_s + 10, interval_s=0.05, what="b judges a dead")
    # Every process here shares CLOCK_MONOTONIC, so a's on-disk timestamp is on our clock.
    assert seen["dead"] - last_stamp >= T.host_dead_s
    assert seen["dead"] - last_stamp < T.host_dead_s + 1 + T.id_renewal_s + 1.5
    assert "fail" in seen and seen["fail"] - last_stamp >= T.id_renewal_fail_s
