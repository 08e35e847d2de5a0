"""Hostile input against a daemon in this process (no root, no devices): every malformed
message of the fuzz corpus on the daemon's socket, and the daemon's start-up checks of its run
dir. (The same corpus on a registered connection that holds a lease is in
test_resource_real.py, which has devices.)"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasestore import client
from leasestore.daemon import sanlock_proto as sp
from leasestore.daemon.config import DaemonConfig
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.daemon.server import Daemon
from leasestore.errors import LeasestoreError, UsageError
from leasestore.testing.procs import run_dir as client_run_dir
from leasestore.testing.wirefuzz import BASELINES, LEFT_OUT, hostile_messages


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(DaemonConfig(run_dir=str(tmp_path / "run"), host_name="fuzz-host",
                                 io_timeout=1))
    daemon.open()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.shutdown()
        thread.join(10)
        assert not thread.is_alive()


def _one_shot(daemon: Daemon, raw: bytes) -> bytes:
    """Send `raw` on a connection of its own, close it for writing, return all it got back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(daemon.socket_path)
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and hung up before reading all (e.g. STATUS with a payload)
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:  # it hung up with some of our bytes unread
            pass
    return bytes(received)


def test_the_corpus_covers_every_command() -> None:
    assert set(BASELINES) | LEFT_OUT == set(Cmd)


def test_every_hostile_message_gets_a_well_formed_answer_or_none(
        serving: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """Each message, alone on a connection: the reply (if any) starts with a header echoing
    the command, no handler fails inside (nothing logged as an internal error), and the daemon
    answers a plain request afterwards with its state unchanged."""
    caplog.set_level(logging.INFO, logger="leasestore")
    answered = ignored = 0
    for message in hostile_messages(seed=1):
        reply = _one_shot(serving, message.raw)
        if not reply:
            ignored += 1
            continue
        answered += 1
        assert len(reply) >= sp.HEADER_B, message.what
        header = Header.decode(reply[:sp.HEADER_B])
        assert header.magic == sp.SM_MAGIC, message.what
        assert header.cmd in (message.cmd, 0), message.what
    internal = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    assert not internal, internal[:3]
    assert answered > 10 * ignored > 0, (answered, ignored)
    with client_run_dir(serving.config.run_dir):
        assert client.get_lockspaces() == []
        assert client.status()["leases"] == []
    assert serving.lockspaces == {} and not serving.resources.held


def test_headers_sanlock_ignores_get_no_reply_and_the_connection_goes_on(
        serving: Daemon) -> None:
    """Bad magic, a newer major version and unknown commands are skipped (3.8.4+), the next
    header on the same connection is answered."""
    version = Header(sp.SM_MAGIC, sp.SM_PROTO, Cmd.VERSION, 0, 32, 0, 0, 0).encode()
    skipped = [Header(0x1BADF00D, 1, Cmd.STATUS, 0, 32, 0, 0, 0).encode(),
               Header(sp.SM_MAGIC, 0x00020000, Cmd.STATUS, 0, 32, 0, 0, 0).encode(),
               Header(sp.SM_MAGIC, 1, 99, 0, 32, 0, 0, 0).encode()]
    reply = _one_shot(serving, b"".join(skipped) + version)
    assert len(reply) == 32 and Header.decode(reply).data2 == sp.VERSION_WORD


def test_every_sanlock_command_is_served(serving: Daemon) -> None:
    """Each of sanlock 3.8.5's commands has its handler; none is answered -EOPNOTSUPP."""
    served = set(serving._front_end._handlers)
    assert {int(c) for c in Cmd} == served
    for cmd in (Cmd.CONVERT, Cmd.FORMAT_RINDEX, Cmd.CREATE_RESOURCE, Cmd.LOOKUP_RINDEX):
        flags, data, data2, payload = BASELINES[cmd]
        raw = Header(sp.SM_MAGIC, 1, cmd, flags, 32 + len(payload), 0, data, data2).encode()
        reply = _one_shot(serving, raw + payload)
        assert Header.decode(reply[:32]).data != -sp.EOPNOTSUPP, cmd.name


def test_restrict_all_silences_the_connection(serving: Daemon) -> None:
    restrict = Header(sp.SM_MAGIC, 1, Cmd.RESTRICT, sp.RESTRICT_ALL, 32, 0, 0, sp.SELF)
    version = Header(sp.SM_MAGIC, 1, Cmd.VERSION, 0, 32, 0, 0, 0)
    reply = _one_shot(serving, restrict.encode() + version.encode())
    assert reply == restrict.reply(0)  # the VERSION after it is ignored


def test_our_client_gets_error_classes_and_messages(serving: Daemon) -> None:
    with client_run_dir(serving.config.run_dir):
        with pytest.raises(LeasestoreError, match="not joined") as raised:
            client.get_hosts("never-added")
        assert type(raised.value).__name__ == "LockspaceNotJoined"
        with pytest.raises(UsageError, match="io_timeout"):
            client.add_lockspace("ls", 1, "/nonexistent/x", 0, iotimeout=300)
        assert client.inq_lockspace("ls", 1, "/nonexistent/x", 0) is False


def _daemon(run_dir: Path) -> Daemon:
    return Daemon(DaemonConfig(run_dir=str(run_dir), host_name="perm-test"))


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_run_dir_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(mode)
    with pytest.raises(UsageError, match="writable"):
        _daemon(run_dir).open()
    assert not (run_dir / sp.SOCKET_NAME).exists()


def test_a_run_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("LEASESTORE_REQUIRE_BLOCKDEV") == "1":
            pytest.fail("root is required (LEASESTORE_REQUIRE_BLOCKDEV=1)")
        pytest.skip("needs root to give the directory away")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(UsageError, match="owned by uid 65534"):
        _daemon(run_dir).open()


def test_the_socket_is_not_open_to_other_users(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path / "run")
    daemon.open()
    try:
        mode = os.stat(daemon.socket_path).st_mode & 0o777
        assert mode & 0o007 == 0, oct(mode)
        assert os.stat(tmp_path / "run").st_mode & 0o022 == 0
    finally:
        daemon.shutdown()
        daemon._close()
