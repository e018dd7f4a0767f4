"""Keeps retraining from storming: a per-tenant cooldown and one request in flight.

Two clocks, each for what it measures:

- the cooldown runs on event time (the `ts` of the triggering events), so a replay
  after a restart reaches the same decisions as the first pass did; in the live loop
  (`wall` set: the service's clock is the wall clock) it also runs on the caller's
  clock, for fresh events, so a producer stamping its events 20 minutes apart cannot
  make a tenant ask 20 times as often: at most one request per `cooldown_s` of each
  clock, whatever the stamps say (`slaops backtest` and replays: event time only);
- a request stays in flight until it is answered, or until `request_timeout_s` of the
  caller's wall clock (`now`, injected: the gate reads no clock) has passed since it was
  sent. Event time cannot measure this: a consumer catching up on a backlog covers
  hours of event time in seconds, and would re-ask while the first search still runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class RequestGate:
    """One tenant's gate. `request_timeout_s` 0: no request is ever held in flight."""

    cooldown_s: float
    request_timeout_s: float
    last_request_ts: float | None = None
    in_flight: bool = False
    request_id: str | None = None
    #: The caller's wall clock when the request in flight was sent (None: no clock).
    sent_at: float | None = None
    #: The wall clock of the last request sent live (None: none, or only replayed).
    requested_at: float | None = None

    def busy(self, now: float | None) -> bool:
        """A request is in flight: unanswered, and (with a clock) not yet timed out.

        Without a clock (`now` None, or a request recorded without one) only an answer
        ends it.
        """
        if not self.in_flight or self.request_timeout_s <= 0:
            return False
        if now is None or self.sent_at is None:
            return True
        return now - self.sent_at < self.request_timeout_s

    def cooling(self, now: float | None, wall: bool) -> bool:
        """The wall-clock cooldown holds (live only: `wall`, and a live request before)."""
        if not wall or now is None or self.requested_at is None:
            return False
        return now - self.requested_at < self.cooldown_s

    def allows(self, ts: float, now: float | None = None, *, wall: bool = False) -> bool:
        if self.busy(now) or self.cooling(now, wall):
            return False
        return self.last_request_ts is None or ts - self.last_request_ts >= self.cooldown_s

    def allows_many(
        self, ts: np.ndarray, now: float | None = None, *, wall: np.ndarray | None = None
    ) -> np.ndarray:
        """`allows` for each of many event times at once (the gate as it is now).

        `wall` marks the events the wall-clock cooldown applies to (the fresh ones of
        the live loop); None: none.
        """
        if self.busy(now):
            return np.zeros(len(ts), dtype=bool)
        if self.last_request_ts is None:
            ready = np.ones(len(ts), dtype=bool)
        else:
            ready = np.asarray(ts - self.last_request_ts >= self.cooldown_s)
        if wall is not None and self.cooling(now, True):
            ready = ready & ~wall
        return ready

    def record_request(
        self,
        ts: float,
        request_id: str | None = None,
        now: float | None = None,
        *,
        wall: bool = False,
    ) -> None:
        self.last_request_ts = ts
        self.in_flight = True
        self.request_id = request_id
        self.sent_at = now
        if wall and now is not None:
            self.requested_at = now

    def resolve(self) -> None:
        """The request was answered (a model was published, kept, or it failed for good)."""
        self.in_flight = False
