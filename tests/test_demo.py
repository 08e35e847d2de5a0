"""The README's main job: `leasestore demo` runs, shows the takeover story, and leaves nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_shows_a_killed_host_going_dead_and_cleans_up() -> None:
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
    killed = float(re.search(r"\[\s*([\d.]+)s\] killed host 1", text)[1])  # type: ignore[index]
    assert times["DEAD"] - killed >= 13 - 2  # host_dead from the last renewal, before the kill
    assert "stopped 3 daemons" in text
    pids = re.search(r"started 3 daemons \(pids ([\d, ]+)\)", text)[1]  # type: ignore[index]
    for pid in pids.split(", "):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()
