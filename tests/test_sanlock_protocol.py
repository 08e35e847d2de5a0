"""The daemon's registrations and lease commands as sanlock's protocol defines them, on a
daemon in this process over a lease file: leases belong to the registration they were acquired
through, a process may register more than once, one call's leases come all or none, and
WRITE_CLEAR leaves a lease no read accepts."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import leasestore.daemon.sanlock_proto as sp
from leasestore import client, daemonless, direct
from leasestore.clock import lease_now_s
from leasestore.daemon import recent_log
from leasestore.daemon.config import DaemonConfig
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.daemon.server import Daemon, Peer, Session
from leasestore.errors import (
    AcquireLver,
    AcquireOwnedRetry,
    BadMagic,
    LeaseAlreadyInMode,
    LeaseNotHeld,
    LeaseOrphaned,
    LockspaceBusy,
    LockspaceNotJoined,
    LvbTooLarge,
    LvbUnavailable,
    UsageError,
    WrongResource,
)
from leasestore.ondisk.bitmap import host_bit_is_set
from leasestore.ondisk.leader import Leader, decode_leader
from leasestore.testing.procs import make_file, poll

LS = "proto-ls"
MiB = 1 << 20


@dataclass
class Serving:
    daemon: Daemon
    path: str


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    base = tmp_path_factory.mktemp("proto")
    path = make_file(base / "leases.img", 24 * MiB)
    direct.format_lockspace(path, LS, 0, io_timeout_s=1)
    for index in range(1, 5):
        direct.format_resource(path, LS, f"r{index}", index * MiB)
    daemon = Daemon(DaemonConfig(run_dir=str(base / "run"), host_name="proto-host",
                                 io_timeout=1, watchdog_fire_timeout=5))
    daemon.open()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        with client.using(daemon.config.run_dir):
            client.add_lockspace(LS, 1, path, 0)
        yield Serving(daemon, path)
    finally:
        daemon.shutdown()
        thread.join(30)


def _held(serving: Serving) -> set[str]:
    return {held.key[1] for held in list(serving.daemon.resources.held.values())}


def _disk(serving: Serving, index: int) -> list[tuple[str | bytes, int]]:
    return [(serving.path, index * MiB)]


def test_a_registered_process_keeps_its_leases_when_another_connection_closes(
        serving: Serving) -> None:
    """Regression: closing any connection of a process (a query, a second registration)
    released every lease the process held."""
    with client.using(serving.daemon.config.run_dir):
        first = client.register()
        client.acquire(LS, "r1", _disk(serving, 1), slkfd=first)
        client.version()  # a one-shot connection of the same pid, opened and closed
        with socket.socket(socket.AF_UNIX) as bare:
            bare.connect(serving.daemon.socket_path)
        second = client.register()
        client.acquire(LS, "r2", _disk(serving, 2), slkfd=second)
        assert [h["resource"] for h in client.inquire(slkfd=first)] == [b"r1"]
        assert [h["resource"] for h in client.inquire(slkfd=second)] == [b"r2"]
        with pytest.raises(LeaseNotHeld):  # each registration releases only its own leases
            client.release(LS, "r1", _disk(serving, 1), slkfd=second)
        client._registrations.pop(second).close()
        poll(lambda: _held(serving) == {"r1"}, 10, what="r2 released with its registration")
        assert direct.read_paxos_leader(serving.path, 2 * MiB).timestamp == 0
        assert direct.read_paxos_leader(serving.path, MiB).timestamp != 0
        client._registrations.pop(first).close()
        poll(lambda: not _held(serving), 10, what="r1 released with its registration")


def test_one_acquire_of_several_leases_takes_all_or_none(serving: Serving) -> None:
    """r4 is held elsewhere (another registration), so ACQUIRE [r3, r4] fails with r4's error
    and leaves r3 free."""
    with client.using(serving.daemon.config.run_dir):
        holder = client.register()
        client.acquire(LS, "r4", _disk(serving, 4), slkfd=holder)
        taker = client.register()
        conn = client._registrations[taker]
        payload = b"".join(
            sp.Resource(LS, name, num_disks=1).encode() + sp.Disk(serving.path, i * MiB).encode()
            for name, i in (("r3", 3), ("r4", 4))) + bytes(sp.OPTIONS_B)
        code, _document = conn.exchange(Cmd.ACQUIRE, payload, data=2)
        assert code == -sp.EEXIST
        assert _held(serving) == {"r4"}
        assert direct.read_paxos_leader(serving.path, 3 * MiB).timestamp == 0
        for fd in (holder, taker):
            client._registrations.pop(fd).close()
        poll(lambda: not _held(serving), 10, what="r4 released")


def test_write_clear_leaves_a_lease_no_read_accepts(serving: Serving,
                                                    tmp_path: Path) -> None:
    path = make_file(tmp_path / "cleared.img", 2 * MiB)
    resource = sp.Resource(LS, "gone", num_disks=1, flags=0x110).encode()
    request = Header(sp.SM_MAGIC, 1, Cmd.WRITE_RESOURCE, sp.WRITE_CLEAR,
                     32 + sp.RESOURCE_B + sp.DISK_B, 0, 0, 0).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(serving.daemon.socket_path)
        sock.sendall(request + resource + sp.Disk(path, 0).encode())
        assert Header.decode(sock.recv(32, socket.MSG_WAITALL)).data == 0
    with pytest.raises(BadMagic):
        direct.read_paxos_leader(path, 0)
    assert os.path.getsize(path) == 2 * MiB


@pytest.mark.parametrize(("restrict", "graceful", "signal_seen"), [
    (0, True, -signal.SIGTERM),
    (0, False, -signal.SIGKILL),
    (sp.RESTRICT_SIGTERM, True, -signal.SIGKILL),  # "do not SIGTERM me": SIGKILL instead
    (sp.RESTRICT_SIGKILL, False, -signal.SIGTERM),  # "do not SIGKILL me": SIGTERM instead
])
def test_a_holders_restrict_flags_choose_the_signal_that_stops_it(
        serving: Serving, restrict: int, graceful: bool, signal_seen: int) -> None:
    holder = subprocess.Popen(["/bin/sleep", "60"])
    try:
        session = Session(Peer(holder.pid, 0, 0), registered=True, restrict=restrict)
        serving.daemon._stop_holder(session, graceful=graceful)
        assert holder.wait(10) == signal_seen
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("with_pid", [False, True])
def test_a_killpath_gets_the_holders_pid_only_if_it_asked(serving: Serving, tmp_path: Path,
                                                          with_pid: bool) -> None:
    out = tmp_path / "args"
    session = Session(Peer(424242, 0, 0), registered=True,
                      killpath=["/bin/sh", "-c", f'echo "$@" > {out}', "helper", "poweroff"],
                      killpath_pid=with_pid)
    serving.daemon._stop_holder(session, graceful=True)
    poll(lambda: out.exists() and out.read_text().endswith("\n"), 10, what="killpath ran")
    assert out.read_text().split() == (["poweroff", "424242"] if with_pid else ["poweroff"])


VM = r"""
import sys
from leasestore import client
client.register()
print("registered", flush=True)
sys.stdin.read()
"""


def test_a_lease_comes_back_only_at_the_version_it_was_released(serving: Serving) -> None:
    """As libvirt pauses and resumes a VM: a manager releases r1 for the VM's process by pid and
    acquires it again (naming no version), which succeeds only if nobody held r1 meanwhile;
    naming the version takes it anyway; the config switch turns the check off; a process that
    acquires for itself is not affected (vdsm's acquire/release in turn)."""
    disk = _disk(serving, 1)
    run_dir = serving.daemon.config.run_dir
    vm = subprocess.Popen([sys.executable, "-c", VM], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, client.RUN_DIR_ENV: run_dir})
    try:
        assert vm.stdout is not None and vm.stdout.readline() == "registered\n"
        with client.using(run_dir):
            first = client.acquire(LS, "r1", disk, pid=vm.pid)["lver"]
            client.release(LS, "r1", disk, pid=vm.pid)  # paused
            assert client.acquire(LS, "r1", disk, pid=vm.pid)["lver"] == first + 1  # resumed
            client.release(LS, "r1", disk, pid=vm.pid)
            other = client.register()  # another host runs the VM meanwhile
            client.acquire(LS, "r1", disk, slkfd=other)
            client.release(LS, "r1", disk, slkfd=other)
            with pytest.raises(AcquireLver, match=f"no longer at version {first + 1}"):
                client.acquire(LS, "r1", disk, pid=vm.pid)
            now = direct.read_paxos_leader(serving.path, MiB).lver
            assert client.acquire(LS, "r1", disk, pid=vm.pid, version=now)["lver"] == now + 1
            client.release(LS, "r1", disk, pid=vm.pid)
            # The holder for itself: released at now + 1, then taken by pid, so moved on.
            assert client.acquire(LS, "r1", disk, slkfd=other)["lver"] == now + 2
            client.release(LS, "r1", disk, slkfd=other)
            checking = serving.daemon.config
            serving.daemon.config = dataclasses.replace(checking,
                                                        reacquire_needs_same_version=False)
            try:
                assert client.acquire(LS, "r1", disk, pid=vm.pid)["lver"] == now + 3
            finally:
                serving.daemon.config = checking
            client._registrations.pop(other).close()
    finally:
        vm.kill()
        vm.wait()
    poll(lambda: not _held(serving), 10, what="r1 released when the VM exited")


