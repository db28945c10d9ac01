"""The benchmarks' timer: CPU seconds, not wall clock, as the 2-core machine is shared
with other jobs and wall time swings with their load."""

from __future__ import annotations

import time


def timed(fn, repeat: int = 3):
    """(result of fn(), least CPU seconds of this process over `repeat` runs)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return out, best
