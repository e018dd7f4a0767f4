"""What the benchmarks measure besides wall time."""

from __future__ import annotations

import contextlib

import psutil


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live children (the joblib workers).

    Other engineers share these 2 cores, so wall time swings with their load; CPU
    time is the steadier measure of the work each variant does.
    """
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total