def test_a_second_command_for_a_process_while_one_runs_is_refused_busy(
        serving: Serving, monkeypatch: pytest.MonkeyPatch) -> None:
    """sanlock keeps one command active per target process: while an ACQUIRE by pid runs (held
    up here), an INQUIRE, RELEASE or KILLPATH for the same process from another connection gets
    -EBUSY; once it has ended they work again."""
    disk = _disk(serving, 1)
    run_dir = serving.daemon.config.run_dir
    vm = subprocess.Popen([sys.executable, "-c", VM], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, client.RUN_DIR_ENV: run_dir})
    entered, go_on = threading.Event(), threading.Event()
    acquire = serving.daemon._acquire

    def held_up(cmd: Any, session: Session) -> dict[str, object]:
        entered.set()
        assert go_on.wait(30)
        return acquire(cmd, session)

    monkeypatch.setattr(serving.daemon, "_acquire", held_up)
    outcome: list[object] = []
    try:
        assert vm.stdout is not None and vm.stdout.readline() == "registered\n"
        with client.using(run_dir):
            def acquire_by_pid() -> None:
                with client.using(run_dir):
                    try:
                        outcome.append(client.acquire(LS, "r1", disk, pid=vm.pid)["lver"])
                    except Exception as exc:  # reported to the test thread below
                        outcome.append(exc)

            worker = threading.Thread(target=acquire_by_pid)
            worker.start()
            assert entered.wait(30)
            with pytest.raises(LockspaceBusy, match=f"pid {vm.pid} has another command active"):
                client.inquire(pid=vm.pid)
            with pytest.raises(LockspaceBusy, match="another command active"):
                client.release(LS, "r1", disk, pid=vm.pid)
            go_on.set()
            worker.join(30)
            assert not worker.is_alive() and isinstance(outcome[0], int), outcome
            assert [h["resource"] for h in client.inquire(pid=vm.pid)] == [b"r1"]
            client.release(LS, "r1", disk, pid=vm.pid)
    finally:
        go_on.set()
        vm.kill()
        vm.wait()
    poll(lambda: not _held(serving), 10, what="r1 released")


