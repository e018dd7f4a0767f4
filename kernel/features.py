"""The one feature pipeline: what a model sees at interval t, for training and serving alike.

The retrainer builds its training rows with :meth:`FeatureSpec.transform` over a
tenant's replayed events, and the consumer builds each live forecast's input with the
same method over the last :attr:`FeatureSpec.history` events of the tenant's window,
so the two cannot drift apart. A row uses only what is known when t's event arrives:
its metrics, earlier events, and the breach flags up to and including t.

Columns, in order (:meth:`FeatureSpec.names`):

* the six metrics at t (latencies and rps as ``log1p``: heavy tails, positive);
* the same six at t-1 ... t-``lags``;
* the size of each metric's change since t-1 (``|x(t) - x(t-1)|``, log1p where
  logged): a step in the telemetry says a regime just began;
* ``breach`` (t's own flag: persistence, the strongest single predictor),
  ``breach_rate_{w}`` over the last ``w`` events for each of ``breach_windows``, and
  ``breach_run``: how long the current state (breach or not) has lasted, as a fraction
  of :attr:`FeatureSpec.history` (episodes end with a hazard that grows with age);
* the rolling mean and standard deviation over ``rolling_window`` events of the
  p95 and p99 latency (``log1p``) and the error rate;
* time of day and day of week (UTC) as sine/cosine pairs: load is diurnal. Each pair
  is in the spec only when the training data covers seven periods of it
  (:meth:`FeatureSpec.supported_by`): a model trained on one day has never seen the
  hours its holdout (and tomorrow) brings, and extrapolates on them.

Windows count events, not seconds. The first events of a stream have shorter
windows (lags repeat the first event); training drops them (:attr:`history`), and a
live forecast with that much history computes exactly what training computed.

>>> spec = FeatureSpec()
>>> len(spec.names()), spec.history
(32, 24)
>>> spec.supported_by(86_400.0).names()[-1]  # one day of data: no time features
'error_rate_std_12'
>>> spec.supported_by(8 * 86_400.0).names()[-2:]  # eight days: time of day, not week
('tod_sin', 'tod_cos')
>>> ts = np.arange(30) * 60.0
>>> metrics = np.ones((30, 6), np.float32)
>>> labels = np.arange(30) % 3 == 0
>>> X = spec.transform(ts, metrics, labels)
>>> X.shape
(30, 32)
>>> online = spec.transform(ts[-spec.history :], metrics[-spec.history :], labels[-spec.history :])
>>> bool(np.array_equal(online[-1], X[-1]))
True
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.telemetry import FEATURES

#: The pipeline's version; a card naming another version cannot be served.
FEATURE_VERSION: Final = 1
#: Metrics taken as log1p (heavy-tailed, non-negative).
LOG_METRICS: Final = frozenset({"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "rps"})
#: Metrics whose rolling mean and std are features.
ROLLING_METRICS: Final = ("latency_p95_ms", "latency_p99_ms", "error_rate")
_DAY_S: Final = 86_400.0
_WEEK_S: Final = 7 * _DAY_S
#: 1970-01-01 was a Thursday: shift so that a week starts on Monday 00:00 UTC.
_EPOCH_WEEKDAY_S: Final = 3 * _DAY_S
_MAX_WINDOW: Final = 1_440
#: Periods of time the training data must cover for a periodic feature to be learnable:
#: with fewer, networks fitted the hours of the few days seen and lost to persistence
#: on the next (bench/bench_quality.py, the demo's five days of ten-minute telemetry).
MIN_PERIODS: Final = 7


class FeatureSpec(BaseModel):
    """What the pipeline computes; recorded in every model card, checked by the consumer.

    Raises pydantic's ``ValidationError`` (a ``ValueError``) for a version this code
    does not know or parameters out of range, which is how a card with features the
    consumer cannot compute is refused.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    version: Literal[1] = FEATURE_VERSION
    lags: int = Field(default=1, ge=0, le=8)
    breach_windows: tuple[int, ...] = (6, 24)
    rolling_window: int = Field(default=12, ge=2, le=_MAX_WINDOW)
    time_of_day: bool = True
    day_of_week: bool = True

    @field_validator("breach_windows")
    @classmethod
    def _windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) > 4 or len(set(value)) != len(value):
            raise ValueError("breach_windows: at most 4 distinct window lengths")
        if any(not 2 <= w <= _MAX_WINDOW for w in value):
            raise ValueError(f"breach_windows must each be in [2, {_MAX_WINDOW}]")
        return value

    @property
    def history(self) -> int:
        """Events (the current one included) a row needs for full-length windows."""
        return max(self.lags + 1, self.rolling_window, *self.breach_windows, 1)

    def supported_by(self, span_s: float) -> FeatureSpec:
        """This spec less the periodic features that `span_s` of data cannot teach.

        A periodic pair stays only if the data spans `MIN_PERIODS` of its periods.
        """
        return self.model_copy(
            update={
                "time_of_day": self.time_of_day and span_s >= MIN_PERIODS * _DAY_S,
                "day_of_week": self.day_of_week and span_s >= MIN_PERIODS * _WEEK_S,
            }
        )

    def names(self) -> tuple[str, ...]:
        base = [f"log1p_{m}" if m in LOG_METRICS else m for m in FEATURES]
        names = list(base)
        for lag in range(1, self.lags + 1):
            names += [f"{name}_lag{lag}" for name in base]
        names += [f"{name}_abs_change" for name in base]
        names.append("breach")
        names += [f"breach_rate_{w}" for w in self.breach_windows]
        names.append("breach_run")
        for metric in ROLLING_METRICS:
            name = f"log1p_{metric}" if metric in LOG_METRICS else metric
            names += [f"{name}_mean_{self.rolling_window}", f"{name}_std_{self.rolling_window}"]
        if self.time_of_day:
            names += ["tod_sin", "tod_cos"]
        if self.day_of_week:
            names += ["dow_sin", "dow_cos"]
        return tuple(names)

    def transform(
        self, ts: ArrayLike, metrics: ArrayLike, labels: ArrayLike
    ) -> NDArray[np.float32]:
        """One row per event, in the given (time) order; row i reads events <= i only.

        `ts` is epoch seconds (n,), `metrics` the raw `FEATURES` columns (n, 6),
        `labels` the breach flags (n,). Raises ``ValueError`` on mismatched shapes.
        """
        ts_arr = np.asarray(ts, dtype=np.float64)
        raw = np.asarray(metrics, dtype=np.float64)
        flags = np.asarray(labels, dtype=np.float64)
        n = ts_arr.shape[0]
        if raw.shape != (n, len(FEATURES)) or flags.shape != (n,) or ts_arr.ndim != 1:
            raise ValueError(
                f"expected ts (n,), metrics (n, {len(FEATURES)}), labels (n,); got "
                f"{ts_arr.shape}, {raw.shape}, {flags.shape}"
            )
        base = raw.copy()
        for j, name in enumerate(FEATURES):
            if name in LOG_METRICS:
                base[:, j] = np.log1p(np.maximum(base[:, j], 0.0))
        columns: list[NDArray[np.float64]] = [base]
        for lag in range(1, self.lags + 1):
            columns.append(_shift(base, lag))
        columns.append(np.abs(base - _shift(base, 1)))
        columns.append(flags[:, None])
        columns += [_rolling_mean(flags, w)[:, None] for w in self.breach_windows]
        columns.append((_run_length(flags, self.history) / self.history)[:, None])
        for metric in ROLLING_METRICS:
            values = base[:, FEATURES.index(metric)]
            mean = _rolling_mean(values, self.rolling_window)
            mean_sq = _rolling_mean(values * values, self.rolling_window)
            std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
            columns += [mean[:, None], std[:, None]]
        if self.time_of_day:
            day = 2 * np.pi * np.mod(ts_arr, _DAY_S) / _DAY_S
            columns.append(np.stack([np.sin(day), np.cos(day)], axis=1))
        if self.day_of_week:
            week = 2 * np.pi * np.mod(ts_arr - _EPOCH_WEEKDAY_S, _WEEK_S) / _WEEK_S
            columns.append(np.stack([np.sin(week), np.cos(week)], axis=1))
        return np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float32)


