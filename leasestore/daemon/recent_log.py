"""The daemon's recent log lines, kept in memory for LOG_DUMP (as sanlock keeps its own log
buffer): the newest lines whose total size is at most LIMIT_B, oldest dropped first. The
daemon's log listener adds each line as it formats it for stderr (so it is formatted once);
request threads never touch this buffer, only the listener thread and LOG_DUMP do.
"""

from __future__ import annotations

import collections
import threading

LIMIT_B = 1 << 20
"""sanlock's LOG_DUMP sends at most 1 MiB."""

_lines: collections.deque[str] = collections.deque()
_size_b = 0
_lock = threading.Lock()


def add(line: str) -> None:
    """Keep `line` (without its newline) as the newest."""
    global _size_b
    cost = len(line) + 1
    with _lock:
        _lines.append(line)
        _size_b += cost
        while _size_b > LIMIT_B and _lines:
            _size_b -= len(_lines.popleft()) + 1


def text() -> str:
    """Every kept line, oldest first, each ended by a newline."""
    with _lock:
        return "".join(f"{line}\n" for line in _lines)


def clear() -> None:
    global _size_b
    with _lock:
        _lines.clear()
        _size_b = 0