def _sector_on_disk(serving: Serving, offset: int) -> bytes:
    """The 512 bytes at offset of the lease file as stored (no stale cached page)."""
    with open(serving.path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        f.seek(offset)
        return f.read(512)


def _lvb_sector(serving: Serving, offset: int) -> bytes:
    return _sector_on_disk(serving, offset + 2002 * 512)


def test_the_lvb_passes_from_one_exclusive_holder_to_the_next(serving: Serving) -> None:
    """Through leasestore's own client: set works on the holding's copy, the release writes it
    back (before the leader is freed), the next holder with the flag reads it; a shared
    holder's set is not written; without the flag, or not held, set and get are refused."""
    disk = _disk(serving, 3)
    with client.using(serving.daemon.config.run_dir):
        fd = client.register()
        with pytest.raises(LeaseNotHeld):
            client.set_lvb(LS, "r3", disk, b"x")
        client.acquire(LS, "r3", disk, slkfd=fd)
        with pytest.raises(LvbUnavailable, match="not acquired with the LVB flag"):
            client.get_lvb(LS, "r3", disk)
        client.release(LS, "r3", disk, slkfd=fd)
        client.acquire(LS, "r3", disk, slkfd=fd, lvb=True)
        assert client.get_lvb(LS, "r3", disk) == bytes(512)
        with pytest.raises(LvbTooLarge):
            client.set_lvb(LS, "r3", disk, b"y" * 513)
        client.set_lvb(LS, "r3", disk, b"abcdef")
        client.set_lvb(LS, "r3", disk, b"XY")  # over the start, the rest kept
        assert client.get_lvb(LS, "r3", disk, 8) == b"XYcdef\0\0"
        assert _lvb_sector(serving, 3 * MiB) == bytes(512)  # not before the release
        client.release(LS, "r3", disk, slkfd=fd)
        assert _lvb_sector(serving, 3 * MiB)[:8] == b"XYcdef\0\0"
        client.acquire(LS, "r3", disk, slkfd=fd, lvb=True, shared=True)
        assert client.get_lvb(LS, "r3", disk, 6) == b"XYcdef"
        client.set_lvb(LS, "r3", disk, b"shared")
        client.release(LS, "r3", disk, slkfd=fd)
        assert _lvb_sector(serving, 3 * MiB)[:8] == b"XYcdef\0\0"  # a shared set stays local
        client._registrations.pop(fd).close()


def test_an_area_without_an_lvb_sector_refuses_the_lvb_flag(serving: Serving) -> None:
    """A 4K/1M area has 256 sectors: sector 2002 would lie in the next area (sanlock writes
    there). The acquire is refused before any write; without the flag the lease works."""
    at = 5 * MiB
    direct.format_resource(serving.path, LS, "r4k", at, sector_size=4096, align=MiB)
    before = direct.read_paxos_leader(serving.path, at)
    with client.using(serving.daemon.config.run_dir):
        fd = client.register()
        with pytest.raises(LvbUnavailable, match="no lock value block"):
            client.acquire(LS, "r4k", [(serving.path, at)], slkfd=fd, lvb=True)
        assert direct.read_paxos_leader(serving.path, at) == before
        assert not _held(serving)
        client.acquire(LS, "r4k", [(serving.path, at)], slkfd=fd)
        client.release(LS, "r4k", [(serving.path, at)], slkfd=fd)
        client._registrations.pop(fd).close()


def test_a_lockspace_marked_used_is_removed_only_once_marked_unused(serving: Serving) -> None:
    """set_config USED (lvmlockd's way to keep a lockspace): a rem_lockspace meanwhile waits,
    the host lease renewing on, until set_config UNUSED lets it finish. Unknown lockspace:
    -ENOENT; the log the daemon kept is served by LOG_DUMP."""
    at = 8 * MiB
    direct.format_lockspace(serving.path, "used-ls", at, io_timeout_s=1)
    run_dir = serving.daemon.config.run_dir
    with client.using(run_dir):
        client.add_lockspace("used-ls", 1, serving.path, at)
        with pytest.raises(LockspaceNotJoined):
            client.set_config("never-added", used=True)
        client.set_config("used-ls", used=True)
        client.rem_lockspace("used-ls", 1, serving.path, at, wait=False)
        removal_began = lease_now_s()
        lockspace = serving.daemon.lockspaces["used-ls"]
        poll(lambda: any(r.time_s > removal_began + 0.5 for r in lockspace.history()), 10,
             what="a renewal after the removal began")
        assert client.inq_lockspace("used-ls", 1, serving.path, at) is None  # in progress
        assert "used-ls" in serving.daemon.lockspaces
        client.set_config("used-ls", used=False)
        poll(lambda: "used-ls" not in serving.daemon.lockspaces, 20, what="the removal")
        assert client.inq_lockspace("used-ls", 1, serving.path, at) is False
    recent_log.add("a line the daemon logged")
    try:
        with client.using(run_dir):
            assert client.log_dump().endswith("a line the daemon logged\n")
    finally:
        recent_log.clear()


def test_a_set_event_rides_in_our_delta_record_with_the_targets_bit(serving: Serving) -> None:
    """sanlock's layout: the sender's leader carries the target generation, event and data in
    write_id / write_generation / write_timestamp, and its bitmap has the target's bit; a
    different event meanwhile is refused (-EBUSY) unless replacing."""
    with client.using(serving.daemon.config.run_dir):
        client.set_event(LS, 2, 9, 41, data=42)
        with pytest.raises(LockspaceBusy, match="still being sent"):
            client.set_event(LS, 2, 9, 43)
        client.set_event(LS, 2, 9, 44, data=45, flags=client.SETEV_REPLACE_EVENT)

        def ours() -> tuple[Leader, bytes]:
            sector = _sector_on_disk(serving, 0)
            return decode_leader(sector), sector

        poll(lambda: ours()[0].write_generation == 44, 10, what="the event on disk")
        leader, sector = ours()
        assert (leader.write_id, leader.write_generation, leader.write_timestamp) == (9, 44, 45)
        assert host_bit_is_set(sector, 2) and not host_bit_is_set(sector, 3)
        client.set_event(LS, 2, 0, 0, flags=client.SETEV_CLEAR_EVENT)
        poll(lambda: ours()[0].write_generation == 0, 10, what="the event cleared")
        assert not host_bit_is_set(ours()[1], 2)


def _orphans(serving: Serving) -> set[str]:
    return {h.key[1] for h in list(serving.daemon.resources.held.values()) if h.orphan}


def test_a_persistent_lease_outlives_its_holder_as_an_orphan(serving: Serving) -> None:
    """A persistent holding whose registration ends stays owned on disk as an orphan, held
    for no process; a plain acquire of it, or one in the other mode, is refused (-EUCLEAN);
    one with the orphan flag adopts it with no ballot (same lver); an adopter that is not
    persistent releases it on its exit. REL_ORPHAN frees one by name or all of a lockspace
    and says how many; rem_lockspace releases the rest on disk before the host_id goes."""
    at = 9 * MiB
    direct.format_lockspace(serving.path, "orph-ls", at, io_timeout_s=1)
    for index in (1, 2, 3):
        direct.format_resource(serving.path, "orph-ls", f"o{index}", at + index * MiB)

    def disk(index: int) -> list[tuple[str | bytes, int]]:
        return [(serving.path, at + index * MiB)]

    def leader(index: int) -> Leader:
        return direct.read_paxos_leader(serving.path, at + index * MiB)

    def ended(fd: int) -> None:
        client._registrations.pop(fd).close()
        poll(lambda: all(s.closed for s in serving.daemon._registered.get(os.getpid(), [])),
             10, what="the registration ended")

    with client.using(serving.daemon.config.run_dir):
        client.add_lockspace("orph-ls", 1, serving.path, at)
        fd = client.register()
        client.acquire("orph-ls", "o1", disk(1), slkfd=fd, persistent=True)
        client.acquire("orph-ls", "o2", disk(2), slkfd=fd, persistent=True, shared=True)
        client.acquire("orph-ls", "o3", disk(3), slkfd=fd)
        ended(fd)
        poll(lambda: _orphans(serving) == {"o1", "o2"}, 10, what="two orphans")
        assert leader(1).timestamp != 0 and leader(3).timestamp == 0  # o3 was released
        lver = leader(1).lver
        fd = client.register()
        with pytest.raises(LeaseOrphaned, match="orphan flag"):
            client.acquire("orph-ls", "o1", disk(1), slkfd=fd)
        with pytest.raises(LeaseOrphaned, match="in that mode"):
            client.acquire("orph-ls", "o1", disk(1), slkfd=fd, shared=True, orphan=True)
        with pytest.raises(LeaseOrphaned, match="in that mode"):
            client.acquire("orph-ls", "o2", disk(2), slkfd=fd, orphan=True)
        adopted = client.acquire("orph-ls", "o1", disk(1), slkfd=fd, orphan=True)
        assert adopted["lver"] == lver and leader(1).lver == lver and not adopted["orphan"]
        ended(fd)  # not persistent any more: released
        poll(lambda: leader(1).timestamp == 0, 10, what="the adopter's exit released o1")
        assert _orphans(serving) == {"o2"}
        fd = client.register()
        assert client.release_orphans("orph-ls", "o9", slkfd=fd) == 0
        assert client.release_orphans("never-added", slkfd=fd) == 0
        assert client.release_orphans("orph-ls", "o2", slkfd=fd) == 1
        assert not _orphans(serving)
        assert not daemonless.resource_owners([(serving.path, at + 2 * MiB)])
        client.acquire("orph-ls", "o1", disk(1), slkfd=fd, persistent=True)
        client.acquire("orph-ls", "o3", disk(3), slkfd=fd, persistent=True)
        ended(fd)
        poll(lambda: _orphans(serving) == {"o1", "o3"}, 10, what="two orphans again")
        fd = client.register()
        with pytest.raises(LockspaceBusy):  # orphans count as held for REM_UNUSED
            client.rem_lockspace("orph-ls", 1, serving.path, at, unused=True)
        assert client.release_orphans("orph-ls", slkfd=fd) == 2
        client.acquire("orph-ls", "o1", disk(1), slkfd=fd, persistent=True)
        ended(fd)
        poll(lambda: _orphans(serving) == {"o1"}, 10, what="an orphan before the removal")
        client.rem_lockspace("orph-ls", 1, serving.path, at)
        assert leader(1).timestamp == 0 and not _orphans(serving)


def test_a_lockspace_used_by_orphans_is_removed_once_they_are_gone(serving: Serving) -> None:
    """set_config USED_BY_ORPHANS: a removal waits while the lockspace has orphans (its host
    lease renewing on), and ends once REL_ORPHAN has freed them."""
    at = 13 * MiB
    direct.format_lockspace(serving.path, "uo-ls", at, io_timeout_s=1)
    direct.format_resource(serving.path, "uo-ls", "u1", at + MiB)
    with client.using(serving.daemon.config.run_dir):
        client.add_lockspace("uo-ls", 1, serving.path, at)
        client.set_config("uo-ls", used_by_orphans=True)
        fd = client.register()
        client.acquire("uo-ls", "u1", [(serving.path, at + MiB)], slkfd=fd, persistent=True)
        client._registrations.pop(fd).close()
        poll(lambda: _orphans(serving) == {"u1"}, 10, what="the orphan")
        client.rem_lockspace("uo-ls", 1, serving.path, at, wait=False)
        lockspace = serving.daemon.lockspaces["uo-ls"]
        removal_began = lease_now_s()
        poll(lambda: any(r.time_s > removal_began + 0.5 for r in lockspace.history()), 10,
             what="a renewal after the removal began")
        assert "uo-ls" in serving.daemon.lockspaces
        fd = client.register()
        assert client.release_orphans("uo-ls", slkfd=fd) == 1
        client._registrations.pop(fd).close()
        poll(lambda: "uo-ls" not in serving.daemon.lockspaces, 20, what="the removal")


def test_leasestores_own_cli_leaves_lists_and_releases_an_orphan(serving: Serving) -> None:
    """`leasestore client command -P 1` leaves an orphan, `client status` lists it,
    `client release_orphans` frees it."""
    at = 15 * MiB
    direct.format_resource(serving.path, LS, "cli-orphan", at)
    run_dir = serving.daemon.config.run_dir

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "leasestore.cli.main", "client",
                               "--run-dir", run_dir, *args], capture_output=True, text=True,
                              timeout=60, check=False)

    spec = f"{LS}:cli-orphan:{serving.path}:{at}"
    ran = cli("command", "-r", spec, "-P", "1", "-c", "/bin/true")
    assert ran.returncode == 0, ran.stderr
    poll(lambda: "cli-orphan" in _orphans(serving), 10, what="the orphan")
    listed = [line for line in cli("status").stdout.splitlines() if "cli-orphan" in line]
    assert len(listed) == 1 and listed[0].endswith(" ORPHAN"), listed
    freed = cli("release_orphans", "-r", spec)
    assert freed.returncode == 0 and freed.stdout == "released 1 orphan(s)\n", freed.stderr
    assert direct.read_paxos_leader(serving.path, at).timestamp == 0
    usage = cli("release_orphans")
    assert usage.returncode != 0 and usage.stderr.count("\n") == 1


