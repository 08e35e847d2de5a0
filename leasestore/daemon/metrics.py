"""The daemon's Prometheus metrics, through prometheus_client (the reference client library:
its exposition format, histograms and textfile writer are the ones Prometheus and the node
exporter expect).

Events are counted as they happen (renewals, acquires, releases, signals to holders); states
(lockspaces, leases held, hosts as this daemon sees them, the watchdog) are read from the
daemon at each scrape, so they are never stale. Every name is in `METRIC_NAMES` and the README.
The metrics are served on an address the operator enables, or written to a textfile for the
node exporter's textfile collector; with neither, none are exposed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import write_to_textfile as _write_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from leasestore.errors import UsageError

RENEWAL_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 20.0, 60.0)
LEASE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)
TEXTFILE_INTERVAL_S = 15.0

METRIC_NAMES = (
    "leasestore_renewal_seconds",
    "leasestore_renewal_failures_total",
    "leasestore_acquire_seconds",
    "leasestore_release_seconds",
    "leasestore_lease_errors_total",
    "leasestore_holder_signals_total",
    "leasestore_lockspaces",
    "leasestore_leases_held",
    "leasestore_hosts",
    "leasestore_watchdog_armed",
)


@dataclass(frozen=True)
class Snapshot:
    """What the daemon holds at one instant, for the state gauges."""

    lockspace_states: dict[str, str]
    """lockspace name -> its state label."""
    leases: list[tuple[str, bool]]
    """(lockspace, shared) of each lease held."""
    host_states: dict[str, dict[str, int]]
    """lockspace name -> host state label -> hosts in it, as this daemon sees them."""
    watchdog_armed: bool


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        now = self._snapshot()
        lockspaces = GaugeMetricFamily("leasestore_lockspaces",
                                       "Lockspaces of this daemon by state",
                                       labels=["lockspace", "state"])
        for name, state in sorted(now.lockspace_states.items()):
            lockspaces.add_metric([name, state], 1)
        yield lockspaces
        leases = GaugeMetricFamily("leasestore_leases_held",
                                   "Resource leases held for local processes",
                                   labels=["lockspace", "mode"])
        counts: dict[tuple[str, str], int] = {}
        for lockspace, shared in now.leases:
            mode = "shared" if shared else "exclusive"
            counts[(lockspace, mode)] = counts.get((lockspace, mode), 0) + 1
        for (lockspace, mode), count in sorted(counts.items()):
            leases.add_metric([lockspace, mode], count)
        yield leases
        hosts = GaugeMetricFamily("leasestore_hosts",
                                  "Hosts of each lockspace by state, as this daemon sees them",
                                  labels=["lockspace", "state"])
        for lockspace, states in sorted(now.host_states.items()):
            for state, count in sorted(states.items()):
                hosts.add_metric([lockspace, state], count)
        yield hosts
        yield GaugeMetricFamily("leasestore_watchdog_armed",
                                "1 while a hardware watchdog is open and petted",
                                value=1 if now.watchdog_armed else 0)


class DaemonMetrics:
    """The registry of one daemon and the calls that record its events."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._renewal = Histogram("leasestore_renewal_seconds",
                                  "Host-lease renewal I/O time (read, write, total)",
                                  ["lockspace", "io"], registry=self.registry,
                                  buckets=RENEWAL_BUCKETS_S)
        self._renewal_failures = Counter("leasestore_renewal_failures",
                                         "Host-lease renewals that failed", ["lockspace"],
                                         registry=self.registry)
        self._acquire = Histogram("leasestore_acquire_seconds",
                                  "Resource lease acquires that succeeded, by duration",
                                  ["lockspace"], registry=self.registry, buckets=LEASE_BUCKETS_S)
        self._release = Histogram("leasestore_release_seconds",
                                  "Resource lease releases that succeeded, by duration",
                                  ["lockspace"], registry=self.registry, buckets=LEASE_BUCKETS_S)
        self._errors = Counter("leasestore_lease_errors",
                               "Acquires and releases refused or failed, by error",
                               ["operation", "error"], registry=self.registry)
        self._signals = Counter("leasestore_holder_signals",
                                "Holders stopped by the daemon (lockspace failure, request, "
                                "removal), by signal or killpath", ["signal"],
                                registry=self.registry)
        self.registry.register(_StateCollector(snapshot))
        self._stop = threading.Event()

    def renewed(self, lockspace: str, read_s: float, write_s: float) -> None:
        self._renewal.labels(lockspace, "read").observe(read_s)
        self._renewal.labels(lockspace, "write").observe(write_s)
        self._renewal.labels(lockspace, "total").observe(read_s + write_s)

    def renewal_failed(self, lockspace: str) -> None:
        self._renewal_failures.labels(lockspace).inc()

    def lease_done(self, operation: str, lockspace: str, seconds: float,
                   error: BaseException | None) -> None:
        """An acquire or release ended, after `seconds`, with `error` or without."""
        if error is not None:
            self._errors.labels(operation, type(error).__name__).inc()
        elif operation == "acquire":
            self._acquire.labels(lockspace).observe(seconds)
        else:
            self._release.labels(lockspace).observe(seconds)

    def holder_signalled(self, how: str) -> None:
        self._signals.labels(how).inc()

    def serve(self, address: str) -> None:
        """Serve /metrics on HOST:PORT (a background thread)."""
        host, port = parse_address(address)
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"metrics address {address}: {exc.strerror}") from None

    def write_textfile(self, path: str) -> None:
        """Write the metrics to `path` (atomically: a temporary file renamed over it)."""
        _write_textfile(path, self.registry)

    def keep_textfile(self, path: str, interval_s: float = TEXTFILE_INTERVAL_S) -> None:
        """Write the textfile now (so a bad path fails at start) and then every interval_s."""
        try:
            self.write_textfile(path)
        except OSError as exc:
            raise UsageError(f"metrics textfile {path}: {exc.strerror}") from None

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.write_textfile(path)
                except OSError:
                    continue  # the next interval tries again; a full disk must not stop us

        threading.Thread(target=loop, name="metrics-textfile", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port)."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isascii() or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise UsageError(f"metrics address must be HOST:PORT, not {address!r}")
    return host, int(port)


def host_state_counts(states: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return counts
