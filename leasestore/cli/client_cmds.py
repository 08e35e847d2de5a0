"""`leasestore client` (filled in with the host-lease service)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    del sub