def test_convert_changes_the_mode_on_disk(serving: Serving) -> None:
    """Through leasestore's own client: shared to exclusive takes the next version with our
    mark cleared; back to shared frees the leader with our SHARED mark; the mode held already
    is -EALREADY; a lease not held is refused."""
    disk = _disk(serving, 4)
    with client.using(serving.daemon.config.run_dir):
        fd = client.register()
        with pytest.raises(LeaseNotHeld):
            client.convert(LS, "r4", disk, slkfd=fd)
        shared = client.acquire(LS, "r4", disk, slkfd=fd, shared=True)
        assert [o.shared for o in daemonless.resource_owners([(serving.path, 4 * MiB)])] == [True]
        exclusive = client.convert(LS, "r4", disk, slkfd=fd)
        leader = direct.read_paxos_leader(serving.path, 4 * MiB)
        assert not exclusive["shared"] and exclusive["lver"] == leader.lver == shared["lver"] + 1
        assert leader.timestamp != 0
        assert [o.shared for o in daemonless.resource_owners([(serving.path, 4 * MiB)])] == [False]
        with pytest.raises(LeaseAlreadyInMode):
            client.convert(LS, "r4", disk, slkfd=fd)
        assert client.convert(LS, "r4", disk, shared=True, slkfd=fd)["shared"]
        assert direct.read_paxos_leader(serving.path, 4 * MiB).timestamp == 0
        assert [o.shared for o in daemonless.resource_owners([(serving.path, 4 * MiB)])] == [True]
        client.release(LS, "r4", disk, slkfd=fd)
        assert not daemonless.resource_owners([(serving.path, 4 * MiB)])
        client._registrations.pop(fd).close()


