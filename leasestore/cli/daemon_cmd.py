"""`leasestore daemon`: run the daemon in the foreground (systemd style)."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from leasestore.daemon.config import DaemonConfig
from leasestore.daemon.server import Daemon


def register(sub: Any) -> None:
    daemon = sub.add_parser("daemon", help="run the lease daemon in the foreground")
    daemon.add_argument("--run-dir", help="socket and pid file directory "
                                          "(default $LEASESTORE_RUN_DIR or /run/leasestore)")
    daemon.add_argument("--config", help="TOML configuration file")
    daemon.add_argument("--host-name", help="this host's unique name (default: a new uuid)")
    daemon.add_argument("--io-timeout", type=int, help="default io_timeout in seconds (10)")
    daemon.add_argument("--watchdog", help="none or a watchdog device such as /dev/watchdog")
    daemon.add_argument("--watchdog-fire-timeout", type=float,
                        help="seconds from the last pet to reset (60; same on every host)")
    daemon.add_argument("-v", "--verbose", action="store_true")
    daemon.set_defaults(handler=run_daemon)


def run_daemon(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = DaemonConfig.load(
        args.config, run_dir=args.run_dir, host_name=args.host_name,
        io_timeout=args.io_timeout, watchdog=args.watchdog,
        watchdog_fire_timeout=args.watchdog_fire_timeout,
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
