"""`leasestore bench`: the renewal pattern timed on a file or device, the judgement of each
io_timeout, and the rule that it never writes where a lease record (or any data) lives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leasestore import direct
from leasestore.cli.main import main
from leasestore.errors import AreaInUse
from leasestore.latency import (
    RenewalTiming,
    Summary,
    histogram,
    io_timeout_verdicts,
    recommended_io_timeout,
)
from leasestore.ondisk.geometry import Geometry
from leasestore.renewal_timing import STAMP, Plan, time_renewals
from leasestore.units import MiB

AREA = 1 * MiB


def _area(path: str, offset: int = AREA, length: int = AREA) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _plan(path: str, **changes: object) -> Plan:
    fields: dict[str, object] = {"path": path, "offset_b": AREA, "geometry": None,
                                 "read_only": False, "count": 5, "seconds": None,
                                 "interval_s": 0.0}
    fields.update(changes)
    return Plan(**fields)  # type: ignore[arg-type]


# -- the judgement (pure) ----------------------------------------------------------------------

def test_percentiles_and_verdicts_follow_the_slowest_single_io() -> None:
    timings = [RenewalTiming(0.001 * i, 0.002) for i in range(1, 101)]  # reads 1..100 ms
    timings.append(RenewalTiming(0.010, 1.5))  # one write stalls 1.5 s
    summary = Summary.of([t.read_s for t in timings])
    assert summary.count == 101 and summary.max_s == pytest.approx(0.1)
    assert summary.percentiles_s[0] == pytest.approx(0.050)  # p50 of 1..100 ms and 10 ms
    verdicts = {v.io_timeout_s: v for v in io_timeout_verdicts(timings)}
    assert sorted(verdicts) == list(range(1, 21))
    assert verdicts[1].failed_renewals == 1 and verdicts[1].margin_s == pytest.approx(-0.5)
    assert verdicts[2].failed_renewals == 0 and verdicts[2].margin_s == pytest.approx(0.5)
    assert recommended_io_timeout(timings) == 3  # 2 × 1.5 s


def test_no_recommendation_when_the_worst_io_exceeds_half_of_20_s() -> None:
    assert recommended_io_timeout([RenewalTiming(0.001, 10.5)]) is None
    assert recommended_io_timeout([RenewalTiming(0.0001, None)]) == 1
    assert recommended_io_timeout([]) is None


def test_histogram_counts_every_timing_once() -> None:
    values = [0.001, 0.002, 0.004, 0.1, 0.1, 2.0]
    buckets = histogram(values, buckets=6)
    assert sum(b.count for b in buckets) == len(values)
    assert buckets[0].low_s == pytest.approx(0.001) and buckets[-1].high_s == pytest.approx(2.0)
    assert histogram([0.003] * 4) == [histogram([0.003] * 4)[0]] and \
        histogram([0.003] * 4)[0].count == 4


# -- the timing, and what it may write ---------------------------------------------------------

def test_an_unused_area_is_timed_with_writes_and_left_zero(lease_file: str) -> None:
    seen: list[RenewalTiming] = []
    run = time_renewals(_plan(lease_file, count=7), seen.append)
    assert len(run.timings) == 7 and seen == run.timings
    assert all(t.read_s > 0 and t.write_s is not None and t.write_s > 0 for t in run.timings)
    assert run.geometry == Geometry(512, MiB) and run.holds is None
    assert _area(lease_file) == bytes(AREA)


def test_an_interrupted_run_still_zeroes_its_sector_and_its_stamp_is_reusable(
        lease_file: str) -> None:
    def interrupt(timing: RenewalTiming) -> None:
        assert _area(lease_file, length=len(STAMP)) == STAMP  # the stamp is what is written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        time_renewals(_plan(lease_file), interrupt)
    assert _area(lease_file) == bytes(AREA)
    with open(lease_file, "r+b") as f:  # as if the zeroing had not happened (power loss)
        f.seek(AREA)
        f.write(STAMP)
    assert len(time_renewals(_plan(lease_file, count=2)).timings) == 2
    assert _area(lease_file) == bytes(AREA)


def test_a_lockspace_is_never_written_and_read_only_times_it_at_its_geometry(
        lease_file: str) -> None:
    direct.format_lockspace(lease_file, "LS", AREA)
    before = _area(lease_file)
    with pytest.raises(AreaInUse, match=r"holds .*lockspace 'LS'.*--read-only"):
        time_renewals(_plan(lease_file))
    run = time_renewals(_plan(lease_file, read_only=True, count=3))
    assert [t.write_s for t in run.timings] == [None] * 3
    assert run.holds is not None and "'LS'" in run.holds
    assert _area(lease_file) == before


def test_an_area_of_other_data_is_refused_for_writes(lease_file: str) -> None:
    with open(lease_file, "r+b") as f:
        f.seek(AREA + 300 * 512 + 7)
        f.write(b"\x01")
    before = _area(lease_file)
    with pytest.raises(AreaInUse, match="data that is no lease record"):
        time_renewals(_plan(lease_file))
    assert _area(lease_file) == before


def test_a_duration_and_an_interval_pace_the_renewals(lease_file: str) -> None:
    run = time_renewals(_plan(lease_file, count=None, seconds=0.5, interval_s=0.1))
    assert 4 <= len(run.timings) <= 6, len(run.timings)
    assert run.elapsed_s >= 0.4


# -- the command -------------------------------------------------------------------------------

def test_bench_json_reports_percentiles_verdicts_and_a_recommendation(
        lease_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", f"{lease_file}:1M", "--count", "30", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["renewals"] == 30 and document["read_only"] is False
    assert document["geometry"] == {"sector_size": 512, "align_size": MiB}
    for kind in ("read", "write", "total"):
        stats = document[kind]
        assert stats["count"] == 30
        assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["p99.9_ms"] \
            <= stats["max_ms"]
    assert [v["io_timeout"] for v in document["io_timeouts"]] == list(range(1, 21))
    assert document["recommended_io_timeout"] in range(1, 21)
    assert _area(lease_file) == bytes(AREA)


def test_bench_prints_a_report_and_draws_a_plot(
        lease_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "renewals.png"
    assert main(["bench", lease_file, "--count", "20", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "20 renewals" in out and "recommended io_timeout:" in out
    assert out.count(" s  ") >= 20  # a verdict row per io_timeout 1..20
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_on_a_live_lockspace_refuses_without_read_only(
        lease_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    direct.format_lockspace(lease_file, "LS", 0)
    assert main(["bench", lease_file]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing was written" in err[0], err
    assert main(["bench", lease_file, "--read-only", "--count", "5"]) == 0
    assert "the area holds 2000 delta record(s) of lockspace 'LS'" in capsys.readouterr().out


def test_bench_on_a_block_device(loop_device: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", f"{loop_device}:2M", "--count", "20", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["renewals"] == 20 and document["write"]["count"] == 20
    with open(loop_device, "rb") as f:
        f.seek(2 * MiB)
        assert f.read(AREA) == bytes(AREA)