def test_a_release_with_rename_writes_the_free_leader_under_the_new_name(
        serving: Serving) -> None:
    """REL_RENAME: the lease is released and its leader names the new resource, which is
    acquired under that name from then on (the old name is another resource's leader)."""
    at = 6 * MiB
    direct.format_resource(serving.path, LS, "before", at)
    disk: list[tuple[str | bytes, int]] = [(serving.path, at)]
    with client.using(serving.daemon.config.run_dir):
        fd = client.register()
        client.acquire(LS, "before", disk, slkfd=fd)
        client.release(LS, "before", disk, slkfd=fd, rename="after")
        leader = direct.read_paxos_leader(serving.path, at)
        assert leader.resource_name == "after" and leader.timestamp == 0
        with pytest.raises(WrongResource):
            client.acquire(LS, "before", disk, slkfd=fd)
        client.acquire(LS, "after", disk, slkfd=fd, shared=True)
        with pytest.raises(UsageError, match="held shared"):
            client.release(LS, "after", disk, slkfd=fd, rename="again")
        client.release(LS, "after", disk, slkfd=fd)
        with pytest.raises(LeaseNotHeld):
            client.release(LS, "after", disk, slkfd=fd, rename="again")
        assert direct.read_paxos_leader(serving.path, at).resource_name == "after"
        client._registrations.pop(fd).close()


