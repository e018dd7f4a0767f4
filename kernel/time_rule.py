"""The one rule of which event times are believed, on every path that reads telemetry.

A producer sets `ts`, so a producer can lie with it: a stamp in year 2999 moves a
window's time ahead and expires every real event, one in year 0001 turns on the
periodic features from a day of data, either breaks a plot's axis. Each reader (the
consumer, the retrainer's replay, `slaops report`) judges a tenant's events, in arrival
order, with `TimeRule.judge`:

- not later than the reader's clock plus `max_future_s` (`future_ts`);
- not earlier than the window span behind the newest event of the tenant accepted so
  far (`past_ts`): older than that, no window could hold it;
- not earlier than `max_past_s` behind the clock (`past_ts`), where that is set: a
  bound for a tenant's first event, which has no newest event to be judged against
  (off by default: a consumer catching up on a week's backlog must not refuse it).

The consumer dead-letters what the rule refuses; the replay and the report skip it and
count it. Without a clock (`now` None) only the window-span bound applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np

#: `judge`'s codes: believed, stamped too far ahead, stamped too far behind.
ACCEPTED: Final = 0
FUTURE: Final = 1
PAST: Final = 2
#: The dead-letter reason of each refusing code.
REASONS: Final = {FUTURE: "future_ts", PAST: "past_ts"}

_DAY: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class TimeRule:
    """How far from the clock and from a tenant's newest event a stamp may lie."""

    #: Later than the clock by more than this: `future_ts`.
    max_future_s: float = 300.0
    #: Earlier than the tenant's newest accepted event by more than this: `past_ts`.
    span_s: float = 7 * _DAY
    #: Earlier than the clock by more than this: `past_ts` (0, the default: no such
    #: bound; the window-span bound is the one that always holds).
    max_past_s: float = 0.0

    def judge(
        self, ts: np.ndarray, newest: float | None, now: float | None
    ) -> tuple[np.ndarray, float | None]:
        """A code per event of `ts` (one tenant's, in arrival order), and the newest after.

        `newest` is the newest event time of the tenant accepted before these. Events
        are judged in order: an accepted event moves the newest on for the next ones.

        >>> rule = TimeRule(max_future_s=10, span_s=100, max_past_s=1_000)
        >>> codes, newest = rule.judge(np.array([500.0, 2_000, 390, 410, -5e9]), 450.0, 1_000.0)
        >>> codes.tolist(), newest
        ([0, 1, 2, 0, 2], 500.0)
        """
        ts = np.asarray(ts, dtype=np.float64)
        codes = np.zeros(ts.shape[0], dtype=np.int8)
        if ts.shape[0] == 0:
            return codes, newest
        if now is not None:
            codes[ts > now + self.max_future_s] = FUTURE
            if self.max_past_s > 0:
                codes[ts < now - self.max_past_s] = PAST
        candidates = np.where(codes == ACCEPTED, ts, -np.inf)
        # The newest before each event: an event refused as past is older than it, so
        # including it in the running maximum changes nothing; future ones are excluded.
        start = -np.inf if newest is None else newest
        running = np.maximum.accumulate(np.concatenate(([start], candidates)))[:-1]
        codes[(codes == ACCEPTED) & (ts < running - self.span_s)] = PAST
        last = max(float(running[-1]), float(candidates[-1]))
        return codes, (None if last == -np.inf else last)

    def judge_all(self, ts: np.ndarray, now: float | None) -> np.ndarray:
        """`judge` for a tenant's events read at once (a replay, a report), newest first.

        The newest event is the newest the clock allows among them all, as the window
        they came from saw it: an event stamped 0001 at the start of a replay is as far
        behind it as one at the end.

        >>> TimeRule(max_future_s=10, span_s=100).judge_all(np.array([-5e9, 400, 500, 2e3]), 1e3)
        array([2, 0, 0, 1], dtype=int8)
        """
        ts = np.asarray(ts, dtype=np.float64)
        believable = ts if now is None else ts[ts <= now + self.max_future_s]
        newest = float(believable.max()) if believable.shape[0] else None
        codes, _newest = self.judge(ts, newest, now)
        return codes

    def explain(self, code: int, ts: float, newest: float | None, now: float | None) -> str:
        """The dead letter's detail for a refused stamp: what it was judged against."""
        if code == FUTURE:
            return (
                f"ts {_iso(ts)} is more than max_future_s={self.max_future_s:g} after the "
                f"consumer's clock {_iso(now)}"
            )
        if newest is not None and ts < newest - self.span_s:
            return (
                f"ts {_iso(ts)} is more than the window span ({self.span_s:g} s) before the "
                f"tenant's newest event {_iso(newest)}"
            )
        return (
            f"ts {_iso(ts)} is more than max_past_s={self.max_past_s:g} before the "
            f"consumer's clock {_iso(now)}"
        )


def _iso(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "(none)"
    try:
        return datetime.fromtimestamp(epoch_s, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{epoch_s:.0f} (epoch seconds)"
