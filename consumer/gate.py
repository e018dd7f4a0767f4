"""Keeps retraining from storming: a per-tenant cooldown and one request in flight.

Time here is event time (the `ts` of the triggering event), so a replay after a restart
reaches the same decisions as the first pass did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class RequestGate:
    cooldown_s: float
    request_timeout_s: float
    last_request_ts: float | None = None
    in_flight: bool = False
    request_id: str | None = None

    def allows(self, ts: float) -> bool:
        if self.last_request_ts is None:
            return True
        elapsed = ts - self.last_request_ts
        if self.in_flight and elapsed < self.request_timeout_s:
            return False
        return elapsed >= self.cooldown_s

    def allows_many(self, ts: np.ndarray) -> np.ndarray:
        """`allows` for each of many event times at once (the gate as it is now)."""
        if self.last_request_ts is None:
            return np.ones(len(ts), dtype=bool)
        elapsed = ts - self.last_request_ts
        allowed = elapsed >= self.cooldown_s
        if self.in_flight:
            allowed &= elapsed >= self.request_timeout_s
        return allowed

    def record_request(self, ts: float, request_id: str | None = None) -> None:
        self.last_request_ts = ts
        self.in_flight = True
        self.request_id = request_id

    def resolve(self) -> None:
        """The request was answered (a model was published or it failed for good)."""
        self.in_flight = False
