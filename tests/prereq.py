"""What a test needs from the machine: a missing prerequisite skips the test locally and fails
it when CI demands it (LEASESTORE_REQUIRE_BLOCKDEV=1, LEASESTORE_REQUIRE_SANLOCK=1, ...)."""

from __future__ import annotations

import os
import shutil

import pytest


def missing(what: str, env: str) -> None:
    """Skip, or fail if `env` is 1: `what` is not available."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} is required ({env}=1) but not available")
    pytest.skip(f"{what} not available")


def require_blockdev() -> None:
    """Root and losetup (loop devices)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        missing("root and losetup", "LEASESTORE_REQUIRE_BLOCKDEV")
