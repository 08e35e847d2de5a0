"""Real daemons on loop devices (one per host over one backing file), io_timeout 1 s.

The daemons are shared by the tests of this module, which run in order: join, see each other,
refuse a duplicate, survive hostile clients, leave, and finally a SIGKILLed host is judged dead.
Each test also passes alone: the `joined` fixture joins whatever the tests before did not.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from leasestore import client
from leasestore.cli.main import main
from leasestore.daemon import sanlock_proto as sp
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.daemonless import resource_owners
from leasestore.direct import dump, format_lockspace, format_resource
from leasestore.errors import HostIdBusy, LockspaceExists, LockspaceNotJoined, UsageError
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file, poll
from leasestore.timeouts import Timeouts
from tests.prereq import require_blockdev

pytestmark = pytest.mark.slow
LS = "real-ls"
IO_TIMEOUT = 1
WATCHDOG = 5
T = Timeouts(IO_TIMEOUT, WATCHDOG)


@dataclass
class Cluster:
    devices: list[str]
    daemons: list[DaemonProc]
    metrics_url: str
    """Daemon a serves its Prometheus metrics here."""

    def add(self, index: int, host_id: int) -> None:
        self.daemons[index].call(client.add_lockspace, LS, host_id, self.devices[index], 0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("real")
    loops = LoopDevices()
    require_blockdev()
    backing = make_file(base / "shared.img", 8 << 20)
    daemons: list[DaemonProc] = []
    try:
        devices = [loops.attach(backing) for _ in range(3)]
        format_lockspace(devices[0], LS, 0, io_timeout_s=IO_TIMEOUT)
        port = _free_port()
        daemons = [DaemonProc(base, f"host-{c}", IO_TIMEOUT, WATCHDOG,
                              extra_args=["--metrics-address", f"127.0.0.1:{port}"]
                              if c == "a" else ()) for c in "abc"]
        yield Cluster(devices, daemons, f"http://127.0.0.1:{port}/metrics")
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


def test_bench_times_a_live_lockspace_read_only_beside_the_daemons_renewals(
        joined: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    a = joined.daemons[0]
    poll(lambda: len(a.call(client.renewal_history, LS)) >= 2, 15, what="two renewals")
    before = dump(joined.devices[0])
    argv = ["bench", joined.devices[0], "--read-only", "--count", "10", "--lockspace", LS,
            "--run-dir", a.run_dir, "--json"]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["read_only"] is True and "write" not in document
    assert "lockspace 'real-ls'" in document["area_holds"]
    assert document["daemon"]["write"]["count"] >= 2
    assert document["daemon"]["read"]["p50_ms"] > 0
    after = dump(joined.devices[0])
    assert [(r.offset, r.kind, r.owner_id) for r in after] == \
        [(r.offset, r.kind, r.owner_id) for r in before]


def _scrape(url: str) -> dict[str, float]:
    """Each sample line of the metrics page as {name{labels}: value}."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_count_renewals_hosts_and_lockspace_states(joined: Cluster) -> None:
    poll(lambda: joined.daemons[0].hosts(LS).get(2, {}).get("state") == "live", 15,
         what="a sees b live")
    first = _scrape(joined.metrics_url)
    renewals = f'leasestore_renewal_seconds_count{{io="total",lockspace="{LS}"}}'
    assert first[renewals] >= 1
    assert first[f'leasestore_lockspaces{{lockspace="{LS}",state="held"}}'] == 1
    assert first[f'leasestore_hosts{{lockspace="{LS}",state="live"}}'] >= 2
    assert first["leasestore_watchdog_armed"] == 0
    poll(lambda: _scrape(joined.metrics_url)[renewals] > first[renewals], 10,
         what="another renewal counted")


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


def test_who_holds_names_the_holder_as_a_daemon_and_the_disk_see_it(
        joined: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = joined.daemons[0], joined.daemons[1]
    device, at = joined.devices[0], 1 << 20
    format_resource(device, LS, "vm-who", at, force=True)
    spec = f"{LS}:vm-who:{device}:{at}"
    holder = subprocess.Popen([sys.executable, "-m", "leasestore.cli.main", "client",
                               "--run-dir", a.run_dir, "command", "-r", spec, "-c", "sleep",
                               "60"])
    try:
        poll(lambda: bool(resource_owners([(device, at)])), 15, what="the lease is held")
        poll(lambda: b.hosts(LS).get(1, {}).get("state") == "live", 15, what="b sees a live")
        for source, argv in (("daemon", ["--run-dir", b.run_dir]), ("disk", ["--no-daemon"])):
            assert main(["who-holds", "-r", spec, *argv, "--json"]) == 0
            lease, = json.loads(capsys.readouterr().out)
            owner, = lease["holders"]
            assert (owner["host_id"], owner["shared"], owner["gone"]) == (1, False, None)
            assert owner["host"]["host_name"] == "host-a" and owner["host"]["source"] == source
            assert owner["host"]["state"] == "live", owner
            renewed = owner["host"]["renewed_ago_s"]
            assert renewed is not None and 0 <= renewed <= T.id_renewal_s + 2, owner
    finally:
        holder.kill()
        holder.wait()


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


def test_the_daemon_warns_at_start_of_what_its_configuration_leaves_open(
        tmp_path: Path) -> None:
    """--watchdog none, and a fire timeout above sanlock's 60 s (sanlock peers would judge this
    host dead before its watchdog fires), are each logged as a warning when the daemon starts."""
    daemon = DaemonProc(tmp_path, "warned", io_timeout_s=1, watchdog_fire_timeout_s=90)
    try:
        poll(lambda: "watchdog none: nothing resets this host" in daemon.log()
             and "watchdog_fire_timeout 90 s is above sanlock's 60 s" in daemon.log(), 10,
             what="both warnings")
    finally:
        daemon.stop()
