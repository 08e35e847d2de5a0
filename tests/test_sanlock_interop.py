"""Mixed lockspace: the real sanlock daemon and a leasestore daemon as hosts of one lockspace."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from leasestore import client
from leasestore.direct import dump, format_lockspace
from leasestore.errors import HostIdBusy

from .conftest import LoopDevices, make_file
from .procs import DaemonProc, SanlockProc, poll

pytestmark = [pytest.mark.slow, pytest.mark.sanlock]
LS = "mixed-ls"


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
        backing = make_file(base / "shared.img", 8 << 20)
        devices = [loops.attach(backing), loops.attach(backing)]
        format_lockspace(devices[0], LS, 0, io_timeout_s=1)
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