def _shift(values: NDArray[np.float64], lag: int) -> NDArray[np.float64]:
    """Rows `lag` earlier; the first rows repeat row 0 (no earlier event is known)."""
    if len(values) == 0:
        return values.copy()
    index = np.maximum(np.arange(len(values)) - lag, 0)
    return values[index]


def _run_length(flags: NDArray[np.float64], cap: int) -> NDArray[np.float64]:
    """Events the current state has lasted at each row (this one included), at most `cap`.

    The first row counts as a change: a run is never longer than the rows seen, and with
    `cap` no more than the rows a live forecast sees, online and offline agree.
    """
    n = len(flags)
    index = np.arange(n)
    change = np.ones(n, dtype=bool)
    change[1:] = flags[1:] != flags[:-1]
    start = np.maximum.accumulate(np.where(change, index, 0))
    run: NDArray[np.float64] = np.minimum(index - start + 1, cap).astype(np.float64)
    return run


def _rolling_mean(values: NDArray[np.float64], window: int) -> NDArray[np.float64]:
    """Mean of the last `window` values at each row (fewer at the start).

    Each window is summed on its own (not by differences of a cumulative sum), so a
    row's value depends only on its window's values: online and offline agree exactly.
    """
    n = len(values)
    if n == 0:
        return values.copy()
    padded = np.concatenate((np.zeros(window - 1), values))
    sums = sliding_window_view(padded, window).sum(axis=1)
    counts = np.minimum(np.arange(1, n + 1), window)
    result: NDArray[np.float64] = sums / counts
    return result
