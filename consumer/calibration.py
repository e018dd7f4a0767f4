"""Has the breach rate moved away from what the forecaster's record says it should be?

A forecaster can lose its edge without its log loss rising. On River's Agrawal stream
(each sample held for several intervals) the forecast of "a breach within the next 6
intervals" lives on persistence, and when the classification function switches, the
breach rate moves from 0.65 to 0.8: the old forecasts are now too low, yet the loss
falls (outcomes became more certain), so a loss monitor never fires. What changed is
calibration: outcomes no longer come at the rate the forecasts' out-of-fold record
says they do.

`CalibrationWatch` is the risk-adjusted Bernoulli CUSUM (Steiner, Cook, Farewell and
Treasure, Biostatistics 2000), the standard monitor of a risk model's outcomes: for
each outcome y of a forecast whose record says breaches follow at rate f, the
log-likelihood ratio of the odds having moved by `ODDS_RATIO` (up, and in a second
sum down) against not, `y log R - log(1 - f + R f)`, is summed and floored at 0; a
sum past `threshold` is an alarm. Two guards make it quiet on stable tenants:

- **Relative to go-live.** The record comes from the training window's folds, which
  may have seen other hours than the live days; the first `warmup` scored forecasts
  (every one of them) measure that offset (in log odds) and the watch then looks for
  changes beyond it.
  A model that is wrong from its first forecast is the loss monitor's to catch.
- **Where the change began.** An alarm also says how many outcomes before it the
  alarming sum last stood at 0 (`change_ago`, the CUSUM's change-point estimate), so
  the wait before the retrain (`consumer.triggers.settled`) counts from there.
- **Every `every`-th outcome.** "Within the horizon" outcomes of consecutive forecasts
  share all but one interval; the watch sums outcomes `every` (the horizon) apart,
  which look at disjoint intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Final

import numpy as np

#: The change in the odds of a breach the watch is tuned to see (and 1 / it).
ODDS_RATIO: Final = 2.0
#: A go-live offset within this many standard errors of 0 is noise: the record holds.
SIGNIFICANT: Final = 2.0
#: The go-live offset is clipped to this many log odds.
_MAX_OFFSET: Final = 3.0
_EPS: Final = 1e-3


def _logit(p: float) -> float:
    q = min(max(p, _EPS), 1.0 - _EPS)
    return math.log(q / (1.0 - q))


@dataclass(slots=True)
class CalibrationWatch:
    """Two Bernoulli CUSUMs over (outcome, expected rate) pairs; `threshold` > 0.

    `first(outcome, rate)` takes each scored forecast's outcome (0/1) and the rate its
    record expects, in event order, up to the first alarm. Holds no state beyond the
    two sums, the warmup tallies and a counter, so any split of the stream into blocks
    gives the same alarms. `warmup` 0: the record is trusted as it is at go-live.
    """

    threshold: float
    warmup: int
    every: int = 1
    _seen: int = 0
    _warm_y: float = 0.0
    _warm_f: float = 0.0
    _warm_n: int = 0
    offset: float | None = None
    #: +1 when the last alarm was more breaches than expected, -1 fewer, 0 before any.
    direction: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    #: Each sum's last outcome position at 0, and at the last alarm how many outcomes
    #: before it the alarming sum left 0 (the change point's estimate).
    zero_at: list[int] = field(default_factory=lambda: [0, 0])
    change_ago: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be > 0, got {self.threshold!r}")
        if self.warmup < 0 or self.every < 1:
            raise ValueError(f"warmup must be >= 0 and every >= 1, got {self}")
        if self.warmup == 0:
            self.offset = 0.0

    def copy(self) -> CalibrationWatch:
        """An independent copy (each block tries one): field by field, without
        `dataclasses.replace`'s checks, which cost 25 ms a batch of 1,000 tenants."""
        other = object.__new__(CalibrationWatch)
        for name in _FIELDS:
            setattr(other, name, getattr(self, name))
        other.sums = list(self.sums)
        other.zero_at = list(self.zero_at)
        return other

    def reset(self) -> None:
        """Forget the sums (after an alarm), keeping the go-live offset."""
        self.sums = [0.0, 0.0]

    def first(self, outcome: np.ndarray, rate: np.ndarray) -> int | None:
        """Consume outcomes up to the first alarm (its position, the sums reset), or all."""
        n = len(outcome)
        begin = 0
        if self.offset is None:  # the warmup measures the offset on every outcome
            begin = min(n, self.warmup - self._warm_n)
            self._warm(outcome[:begin], rate[:begin])
        positions = begin + np.flatnonzero(
            (self._seen + begin + np.arange(n - begin)) % self.every == 0
        )
        log_up = math.log(ODDS_RATIO)
        offset = self.offset or 0.0
        for i, y, f in zip(
            positions.tolist(),
            outcome[positions].tolist(),
            rate[positions].tolist(),
            strict=True,
        ):
            expected = 1.0 / (1.0 + math.exp(-(_logit(f) + offset)))
            for side, step in enumerate((log_up, -log_up)):
                change = y * step - math.log(1.0 - expected + expected * math.exp(step))
                self.sums[side] = max(0.0, self.sums[side] + change)
                if self.sums[side] == 0.0:
                    self.zero_at[side] = self._seen + i
            if max(self.sums) > self.threshold:
                self.direction = 1 if self.sums[0] > self.threshold else -1
                self.change_ago = self._seen + i - self.zero_at[0 if self.direction > 0 else 1]
                self._seen += i + 1
                self.reset()
                self.zero_at = [self._seen - 1, self._seen - 1]
                return i
        self._seen += n
        return None

    def _warm(self, outcome: np.ndarray, rate: np.ndarray) -> None:
        self._warm_y += float(outcome.sum())
        self._warm_f += float(rate.sum())
        self._warm_n += len(outcome)
        if self._warm_n >= self.warmup:
            seen = min(max(self._warm_y / self._warm_n, _EPS), 1.0 - _EPS)
            offset = _logit(seen) - _logit(self._warm_f / self._warm_n)
            # Outcomes `every` apart are about independent: the offset's standard error.
            error = 1.0 / math.sqrt(max(self._warm_n / self.every, 1.0) * seen * (1.0 - seen))
            significant = abs(offset) >= SIGNIFICANT * error
            self.offset = min(max(offset, -_MAX_OFFSET), _MAX_OFFSET) if significant else 0.0

    @property
    def odds_ratio(self) -> float:
        """The go-live offset as an odds ratio (1: the record held at go-live)."""
        return math.exp(self.offset or 0.0)


#: Every field of a `CalibrationWatch` (`CalibrationWatch.copy`).
_FIELDS: Final = tuple(f.name for f in fields(CalibrationWatch))
