"""A daemon killed outright and started again must not disarm fencing: the holders its
predecessor left running are killed before the new daemon opens (and pets) the watchdog.

The watchdog is a FIFO the test reads (as tools/chaos.py emulates one): the first pet of the
new daemon must come only after the old holder is dead.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from leasestore import client
from leasestore.direct import format_lockspace, format_resource, read_paxos_leader
from leasestore.testing.procs import DaemonProc, make_file, poll

pytestmark = pytest.mark.slow
LS = "restart-ls"
RES_AT = 1 << 20


def _drain(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_restarted_daemon_kills_the_old_holders_before_it_pets(tmp_path: Path) -> None:
    path = make_file(tmp_path / "lease.img", 4 << 20)
    format_lockspace(path, LS, 0, io_timeout_s=1)
    format_resource(path, LS, "vm", RES_AT)
    fifo = tmp_path / "watchdog"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    daemon = DaemonProc(tmp_path, "restart-host", 1, 5, watchdog=str(fifo), run_dir_name="run")
    holder: subprocess.Popen[bytes] | None = None
    try:
        daemon.call(client.add_lockspace, LS, 1, path, 0)
        holder = subprocess.Popen(
            [sys.executable, "-m", "leasestore.cli.main", "client", "--run-dir", daemon.run_dir,
             "command", "-r", f"{LS}:vm:{path}:{RES_AT}", "-c", "sleep", "600"])
        poll(lambda: read_paxos_leader(path, RES_AT).timestamp != 0, 20, what="lease held")
        poll(lambda: b"\0" in _drain(reader), 10, what="the first daemon's pets")
        daemon.kill()
        assert holder.poll() is None, "the holder should outlive its daemon until a restart"
        _drain(reader)
        daemon.stop()
        daemon = DaemonProc(tmp_path, "restart-host", 1, 5, watchdog=str(fifo),
                            run_dir_name="run")
        pets = b""

        def petted() -> bool:
            nonlocal pets
            pets += _drain(reader)
            return b"\0" in pets

        poll(petted, 20, interval_s=0.01, what="the new daemon's first pet")
        assert holder.poll() == -9, "the new daemon petted while the old holder still ran"
        assert "an earlier daemon left lease holders; killed pids" in daemon.log()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        daemon.stop()
        os.close(reader)
