"""`leasestore daemon`: run the daemon in the foreground (systemd style)."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import queue
import signal
from typing import Any

from leasestore.daemon import recent_log
from leasestore.daemon.config import DaemonConfig
from leasestore.daemon.server import Daemon
from leasestore.units import decimal_float, decimal_int


def register(sub: Any) -> None:
    daemon = sub.add_parser("daemon", help="run the lease daemon in the foreground")
    daemon.add_argument("--run-dir", help="socket and pid file directory "
                                          "(default $LEASESTORE_RUN_DIR or /run/leasestore)")
    daemon.add_argument("--config", help="TOML configuration file")
    daemon.add_argument("--host-name", help="this host's unique name (default: a new uuid)")
    daemon.add_argument("--io-timeout", type=decimal_int, help="default io_timeout in seconds (10)")
    daemon.add_argument("--watchdog", help="none or a watchdog device such as /dev/watchdog")
    daemon.add_argument("--watchdog-fire-timeout", type=decimal_float,
                        help="seconds from the last pet to reset (60; same on every host)")
    daemon.add_argument("--metrics-address", metavar="HOST:PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics")
    daemon.add_argument("--metrics-textfile", metavar="FILE",
                        help="write Prometheus metrics to FILE every 15 s (node exporter)")
    daemon.add_argument("-v", "--verbose", action="store_true")
    daemon.set_defaults(handler=run_daemon)


class _ToStderrAndRecent(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, and each formatted line also kept for LOG_DUMP (daemon/recent_log.py)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        recent_log.add(line)
        return line


def _log_through_a_queue(verbose: bool) -> logging.handlers.QueueListener:
    """Log to stderr from one thread: request and renewal threads only enqueue a record, so
    none waits on the log's I/O or on the others' writes (the stdlib's QueueHandler does it)."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    to_stderr = _ToStderrAndRecent()
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(logging.handlers.QueueHandler(records))
    listener = logging.handlers.QueueListener(records, to_stderr)
    listener.start()
    return listener


def run_daemon(args: argparse.Namespace) -> int:
    listener = _log_through_a_queue(args.verbose)
    try:
        return _run(args)
    finally:
        listener.stop()  # writes out what is queued


def _run(args: argparse.Namespace) -> int:
    config = DaemonConfig.load(
        args.config, run_dir=args.run_dir, host_name=args.host_name,
        io_timeout=args.io_timeout, watchdog=args.watchdog,
        watchdog_fire_timeout=args.watchdog_fire_timeout,
        metrics_address=args.metrics_address, metrics_textfile=args.metrics_textfile,
    )
    daemon = Daemon(config)
    daemon.open()

    def stop(signum: int, frame: object) -> None:
        del signum, frame
        daemon.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    daemon.serve_forever()
    return 0