def test_owner_nowait_refuses_instead_of_waiting_for_an_owner(serving: Serving) -> None:
    """A lease owned by host 2, whose host record was written once and never renewed since:
    an acquire would watch it for host_dead; with OWNER_NOWAIT it is refused at once (-247)
    and nothing is written."""
    at = 7 * MiB
    direct.format_resource(serving.path, LS, "owned", at)
    now = int(lease_now_s())
    daemonless.write_leader(serving.path, 0, LS, host_id=2, force=True, changes={
        "owner_id": 2, "owner_generation": 1, "timestamp": now, "io_timeout": 1})
    daemonless.write_leader(serving.path, at, LS, resource="owned", force=True, changes={
        "owner_id": 2, "owner_generation": 1, "timestamp": now, "lver": 1})
    before = direct.read_paxos_leader(serving.path, at)
    disk: list[tuple[str | bytes, int]] = [(serving.path, at)]
    with client.using(serving.daemon.config.run_dir):
        fd = client.register()
        started = lease_now_s()
        with pytest.raises(AcquireOwnedRetry):
            client.acquire(LS, "owned", disk, slkfd=fd, owner_nowait=True)
        assert lease_now_s() - started < 2
        assert direct.read_paxos_leader(serving.path, at) == before
        client._registrations.pop(fd).close()


