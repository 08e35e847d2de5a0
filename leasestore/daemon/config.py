"""Daemon configuration: defaults, a TOML file, then command-line overrides.

Keys (all optional): run_dir, host_name, io_timeout, watchdog ("none" or a device path),
watchdog_fire_timeout, renewal_history_size, reacquire_needs_same_version, metrics_address
(HOST:PORT to serve Prometheus metrics on), metrics_textfile (a file to write them to). Unknown
keys are an error, so typos surface.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from leasestore.daemon.commands import DEFAULT_RUN_DIR, RUN_DIR_ENV
from leasestore.daemon.metrics import parse_address
from leasestore.errors import UsageError
from leasestore.timeouts import (
    DEFAULT_IO_TIMEOUT_S,
    DEFAULT_WATCHDOG_FIRE_TIMEOUT_S,
    checked_fire_timeout,
    checked_io_timeout,
)
from leasestore.tomlfile import read_table
from leasestore.units import checked_whole


def default_run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR)


@dataclass(frozen=True)
class DaemonConfig:
    run_dir: str = field(default_factory=default_run_dir)
    host_name: str = field(default_factory=lambda: str(uuid.uuid4()))
    io_timeout: int = DEFAULT_IO_TIMEOUT_S
    watchdog: str = "none"
    watchdog_fire_timeout: float = DEFAULT_WATCHDOG_FIRE_TIMEOUT_S
    renewal_history_size: int = 180
    reacquire_needs_same_version: bool = True
    """A lease acquired for a registered process by another (a manager acting by pid, as
    libvirtd does for its QEMU processes) that this process released before comes back, when
    no version is named, only if nobody held it in between: its lver is still the one it was
    released at. This keeps a VM paused on one host, run and stopped on another meanwhile, from
    resuming over a disk someone else wrote (libvirt resumes with lver 0). A process acquiring
    for itself (vdsm's pattern: one registration, acquire and release in turn) is not affected."""
    metrics_address: str = ""
    """HOST:PORT on which /metrics is served; empty: not served."""
    metrics_textfile: str = ""
    """A file the metrics are written to every 15 s (the node exporter's textfile collector);
    empty: none."""

    @classmethod
    def load(cls, path: str | None, **overrides: Any) -> DaemonConfig:
        values: dict[str, Any] = {}
        if path is not None:
            values = read_table(path, (f.name for f in dataclasses.fields(cls)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Every value of the right type and range (a TOML file can hold anything)."""
        checked_io_timeout(self.io_timeout, "io_timeout")
        checked_fire_timeout(self.watchdog_fire_timeout, "watchdog_fire_timeout")
        for name in ("run_dir", "host_name", "watchdog", "metrics_address", "metrics_textfile"):
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"{name} must be a string, not {getattr(self, name)!r}")
        checked_whole(self.renewal_history_size, "renewal_history_size", 1, 100_000)
        if not isinstance(self.reacquire_needs_same_version, bool):
            raise UsageError("reacquire_needs_same_version must be true or false, not "
                             f"{self.reacquire_needs_same_version!r}")
        if self.metrics_address:
            parse_address(self.metrics_address)
        if not self.host_name or len(self.host_name.encode()) > 48:
            raise UsageError("host_name must be 1..48 bytes")
