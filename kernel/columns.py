"""Telemetry events as the numpy columns every window, dataset and model reads.

The one place events become arrays: epoch-second timestamps (float64), the metrics in
``schemas.FEATURES`` order (float32, one row per event) and the breach labels (bool),
so that the consumer's windows, the retrainer's replay and the demo's scoring build
the same numbers from the same events.

>>> from datetime import UTC, datetime
>>> event = TelemetryEvent.model_validate({
...     "tenant": "acme", "ts": "2026-01-05T10:00:00Z", "service": "api",
...     "latency_p50_ms": 10.0, "latency_p95_ms": 20.0, "latency_p99_ms": 30.0,
...     "error_rate": 0.01, "cpu_util": 0.5, "rps": 100.0, "sla_breached": True,
... }, strict=False)
>>> cols = telemetry_columns([event, event])
>>> cols.ts.dtype, cols.features.shape, cols.features.dtype, cols.labels.tolist()
(dtype('float64'), (2, 6), dtype('float32'), [True, True])
>>> telemetry_columns([]).features.shape
(0, 6)
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from schemas import FEATURES, TelemetryEvent

__all__ = ["TelemetryColumns", "telemetry_columns"]

#: One event's values in column order, read from its fields without pydantic's wrapper.
_ROW = operator.itemgetter("ts", *FEATURES, "sla_breached")


@dataclass(frozen=True, eq=False)
class TelemetryColumns:
    """Events as columns, in the order given: row ``i`` of each is event ``i``."""

    #: Event time, epoch seconds, float64 (n,).
    ts: NDArray[np.float64]
    #: The metrics in ``schemas.FEATURES`` order, float32 (n, len(FEATURES)), C-ordered.
    features: NDArray[np.float32]
    #: Whether each interval breached its SLA, bool (n,).
    labels: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def telemetry_columns(events: Iterable[TelemetryEvent]) -> TelemetryColumns:
    """The columns of `events` (validated events: ``parse_telemetry``'s output).

    Consumes `events` once, keeping only a tuple per event (not the event), so a
    generator of a long replay never holds its events in memory at once.
    """
    rows = [_ROW(event.__dict__) for event in events]
    n = len(rows)
    if not n:
        return TelemetryColumns(
            np.empty(0, np.float64),
            np.empty((0, len(FEATURES)), np.float32),
            np.empty(0, np.bool_),
        )
    stamps, *values = zip(*rows, strict=True)
    ts = np.fromiter((stamp.timestamp() for stamp in stamps), np.float64, n)
    features = np.ascontiguousarray(np.array(values[:-1], dtype=np.float32).T)
    labels = np.array(values[-1], dtype=np.bool_)
    return TelemetryColumns(ts, features, labels)