def _holder(run_dir: str, spec: str, *flags: str) -> subprocess.Popen[str]:
    """`leasestore client command -r SPEC FLAGS -c sleep 60`, once it holds the lease."""
    holder = subprocess.Popen([sys.executable, "-m", "leasestore.cli.main", "client",
                               "--run-dir", run_dir, "command", "-r", spec, *flags, "-c",
                               "/bin/sleep", "60"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    return holder


def test_a_removal_releases_a_persistent_holders_lease(serving: Serving) -> None:
    """rem_lockspace kills the holder of a persistent lease: its lease is released (not kept
    as an orphan, which would keep the removal waiting), and the host_id is given up."""
    at = 16 * MiB
    direct.format_lockspace(serving.path, "rm-ls", at, io_timeout_s=1)
    direct.format_resource(serving.path, "rm-ls", "kept", at + MiB)
    run_dir = serving.daemon.config.run_dir
    with client.using(run_dir):
        client.add_lockspace("rm-ls", 1, serving.path, at)
        holder = _holder(run_dir, f"rm-ls:kept:{serving.path}:{at + MiB}", "-P", "1")
        try:
            poll(lambda: "kept" in _held(serving), 20, what="the persistent holding")
            client.rem_lockspace("rm-ls", 1, serving.path, at)
            assert holder.wait(10) == -9
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(10)
        assert direct.read_paxos_leader(serving.path, at + MiB).timestamp == 0
        assert not _orphans(serving) and "rm-ls" not in serving.daemon.lockspaces


def test_a_shared_lease_is_orphaned_only_by_a_persistent_last_holder(serving: Serving) -> None:
    """Two processes share a lease, the first persistent: once that one has released it, the
    other's exit releases the lease; it is left an orphan by nobody."""
    at = 18 * MiB
    direct.format_resource(serving.path, LS, "shared-two", at)
    run_dir = serving.daemon.config.run_dir
    spec = f"{LS}:shared-two:{serving.path}:{at}:SH"
    first = _holder(run_dir, spec, "-P", "1")
    second: subprocess.Popen[str] | None = None
    try:
        poll(lambda: "shared-two" in _held(serving), 20, what="the first holder")
        second = _holder(run_dir, spec)
        key = (LS, "shared-two", serving.path, at)
        poll(lambda: len(serving.daemon.resources.held[key].pids) == 2, 20,
             what="the second holder")
        with client.using(run_dir):
            client.release(LS, "shared-two", [(serving.path, at)], pid=first.pid)
        second.kill()
        second.wait(10)
        poll(lambda: "shared-two" not in _held(serving), 20, what="the lease released")
        assert not daemonless.resource_owners([(serving.path, at)])
    finally:
        for holder in (first, second):
            if holder is not None and holder.poll() is None:
                holder.kill()
                holder.wait(10)


def test_index_changes_on_one_host_take_turns(serving: Serving, sanlock_bin: str) -> None:
    """Two creates at once through sanlock's CLI: to the index's lease they are one host, so
    the daemon runs them one after the other and each gets its own slot."""
    at = 20 * MiB
    env = {**os.environ, "SANLOCK_RUN_DIR": serving.daemon.config.run_dir}
    rx = f"{LS}:{serving.path}:{at}"
    formatted = subprocess.run([sanlock_bin, "client", "format", "-x", rx], env=env,
                               capture_output=True, text=True, timeout=60, check=False)
    assert formatted.stdout.strip() == "format done 0", formatted.stdout
    creates = [subprocess.Popen([sanlock_bin, "client", "create", "-x", rx, "-e", name],
                                env=env, stdout=subprocess.PIPE, text=True)
               for name in ("first", "second")]
    offsets = sorted(create.communicate(timeout=60)[0].split()[-1] for create in creates)
    assert offsets == [str(at + 2 * MiB), str(at + 3 * MiB)]
