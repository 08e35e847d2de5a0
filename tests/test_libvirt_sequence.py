"""libvirt's sanlock plugin call sequence (SANLOCK-WIRE.md §7), replayed through libsanlock's
own client library (ctypes, `leasestore.testing.libsanlock`) against leasestore's daemon and
the real sanlock daemon: every call's result must be the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from leasestore.testing import libsanlock
from leasestore.testing.procs import DaemonProc, SanlockProc, make_file

MiB = 1 << 20


def _sequence(env: dict[str, str], base: Path) -> dict[str, Any]:
    lease_dir = base / "sanlock-leases"
    lease_dir.mkdir()
    lockspace = make_file(lease_dir / "__LIBVIRT__DISKS__", 0)
    disk_lease = make_file(lease_dir / "0123456789abcdef0123456789abcdef", 0)
    for path in (lockspace, disk_lease):  # what libvirt does first: ALIGN, then zero-fill
        os.truncate(path, MiB)
    out = subprocess.run(
        [sys.executable, libsanlock.__file__, "--lockspace-path", lockspace,
         "--lease-path", disk_lease, "--io-timeout", "1"],
        env=env, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    result.pop("add_lockspace_s")
    state = result["inquire"][2]
    result["inquire"][2] = state.replace(disk_lease, "LEASE") if state else state
    return result


@pytest.fixture
def libsanlock_present() -> None:
    try:
        libsanlock.load()
    except OSError as exc:
        if os.environ.get("LEASESTORE_REQUIRE_SANLOCK") == "1":
            pytest.fail(f"libsanlock is required: {exc}")
        pytest.skip(str(exc))


def test_libvirts_calls_get_sanlocks_answers(tmp_path: Path, sanlock_bin: str,
                                              libsanlock_present: None) -> None:
    (tmp_path / "ours").mkdir()
    ours = DaemonProc(tmp_path / "ours", "lv-host", io_timeout_s=1, watchdog_fire_timeout_s=5)
    try:
        got = _sequence({**os.environ, "SANLOCK_RUN_DIR": ours.run_dir}, tmp_path / "ours")
    finally:
        ours.stop()
    (tmp_path / "ref").mkdir()
    reference = SanlockProc(tmp_path / "ref", "lv-host", sanlock_bin)
    try:
        expected = _sequence(reference.env, tmp_path / "ref")
    finally:
        reference.stop()
    assert expected["acquire"] == 0 and expected["inquire"][1] == 1  # the replay is right
    assert got == expected
