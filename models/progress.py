"""Progress as plain lines with the seconds since start: readable in a terminal, a log
file or CI's output alike, where a redrawn progress bar would not be."""

from __future__ import annotations

import time
from collections.abc import Callable

_START = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", flush=True)


def percent(label: str, every: int = 25) -> Callable[[int, int], None]:
    """An update(done, total) that says `label: N%` each time N passes a multiple of `every`."""
    shown = 0  # the step's own line says when it starts

    def update(done: int, total: int) -> None:
        nonlocal shown
        pct = 100 * done // total if total else 0
        if pct // every > shown:
            shown = pct // every
            say(f"{label}: {pct}%")

    return update
