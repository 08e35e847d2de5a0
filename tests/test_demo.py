"""The README's main job: `leasestore demo` runs, shows the takeover story, and leaves nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_shows_a_takeover_after_host_dead_and_cleans_up() -> None:
    with tempfile.TemporaryDirectory() as parent:
        out = subprocess.run(
            [sys.executable, "-m", "leasestore.cli.main", "demo", "--dir", parent],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert list(Path(parent).iterdir()) == []
    text = out.stdout
    assert "host 2 sees: host 1 LIVE, host 2 LIVE, host 3 LIVE" in text
    times = {state: float(t) for t, state in
             re.findall(r"\[\s*([\d.]+)s\] host 2 sees host 1: (\w+)", text)}
    killed = float(re.search(r"\[\s*([\d.]+)s\] host 1 died", text)[1])  # type: ignore[index]
    taken = re.search(r"\[\s*([\d.]+)s\] host 2 acquired 'vm-disk-1': lver (\d+)", text)
    assert taken is not None
    # host_dead (13 s) counts from host 1's last renewal, at most 2 s before the kill.
    assert times["DEAD"] - killed >= 13 - 2
    assert float(taken[1]) - killed >= 13 - 2 and int(taken[2]) == 2
    assert "host 2 asks for the lease: refused" in text
    assert "holds 'vm-disk-1' on host 1: lver 1" in text
    assert "stopped 4 processes" in text
    pids = re.search(r"started 3 daemons \(pids ([\d, ]+)\)", text)[1]  # type: ignore[index]
    for pid in pids.split(", "):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()
