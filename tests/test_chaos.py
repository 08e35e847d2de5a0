"""tools/chaos.py: its ledger checker, and one real 60-second run on loop devices."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.prereq import require_blockdev

TOOL = Path(__file__).resolve().parent.parent / "tools" / "chaos.py"


def _chaos_module() -> Any:
    spec = importlib.util.spec_from_file_location("tools_chaos", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chaos = _chaos_module()


def _write(ledger: Path, lines: list[str]) -> None:
    ledger.write_text("".join(line + "\n" for line in lines))


def test_clean_hand_overs_pass_and_count_takeovers(tmp_path: Path) -> None:
    _write(tmp_path / "a.ledger", ["A 0 1 1 100 11", "H 0 1 1 150 11", "R 0 1 1 200 11",
                                   "A 0 1 3 500 11", "H 0 1 3 550 11"])  # never released
    _write(tmp_path / "b.ledger", ["A 0 2 2 300 22", "H 0 2 2 350 22", "R 0 2 2 400 22",
                                   "A 0 2 4 900 22", "R 0 2 4 950 22", "A 0 2"])  # torn line
    verdict = chaos.check_ledger(chaos.read_ledger(tmp_path))
    assert verdict.violations == []
    assert (verdict.acquisitions, verdict.takeovers) == (4, 1)


def test_overlapping_holdings_are_a_violation(tmp_path: Path) -> None:
    _write(tmp_path / "a.ledger", ["A 1 1 5 100 11", "H 1 1 5 260 11"])  # still used at 260
    _write(tmp_path / "b.ledger", ["A 1 2 6 250 22", "R 1 2 6 300 22"])
    verdict = chaos.check_ledger(chaos.read_ledger(tmp_path))
    assert len(verdict.violations) == 1
    assert "host 1 (lver 5, pid 11) still used it" in verdict.violations[0]


def test_a_version_that_does_not_rise_is_a_violation(tmp_path: Path) -> None:
    _write(tmp_path / "a.ledger", ["A 0 1 7 100 11", "R 0 1 7 200 11"])
    _write(tmp_path / "b.ledger", ["A 0 2 7 300 22", "R 0 2 7 400 22"])
    verdict = chaos.check_ledger(chaos.read_ledger(tmp_path))
    assert verdict.violations == ["res0: lver 7 (host 2) acquired after lver 7 (host 1)"]


@pytest.mark.slow
def test_sixty_seconds_of_real_chaos_keep_exclusion() -> None:
    require_blockdev()
    out = subprocess.run([sys.executable, str(TOOL), "--hosts", "3", "--resources", "2",
                          "--seconds", "60", "--seed", "7", "--json"],
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["violations"] == 0
    assert summary["acquisitions"] >= 20, summary
    assert sum(summary["faults"].values()) >= 8, summary
    assert {"kill_worker", "stop_worker"} & set(summary["faults"]), summary


def test_a_lease_used_after_the_restarted_daemon_serves_is_a_violation(tmp_path: Path) -> None:
    _write(tmp_path / "a.ledger", ["A 0 1 5 100 11", "H 0 1 5 1000000000 11"])  # on until 1 s
    _write(tmp_path / "b.ledger", ["A 1 1 2 100 12", "H 1 1 2 150000000 12"])  # ends in time
    holdings = chaos.read_ledger(tmp_path)
    restart = chaos.Restart(host_id=1, serving_ns=200_000_000, earlier_workers=frozenset({11, 12}))
    violations = chaos.check_restarts(holdings, [restart])
    assert len(violations) == 1 and "worker 11 still used res0" in violations[0]
    assert chaos.check_restarts(holdings, [chaos.Restart(2, 200_000_000, frozenset({11}))]) == []
