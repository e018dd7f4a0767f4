"""CUSUM: Page's cumulative sum, a change detector against a FIXED target mean.

River's ADWIN, PageHinkley and KSWIN compare a stream with its own past, so a stream
that is wrong from its first value never alarms. CUSUM compares it with a known
target (0 here: monitors feed values already centred on their reference), so it
alarms on a stream that starts shifted just as on one that shifts later. Two sums
are kept: `upper` grows by `x - slack` and `lower` by `-x - slack`, each floored at
0; a sum above `threshold` is a drift (`direction` says which: +1 up, -1 down), and
both sums restart. Same contract as River's detectors: `update(x)`, then read
`drift_detected`.

>>> c = Cusum(slack=0.5, threshold=1.5)
>>> [c.update(x) or c.drift_detected for x in (0.1, -0.2, 1.5, 1.5, 1.5)]
[False, False, False, True, False]
>>> c.direction
1
"""

from __future__ import annotations

import math


class Cusum:
    """Two-sided CUSUM of values centred on 0; raises ValueError on bad parameters."""

    __slots__ = ("slack", "threshold", "upper", "lower", "drift_detected", "direction")

    def __init__(self, slack: float = 1.0, threshold: float = 10.0) -> None:
        if not (math.isfinite(slack) and slack >= 0):
            raise ValueError(f"slack must be finite and >= 0, got {slack!r}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be finite and > 0, got {threshold!r}")
        self.slack = float(slack)
        self.threshold = float(threshold)
        self.upper = self.lower = 0.0
        self.drift_detected = False
        #: +1 when the last drift was upward, -1 when downward, 0 before any.
        self.direction = 0

    def update(self, x: float) -> None:
        self.upper = max(0.0, self.upper + x - self.slack)
        self.lower = max(0.0, self.lower - x - self.slack)
        self.drift_detected = self.upper > self.threshold or self.lower > self.threshold
        if self.drift_detected:
            self.direction = 1 if self.upper > self.threshold else -1
            self.upper = self.lower = 0.0
