"""The daemon's Prometheus metrics: what each event adds, the state gauges read at scrape time,
the textfile writer, and that every documented name is exposed and in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from leasestore.daemon.metrics import METRIC_NAMES, DaemonMetrics, Snapshot, parse_address
from leasestore.errors import LeaseNotHeld, UsageError

README = Path(__file__).resolve().parent.parent / "README.md"


def _samples(metrics: DaemonMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def _metrics() -> tuple[DaemonMetrics, list[Snapshot]]:
    now = [Snapshot({"LS": "held", "other": "failed"}, [("LS", False), ("LS", True),
                                                        ("LS", False)],
                    {"LS": {"live": 3, "dead": 1}}, watchdog_armed=True)]
    return DaemonMetrics(lambda: now[0]), now


def test_events_are_counted_and_timed() -> None:
    metrics, _ = _metrics()
    metrics.renewed("LS", 0.002, 0.0007)
    metrics.renewed("LS", 0.2, 0.01)
    metrics.renewal_failed("LS")
    metrics.lease_done("acquire", "LS", 0.004, None)
    metrics.lease_done("release", "LS", 0.001, None)
    metrics.lease_done("release", "LS", 0.001, LeaseNotHeld("not held"))
    metrics.holder_signalled("SIGTERM")
    metrics.holder_signalled("SIGTERM")
    metrics.holder_signalled("SIGKILL")
    s = _samples(metrics)
    assert s['leasestore_renewal_seconds_count{io="total",lockspace="LS"}'] == 2
    assert s['leasestore_renewal_seconds_bucket{io="read",le="0.0025",lockspace="LS"}'] == 1
    assert s['leasestore_renewal_seconds_sum{io="write",lockspace="LS"}'] == \
        pytest.approx(0.0107)
    assert s['leasestore_renewal_failures_total{lockspace="LS"}'] == 1
    assert s['leasestore_acquire_seconds_count{lockspace="LS"}'] == 1
    assert s['leasestore_release_seconds_count{lockspace="LS"}'] == 1  # the failed one is not
    assert s['leasestore_lease_errors_total{error="LeaseNotHeld",operation="release"}'] == 1
    assert s['leasestore_holder_signals_total{signal="SIGTERM"}'] == 2
    assert s['leasestore_holder_signals_total{signal="SIGKILL"}'] == 1


def test_states_are_read_at_each_scrape() -> None:
    metrics, now = _metrics()
    s = _samples(metrics)
    assert s['leasestore_lockspaces{lockspace="LS",state="held"}'] == 1
    assert s['leasestore_lockspaces{lockspace="other",state="failed"}'] == 1
    assert s['leasestore_leases_held{lockspace="LS",mode="exclusive"}'] == 2
    assert s['leasestore_leases_held{lockspace="LS",mode="shared"}'] == 1
    assert s['leasestore_hosts{lockspace="LS",state="dead"}'] == 1
    assert s["leasestore_watchdog_armed"] == 1
    now[0] = Snapshot({}, [], {}, watchdog_armed=False)
    s = _samples(metrics)
    assert s["leasestore_watchdog_armed"] == 0
    assert not any(k.startswith(("leasestore_lockspaces{", "leasestore_leases_held{"))
                   for k in s)


def test_every_name_is_exposed_and_documented() -> None:
    metrics, _ = _metrics()
    metrics.renewed("LS", 0.001, 0.001)
    metrics.renewal_failed("LS")
    metrics.lease_done("acquire", "LS", 0.1, None)
    metrics.lease_done("release", "LS", 0.1, None)
    metrics.lease_done("acquire", "LS", 0.1, LeaseNotHeld("x"))
    metrics.holder_signalled("killpath")
    text = generate_latest(metrics.registry).decode()
    readme = README.read_text()
    for name in METRIC_NAMES:
        assert f"\n{name}" in text or f"\n{name}_" in text or f"{name}{{" in text, name
        assert f"`{name}`" in readme, f"{name} is not documented in README.md"


def test_the_textfile_is_written_whole(tmp_path: Path) -> None:
    metrics, _ = _metrics()
    path = tmp_path / "leasestore.prom"
    metrics.keep_textfile(str(path), interval_s=3600)
    assert "leasestore_watchdog_armed 1.0" in path.read_text()
    metrics.stop()
    with pytest.raises(UsageError, match="metrics textfile"):
        metrics.keep_textfile(str(tmp_path / "missing" / "x.prom"))


@pytest.mark.parametrize("text", ["9127", "host:", ":9127", "h:0", "h:65536", "h:٣", "h:x"])
def test_a_bad_metrics_address_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_address(text)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:9127") == ("127.0.0.1", 9127)
    assert parse_address("[::1]:9127") == ("::1", 9127)
