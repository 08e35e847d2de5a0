"""Resource leases through real daemons on loop devices (one per host over one file).

Shared daemons, tests in order: exclusion between hosts, shared leases, fencing with lver,
release when the holder exits, and finally host 1's storage failing: its holder is killed before
host_dead, and host 2 takes the lease no earlier than host_dead, with a larger lver.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from leasestore import client
from leasestore.daemon import sanlock_proto as sp
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.direct import dump, format_lockspace, format_resource, read_paxos_leader
from leasestore.errors import AcquireIdLive, AcquireLver, SharedHolders
from leasestore.testing.procs import DaemonProc, LoopDevices, make_file, poll
from leasestore.testing.wirefuzz import hostile_messages
from leasestore.timeouts import Timeouts
from tests.prereq import require_blockdev

pytestmark = pytest.mark.slow
LS = "res-ls"
T = Timeouts(1, 5)
MiB = 1 << 20
VM1, VM2, VM3, VM4 = MiB, 2 * MiB, 3 * MiB, 4 * MiB


@dataclass
class Hosts:
    devices: list[str]
    daemons: list[DaemonProc]
    holders: list[subprocess.Popen[bytes]]

    def hold(self, index: int, resource: str, offset: int, shared: bool = False) -> int:
        """Start a process on host `index` that holds the lease until killed; returns its pid."""
        spec = f"{LS}:{resource}:{self.devices[index]}:{offset}" + (":SH" if shared else "")
        proc = self.daemons[index].hold(spec, 20)
        self.holders.append(proc)
        return proc.pid


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    require_blockdev()
    base = tmp_path_factory.mktemp("resources")
    loops = LoopDevices()
    state = Hosts([], [], [])
    try:
        backing = make_file(base / "shared.img", 5 * MiB)
        state.devices = [loops.attach(backing), loops.attach(backing)]
        format_lockspace(state.devices[0], LS, 0, io_timeout_s=1)
        for name, offset in (("vm1", VM1), ("vm2", VM2), ("vm3", VM3), ("vm4", VM4)):
            format_resource(state.devices[0], LS, name, offset)
        state.daemons = [DaemonProc(base, f"rhost-{c}", 1, 5) for c in "ab"]
        for index, daemon in enumerate(state.daemons):
            daemon.call(client.add_lockspace, LS, index + 1, state.devices[index], 0)
        yield state
    finally:
        for proc in state.holders:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for daemon in state.daemons:
            daemon.stop()
        loops.detach_all()


def test_a_holder_on_host_1_blocks_host_2(hosts: Hosts) -> None:
    pid = hosts.hold(0, "vm1", VM1)
    held = hosts.daemons[0].call(client.inquire, pid=pid)
    assert [h["state"] for h in held] == [f"{LS}:vm1:{hosts.devices[0]}:{VM1}:1"]
    with pytest.raises(AcquireIdLive, match="held by live host 1"):
        hosts.daemons[1].call(client.acquire, LS, "vm1", [(hosts.devices[1], VM1)])
    assert read_paxos_leader(hosts.devices[1], VM1).owner_id == 1


def test_shared_beside_shared_but_not_exclusive(hosts: Hosts) -> None:
    hosts.hold(0, "vm2", VM2, shared=True)
    with pytest.raises(SharedHolders, match="held shared by live host 1"):
        hosts.daemons[1].call(client.acquire, LS, "vm2", [(hosts.devices[1], VM2)])
    assert read_paxos_leader(hosts.devices[1], VM2).timestamp == 0  # the leader was given back
    hosts.hold(1, "vm2", VM2, shared=True)
    owners = [r.host_id for r in dump(hosts.devices[0], VM2, MiB)
              if r.kind == "dblock" and r.extra["mode_flags"] == 1]
    assert owners == [1, 2]


def test_fencing_with_lver_and_release_when_the_holder_exits(hosts: Hosts) -> None:
    b = hosts.daemons[1]
    lver = read_paxos_leader(hosts.devices[1], VM3).lver
    with pytest.raises(AcquireLver):
        b.call(client.acquire, LS, "vm3", [(hosts.devices[1], VM3)], version=lver + 5)
    pid = hosts.hold(1, "vm3", VM3)
    assert read_paxos_leader(hosts.devices[1], VM3).lver == lver + 1
    os.kill(pid, 9)
    poll(lambda: read_paxos_leader(hosts.devices[1], VM3).timestamp == 0, 10,
         what="vm3 released after its holder died")


def test_a_forced_request_gets_the_holder_killed(hosts: Hosts) -> None:
    pid = hosts.hold(0, "vm3", VM3)
    holder = next(p for p in hosts.holders if p.pid == pid)
    lver = read_paxos_leader(hosts.devices[1], VM3).lver
    asked = time.monotonic()
    owner = hosts.daemons[1].call(client.request, LS, "vm3", [(hosts.devices[1], VM3)],
                                  client.REQ_FORCE)
    assert owner == 1
    record = next(r for r in dump(hosts.devices[1], VM3, MiB) if r.kind == "request")
    assert (record.lver, record.extra["force_mode"]) == (lver + 1, 1)
    # Our renewal sets host 1's bit; host 1's next renewal sees it and kills the holder.
    poll(lambda: holder.poll() is not None, 4 * T.id_renewal_s + 3, interval_s=0.05,
         what="holder killed by the request")
    assert time.monotonic() - asked < 4 * T.id_renewal_s + 3
    poll(lambda: read_paxos_leader(hosts.devices[1], VM3).timestamp == 0, 10,
         what="vm3 released")


HOLDER_WITH_KILLPATH = r"""
import sys, time
from leasestore import client
fd = client.register()
client.killpath(sys.argv[1], [sys.argv[2]], slkfd=fd)
client.acquire(sys.argv[3], "vm3", [(sys.argv[4], int(sys.argv[5]))], slkfd=fd)
print("held", flush=True)
time.sleep(600)
"""


def test_a_graceful_request_runs_the_holders_killpath(hosts: Hosts, tmp_path: Path) -> None:
    marker = tmp_path / "killpath-ran"
    script = tmp_path / "killpath.sh"
    script.write_text("#!/bin/sh\necho \"$1 $2\" > \"$1\"\n")
    script.chmod(0o755)
    env = {**os.environ, "LEASESTORE_RUN_DIR": hosts.daemons[0].run_dir}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_WITH_KILLPATH, str(script), str(marker), LS,
         hosts.devices[0], str(VM3)], env=env, stdout=subprocess.PIPE, text=True)
    hosts.holders.append(holder)  # type: ignore[arg-type]
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    hosts.daemons[1].call(client.request, LS, "vm3", [(hosts.devices[1], VM3)],
                          client.REQ_GRACEFUL)
    poll(marker.exists, 4 * T.id_renewal_s + 3, what="killpath run")
    assert marker.read_text().split() == [str(marker), str(holder.pid)]
    assert holder.poll() is None  # graceful: the killpath decides, nobody was signalled
    holder.kill()
    holder.wait()
    poll(lambda: read_paxos_leader(hosts.devices[1], VM3).timestamp == 0, 10,
         what="vm3 released")


def test_failed_storage_kills_the_holder_before_host_dead_then_host_2_takes_over(
    hosts: Hosts,
) -> None:
    holder = next((p for p in hosts.holders if p.poll() is None and "vm1" in " ".join(
        map(str, p.args))), None)  # type: ignore[arg-type]
    if holder is None:  # this test runs alone: hold vm1 on host 1 first
        pid = hosts.hold(0, "vm1", VM1)
        holder = next(p for p in hosts.holders if p.pid == pid)
    lver_before = read_paxos_leader(hosts.devices[1], VM1).lver
    subprocess.run(["blockdev", "--setro", hosts.devices[0]], check=True)
    poll(lambda: holder.poll() is not None, T.host_dead_s + 5, interval_s=0.05,
         what="holder killed")
    killed_at = time.monotonic()
    last_renewal = next(r.timestamp for r in dump(hosts.devices[1], 0, MiB) if r.host_id == 1)
    # Every process here shares CLOCK_MONOTONIC: the on-disk timestamp is on our clock.
    assert T.id_renewal_fail_s - 1 <= killed_at - last_renewal < T.host_dead_s

    def take() -> bool:
        try:
            hosts.daemons[1].call(client.acquire, LS, "vm1", [(hosts.devices[1], VM1)])
        except AcquireIdLive:
            return False
        return True

    poll(take, T.host_dead_s + 20, interval_s=0.2, what="host 2 takes vm1")
    taken_at = time.monotonic()
    assert taken_at - last_renewal >= T.host_dead_s
    leader = read_paxos_leader(hosts.devices[1], VM1)
    assert leader.owner_id == 2 and leader.lver > lver_before
    # This test process holds vm1 now: give it back (a daemon stopping kills lease holders).
    hosts.daemons[1].call(client.release, LS, "vm1", [(hosts.devices[1], VM1)])
    assert read_paxos_leader(hosts.devices[1], VM1).timestamp == 0
    subprocess.run(["blockdev", "--setrw", hosts.devices[0]], check=True)


# --- hostile clients ------------------------------------------------------------------------


def _exchange(sock: socket.socket, raw: bytes) -> tuple[Header, bytes]:
    """Send one message, read its one reply (header and the payload its length counts)."""
    sock.sendall(raw)
    header = Header.decode(_recv(sock, sp.HEADER_B))
    return header, _recv(sock, header.length - sp.HEADER_B)


def _recv(sock: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        received += chunk
    return bytes(received)


def _request(cmd: Cmd, payload: bytes = b"", *, data: int = 0, data2: int = sp.SELF) -> bytes:
    return Header(sp.SM_MAGIC, sp.SM_PROTO, cmd, 0, sp.HEADER_B + len(payload), 0, data,
                  data2).encode() + payload


NOT_ON_A_REGISTERED_CONNECTION = frozenset({
    Cmd.RELEASE, Cmd.RESTRICT,  # they may rightly end or silence the holder's leases
    Cmd.REGISTER,  # no reply
    Cmd.STATUS, Cmd.HOST_STATUS, Cmd.RENEWAL, Cmd.LOG_DUMP,  # end-of-stream replies
})


def _in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` in a forked child (its own pid, so its own registration); return its dict."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        outcome: dict[str, Any] = {}
        try:
            outcome = work()
        except BaseException as exc:
            outcome = {"crashed": repr(exc)}
        finally:
            os.write(write_end, json.dumps(outcome).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result: dict[str, Any] = json.loads(pipe.read())
    os.waitpid(child, 0)
    return result


def _identities(lockspaces: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(ls["lockspace"], ls["host_id"], ls["path"], ls["state"], ls["generation"])
            for ls in lockspaces]


def test_the_fuzz_corpus_never_crashes_the_daemon_nor_leaks_a_lease(hosts: Hosts) -> None:
    """(On host 2: host 1's lockspace was failed by an earlier test.) A registered connection
    holds vm4 and sends every framed hostile message, each answered with one reply; every other
    hostile message arrives on a connection of its own meanwhile. The lease stays with its
    holder, nothing fails inside the daemon, and closing the connection releases the lease."""
    daemon, device = hosts.daemons[1], hosts.devices[1]
    lockspaces_before = _identities(daemon.call(client.get_lockspaces))
    messages = list(hostile_messages(seed=2))
    on_registered = [m for m in messages
                     if m.framed and m.cmd not in NOT_ON_A_REGISTERED_CONNECTION]
    alone = [m for m in messages if m not in on_registered]

    def session() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(os.path.join(daemon.run_dir, sp.SOCKET_NAME))
            sock.sendall(_request(Cmd.REGISTER, data2=0))  # no reply, as in sanlock
            vm4 = (sp.Resource(LS, "vm4", num_disks=1).encode()
                   + sp.Disk(device, VM4).encode() + bytes(sp.OPTIONS_B))
            held, _ = _exchange(sock, _request(Cmd.ACQUIRE, vm4, data=1))
            replies = []
            for message in on_registered:
                reply, _ = _exchange(sock, message.raw)
                replies.append((message.what, reply.cmd == message.cmd, reply.data))
            _inquired, state = _exchange(sock, _request(Cmd.INQUIRE))
            owner = read_paxos_leader(device, VM4).owner_id
        return {"held": held.data, "replies": replies, "inquire": state.decode(),
                "owner": owner}

    for message in alone[: len(alone) // 2]:
        _one_shot(daemon.run_dir, message.raw)
    out = _in_child(session)
    for message in alone[len(alone) // 2:]:
        _one_shot(daemon.run_dir, message.raw)
    assert "crashed" not in out, out.get("crashed")
    assert out["held"] == 0
    assert len(out["replies"]) == len(on_registered) > 500
    assert all(echoed for _what, echoed, _code in out["replies"])
    refused = [code for _what, _echoed, code in out["replies"] if code < 0]
    assert len(refused) > 0.8 * len(on_registered)
    assert out["inquire"].startswith(f"{LS}:vm4:{device}:{VM4}:"), out["inquire"]
    assert out["owner"] == 2
    assert daemon.proc.poll() is None
    assert "internal error" not in daemon.log()
    poll(lambda: read_paxos_leader(device, VM4).timestamp == 0, 10,
         what="vm4 released when its connection closed")
    assert _identities(daemon.call(client.get_lockspaces)) == lockspaces_before
    assert not any(h["resource"] == "vm4" for h in daemon.call(client.status)["leases"])


def _one_shot(run_dir: str, raw: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(os.path.join(run_dir, sp.SOCKET_NAME))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)  # the daemon may answer and hang up before reading it all
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass


def _as_nobody(run_dir: str, holder_pid: int, device: str) -> dict[str, Any]:
    """As uid 65534 (in a child): try to release another process' lease, to release one it does
    not hold, and to remove the lockspace; returns each attempt's outcome."""

    def attempts() -> dict[str, Any]:
        os.chdir(run_dir)  # the pytest tmp tree is root-only: reach the socket from inside
        os.setgid(65534)
        os.setuid(65534)
        os.environ[client.RUN_DIR_ENV] = "."
        tries: dict[str, Callable[[], object]] = {
            "release_for_pid": lambda: client.release(LS, "vm4", [(device, VM4)],
                                                      pid=holder_pid),
            "release_own": lambda: client.release(LS, "vm4", [(device, VM4)]),
            "rem_lockspace": lambda: client.rem_lockspace(LS, 2, device, 0),
        }
        outcome: dict[str, Any] = {}
        for name, attempt in tries.items():
            try:
                attempt()
                outcome[name] = "succeeded"
            except Exception as exc:
                outcome[name] = type(exc).__name__
                outcome[name + "_message"] = str(exc)
        return outcome

    return _in_child(attempts)


def test_another_user_can_release_nothing_but_its_own(hosts: Hosts) -> None:
    daemon, device = hosts.daemons[1], hosts.devices[1]
    holder = hosts.hold(1, "vm4", VM4)
    socket_path = os.path.join(daemon.run_dir, sp.SOCKET_NAME)
    os.chmod(socket_path, 0o666)  # let uid 65534 reach the daemon at all
    try:
        outcome = _as_nobody(daemon.run_dir, holder, device)
    finally:
        os.chmod(socket_path, 0o660)
    tried = {k: v for k, v in outcome.items() if not k.endswith("_message")}
    assert tried == {"release_for_pid": "PermissionDenied", "release_own": "LeaseNotHeld",
                     "rem_lockspace": "PermissionDenied"}, outcome
    assert [h["resource"] for h in daemon.call(client.inquire, pid=holder)] == [b"vm4"]
    assert read_paxos_leader(device, VM4).owner_id == 2
    os.kill(holder, 9)
    poll(lambda: read_paxos_leader(device, VM4).timestamp == 0, 10, what="vm4 released")


def test_a_release_that_fails_is_retried_until_the_lease_is_free(hosts: Hosts) -> None:
    """The lease's device turns read-only while a holder exits: the release fails, and the
    daemon retries it until the device is writable again, instead of leaving the lease owned by
    a live host (where no other host could ever take it)."""
    daemon = hosts.daemons[1]
    loops = LoopDevices()
    backing = subprocess.run(["losetup", "-n", "-O", "BACK-FILE", hosts.devices[1]],
                             capture_output=True, text=True, check=True).stdout.strip()
    try:
        lease_dev = loops.attach(backing)  # the lockspace stays on devices[1], still writable
        holder = subprocess.Popen(
            [sys.executable, "-m", "leasestore.cli.main", "client", "--run-dir",
             daemon.run_dir, "command", "-r", f"{LS}:vm4:{lease_dev}:{VM4}", "-c", "sleep",
             "600"])
        hosts.holders.append(holder)
        poll(lambda: read_paxos_leader(lease_dev, VM4).timestamp != 0, 20, what="vm4 held")
        subprocess.run(["blockdev", "--setro", lease_dev], check=True)
        holder.kill()
        holder.wait()
        poll(lambda: not any(h["pid"] == holder.pid
                             for h in daemon.call(client.status)["leases"]), 10,
             what="the holder's lease dropped")
        assert read_paxos_leader(lease_dev, VM4).timestamp != 0  # nothing could be written
        subprocess.run(["blockdev", "--setrw", lease_dev], check=True)
        poll(lambda: read_paxos_leader(lease_dev, VM4).timestamp == 0, 3 * T.io_timeout_s + 5,
             what="the retried release")
        assert "release done on retry" in daemon.log()
    finally:
        loops.detach_all()
