"""Configuration files: one TOML reader for every component that takes one (the daemon, the
lock-driver plugins). Whatever is wrong with a file is one UsageError line naming it; nothing
here interprets values (each component checks its own keys' types and ranges)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from typing import Any

from leasestore.errors import UsageError


def read_table(path: str, known_keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The top-level table of the TOML file at `path`. With `known_keys`, any other key is an
    error, so that a misspelt setting is reported rather than silently ignored."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config {path}: {exc}") from None
    if known_keys is not None:
        unknown = set(table) - set(known_keys)
        if unknown:
            raise UsageError(f"config {path}: unknown key(s) {sorted(unknown)}")
    return table
