"""Progress for long waits on a terminal: an elapsed-time line while a call blocks (a 20 s join,
a removal waiting for holders), shown only when stderr is a terminal, through tqdm."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from tqdm import tqdm

TICK_S = 0.2


@contextlib.contextmanager
def while_waiting(what: str, quiet: bool = False) -> Iterator[None]:
    """Show "what: elapsed" on stderr until the block ends (nothing if not a terminal)."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    done = threading.Event()
    bar = tqdm(total=None, desc=what, file=sys.stderr, leave=False,
               bar_format="{desc}: {elapsed}")

    def tick() -> None:
        while not done.wait(TICK_S):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        bar.close()
