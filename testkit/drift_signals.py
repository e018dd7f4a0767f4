"""Where a data-drift monitor signals on a stream: the index the tests pin, the bench times."""

from __future__ import annotations

import numpy as np

from consumer.detectors import DataDriftMonitor, DriftConfig
from testkit.streams import first_drift


def signals(config: DriftConfig, events: np.ndarray, block: int = 1_000) -> list[int]:
    """Stream indices of every signal, feeding `events` in blocks of `block`."""
    monitor = DataDriftMonitor(config)
    found = []
    for start in range(0, len(events), block):
        signal = first_drift(monitor, events[start : start + block])
        if signal is not None:
            found.append(start + signal.index)
    return found
