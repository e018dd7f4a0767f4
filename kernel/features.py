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
* version 2: ``quiet`` (no breach in the last 12 events: a breach now would be a new
  incident), and for every metric its rolling mean and standard deviation over
  ``rolling_window`` events, the least-squares slope over each of ``trend_windows``
  and where that line reaches ``trend_ahead`` events on (``predict_linear``), and its
  distance from the rolling median over ``level_window`` events (a level shift);
  once the data spans days, each metric's highest value one day before the next
  ``trend_ahead`` events (``{metric}_day_before``: daily cycles repeat);
  version 1 had rolling statistics of the p95 and p99 latency and the error rate only;
* time of day and day of week (UTC) as sine/cosine pairs: load is diurnal. Each pair
  is in the spec only when the training data covers seven periods of it
  (:meth:`FeatureSpec.supported_by`): a model trained on one day has never seen the
  hours its later folds (and tomorrow) bring, and extrapolates on them.

Windows count events, not seconds. The first events of a stream have shorter
windows (lags repeat the first event); training drops them (:attr:`history`), and a
live forecast with that much history computes exactly what training computed.

>>> spec = FeatureSpec()
>>> len(spec.names()), spec.history
(88, 72)
>>> spec.supported_by(86_400.0).names()[-1]  # one day of data: no time features
'log1p_rps_from_median_72'
>>> spec.supported_by(8 * 86_400.0, 300.0).names()[-3:]  # eight days of 5-minute data
('log1p_rps_day_before', 'tod_sin', 'tod_cos')
>>> ts = np.arange(200) * 60.0
>>> metrics = np.random.default_rng(0).random((200, 6)).astype(np.float32)
>>> labels = np.arange(200) % 3 == 0
>>> X = spec.transform(ts, metrics, labels)
>>> X.shape
(200, 88)
>>> online = spec.transform(ts[-spec.history :], metrics[-spec.history :], labels[-spec.history :])
>>> bool(np.array_equal(online[-1], X[-1]))
True
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import ndimage

from schemas.telemetry import FEATURES

#: The pipeline's version; a card naming another version cannot be served.
FEATURE_VERSION: Final = 2
#: Metrics taken as log1p (heavy-tailed, non-negative).
LOG_METRICS: Final = frozenset({"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "rps"})
#: Metrics whose rolling mean and std are features.
ROLLING_METRICS: Final = ("latency_p95_ms", "latency_p99_ms", "error_rate")
_DAY_S: Final = 86_400.0
_WEEK_S: Final = 7 * _DAY_S
#: 1970-01-01 was a Thursday: shift so that a week starts on Monday 00:00 UTC.
_EPOCH_WEEKDAY_S: Final = 3 * _DAY_S
_MAX_WINDOW: Final = 1_440
#: The longest seasonal lag (events in a day) a live forecast may read: a day at
#: intervals of 90 s or more fits the consumer's default window with room to spare.
_MAX_SEASON: Final = 1_000
#: Days the data must span before the seasonal lag is a feature: a day of history for
#: the first row, and a day of rows to learn from.
MIN_SEASON_DAYS: Final = 2
#: Intervals without a breach that make a tenant "quiet" (`kernel.early_warning.QUIET`).
QUIET_EVENTS: Final = 12
#: Periods of time the training data must cover for a periodic feature to be learnable:
#: with fewer, networks fitted the hours of the few days seen and lost to persistence
#: on the next (bench/bench_quality.py, the demo's five days of ten-minute telemetry).
MIN_PERIODS: Final = 7


class FeatureSpec(BaseModel):
    """What the pipeline computes; recorded in every model card, checked by the consumer.

    Version 2 (the default) adds the context early warning needs: more lags, 24-event
    rolling statistics of every metric, breach rates up to 72 events, each metric's
    least-squares trend and its projection `trend_ahead` events on (what
    ``predict_linear`` sees), its distance from a long rolling median (level shifts),
    how quiet the tenant has been, and once the data holds days, each metric one day
    before the target (`season_events`). Version 1 cards are still served as they were
    trained (their fields keep version 1's meaning).

    Raises pydantic's ``ValidationError`` (a ``ValueError``) for a version this code
    does not know or parameters out of range, which is how a card with features the
    consumer cannot compute is refused.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    version: Literal[1, 2] = FEATURE_VERSION
    lags: int = Field(default=4, ge=0, le=8)
    breach_windows: tuple[int, ...] = (6, 24, 72)
    rolling_window: int = Field(default=24, ge=2, le=_MAX_WINDOW)
    time_of_day: bool = True
    day_of_week: bool = True
    #: Version 2: least-squares windows (events) of each metric's trend, and how far
    #: ahead (events) its projection reads.
    trend_windows: tuple[int, ...] = (6, 24)
    trend_ahead: int = Field(default=6, ge=1, le=_MAX_WINDOW)
    #: Version 2: the rolling median each metric's level is measured from (events).
    level_window: int = Field(default=72, ge=2, le=_MAX_WINDOW)
    #: Version 2: events in a day (0: no seasonal lag). Set from the data's interval by
    #: `supported_by` once the data spans `MIN_SEASON_DAYS` days.
    season_events: int = Field(default=0, ge=0, le=_MAX_SEASON)

    @field_validator("breach_windows", "trend_windows")
    @classmethod
    def _windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) > 4 or len(set(value)) != len(value):
            raise ValueError("at most 4 distinct window lengths")
        if any(not 2 <= w <= _MAX_WINDOW for w in value):
            raise ValueError(f"windows must each be in [2, {_MAX_WINDOW}]")
        return value

    @model_validator(mode="after")
    def _season_in_the_past(self) -> FeatureSpec:
        if self.season_events and self.season_events <= self.trend_ahead:
            raise ValueError(
                f"season_events ({self.season_events}) must exceed trend_ahead "
                f"({self.trend_ahead}): the day-before values would read the future"
            )
        return self

    @property
    def history(self) -> int:
        """Events (the current one included) a row needs for full-length windows."""
        needed = [self.lags + 1, self.rolling_window, *self.breach_windows, 1]
        if self.version >= 2:
            needed += [*self.trend_windows, self.level_window, QUIET_EVENTS]
            if self.season_events:
                needed.append(self.season_events)
        return max(needed)

    def supported_by(self, span_s: float, interval_s: float | None = None) -> FeatureSpec:
        """This spec less the periodic features that `span_s` of data cannot teach.

        A periodic pair stays only if the data spans `MIN_PERIODS` of its periods. With
        the data's typical `interval_s`, version 2 adds the seasonal lag (a day in
        events) when the data spans `MIN_SEASON_DAYS` days and a day fits the history
        a live forecast may read.
        """
        update: dict[str, object] = {
            "time_of_day": self.time_of_day and span_s >= MIN_PERIODS * _DAY_S,
            "day_of_week": self.day_of_week and span_s >= MIN_PERIODS * _WEEK_S,
        }
        if self.version >= 2 and interval_s is not None and interval_s > 0:
            day = int(round(_DAY_S / interval_s))
            seasonal = span_s >= MIN_SEASON_DAYS * _DAY_S and 2 <= day <= _MAX_SEASON
            update["season_events"] = day if seasonal else 0
        return self.model_copy(update=update)

    def names(self) -> tuple[str, ...]:
        base = [f"log1p_{m}" if m in LOG_METRICS else m for m in FEATURES]
        names = list(base)
        for lag in range(1, self.lags + 1):
            names += [f"{name}_lag{lag}" for name in base]
        names += [f"{name}_abs_change" for name in base]
        names.append("breach")
        names += [f"breach_rate_{w}" for w in self.breach_windows]
        names.append("breach_run")
        if self.version == 1:
            for metric in ROLLING_METRICS:
                name = f"log1p_{metric}" if metric in LOG_METRICS else metric
                w = self.rolling_window
                names += [f"{name}_mean_{w}", f"{name}_std_{w}"]
        else:
            names.append("quiet")
            for name in base:
                w = self.rolling_window
                names += [f"{name}_mean_{w}", f"{name}_std_{w}"]
                for k in self.trend_windows:
                    names += [f"{name}_slope_{k}", f"{name}_projected_{k}_{self.trend_ahead}"]
                names.append(f"{name}_from_median_{self.level_window}")
            if self.season_events:
                names += [f"{name}_day_before" for name in base]
        if self.time_of_day:
            names += ["tod_sin", "tod_cos"]
        if self.day_of_week:
            names += ["dow_sin", "dow_cos"]
        return tuple(names)

    def transform(
        self,
        ts: ArrayLike,
        metrics: ArrayLike,
        labels: ArrayLike,
        *,
        rows: NDArray[np.int64] | None = None,
        starts: NDArray[np.int64] | None = None,
    ) -> NDArray[np.float32]:
        """One row per event, in the given (time) order; row i reads events <= i only.

        `ts` is epoch seconds (n,), `metrics` the raw `FEATURES` columns (n, 6),
        `labels` the breach flags (n,). With `rows` (event indices), only those rows,
        in that order: a live forecast needs its block's rows, not its history's, and
        the windowed features cost per row. With `starts` (n,), the index of each
        event's first event of its own series: several tenants' events lie end to end,
        and each row reads only its own series, as if transformed alone (the consumer
        transforms a batch's tenants in one call). Raises ``ValueError`` on mismatched
        shapes.
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
        at = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(at) and (int(at.min()) < 0 or int(at.max()) >= n):
            raise ValueError(f"rows must be event indices in [0, {n})")
        if starts is None:
            series = np.zeros(n, dtype=np.int64)
        else:
            series = np.asarray(starts, dtype=np.int64)
            if series.shape != (n,) or (n and ((series < 0) | (series > np.arange(n))).any()):
                raise ValueError("starts must give each event an index at or before it")
        first = series[at]
        base = raw.copy()
        for j, name in enumerate(FEATURES):
            if name in LOG_METRICS:
                base[:, j] = np.log1p(np.maximum(base[:, j], 0.0))
        columns: list[NDArray[np.float64]] = [base[at]]
        for lag in range(1, self.lags + 1):
            columns.append(base[_earlier(at, lag, first)])
        columns.append(np.abs(base[at] - base[_earlier(at, 1, first)]))
        columns.append(flags[at, None])
        columns += [_rolling_mean(flags, w, at, first)[:, None] for w in self.breach_windows]
        run = _run_length(flags, self.history, series)[at]
        columns.append((run / self.history)[:, None])
        if self.version == 1:
            for metric in ROLLING_METRICS:
                values = base[:, FEATURES.index(metric)]
                columns += _mean_std(values, self.rolling_window, at, first)
        else:
            columns.append(_quiet(flags, at, first)[:, None])
            for j in range(len(FEATURES)):
                columns += self._context(base[:, j], at, first)
            if self.season_events:
                day_before = _day_before(base, self.season_events, self.trend_ahead, at, first)
                columns.append(day_before)
        if self.time_of_day:
            day = 2 * np.pi * np.mod(ts_arr[at], _DAY_S) / _DAY_S
            columns.append(np.stack([np.sin(day), np.cos(day)], axis=1))
        if self.day_of_week:
            week = 2 * np.pi * np.mod(ts_arr[at] - _EPOCH_WEEKDAY_S, _WEEK_S) / _WEEK_S
            columns.append(np.stack([np.sin(week), np.cos(week)], axis=1))
        return np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float32)

    def _context(
        self, values: NDArray[np.float64], at: NDArray[np.int64], first: NDArray[np.int64]
    ) -> list[NDArray[np.float64]]:
        """Version 2's columns of one metric: spread, trends, distance from its level."""
        out = _mean_std(values, self.rolling_window, at, first)
        for k in self.trend_windows:
            level, slope = _trend(values, k, at, first)
            out += [slope[:, None], (level + slope * ((k - 1) / 2.0 + self.trend_ahead))[:, None]]
        median = _rolling_median(values, self.level_window, at, first)
        out.append((values[at] - median)[:, None])
        return out


def _earlier(at: NDArray[np.int64], lag: int, first: NDArray[np.int64]) -> NDArray[np.int64]:
    """The rows `lag` before rows `at`; a series' first rows repeat its first (none earlier)."""
    out: NDArray[np.int64] = np.maximum(at - lag, first)
    return out


def _young(at: NDArray[np.int64], first: NDArray[np.int64], window: int) -> NDArray[np.int64]:
    """Which of rows `at` have a `window` reaching back before their own series' start
    (`first`) into another series: only those of a series that does not start the array."""
    young: NDArray[np.int64] = np.flatnonzero((first > 0) & (at - first < window - 1))
    return young


def _cut(
    view: NDArray[np.float64],
    at: NDArray[np.int64],
    first: NDArray[np.int64],
    values: NDArray[np.float64] | None = None,
) -> None:
    """Pad, in place, what each row's window `view[r]` (ending at `at[r]`) holds from
    before the row's series start `first[r]`, as that series alone is padded: with its
    first value (`values`), or with zeros.
    """
    window = view.shape[1]
    young = _young(at, first, window)
    if not len(young):
        return
    before = (at[young, None] - (window - 1) + np.arange(window)) < first[young, None]
    padding = 0.0 if values is None else values[first[young]][:, None]
    view[young] = np.where(before, padding, view[young])


def _run_length(
    flags: NDArray[np.float64], cap: int, series: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Events the current state has lasted at each row (this one included), at most `cap`.

    A series' first row counts as a change: a run is never longer than the rows seen,
    and with `cap` no more than the rows a live forecast sees, online and offline agree.
    """
    n = len(flags)
    index = np.arange(n)
    change = series == index
    change[1:] |= flags[1:] != flags[:-1]
    start = np.maximum.accumulate(np.where(change, index, 0))
    run: NDArray[np.float64] = np.minimum(index - start + 1, cap).astype(np.float64)
    return run


def _rolling_mean(
    values: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Mean of the last `window` values at each row of `at` (fewer at the start).

    Each window is summed on its own (not by differences of a cumulative sum), so a
    row's value depends only on its window's values: online and offline agree exactly.
    """
    if len(at) == 0:
        return np.zeros(0)
    padded = np.concatenate((np.zeros(window - 1), values))
    view = sliding_window_view(padded, window)[at]
    _cut(view, at, first)
    sums = view.sum(axis=1)
    counts = np.minimum(at - first + 1, window)
    result: NDArray[np.float64] = sums / counts
    return result


def _mean_std(
    values: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> list[NDArray[np.float64]]:
    mean = _rolling_mean(values, window, at, first)
    mean_sq = _rolling_mean(values * values, window, at, first)
    std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    return [mean[:, None], std[:, None]]


def _windows(
    values: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> NDArray[np.float64]:
    """The last `window` values at each row of `at`; a series' first rows repeat its first."""
    pad = np.full(window - 1, values[0] if len(values) else 0.0)
    out: NDArray[np.float64] = sliding_window_view(np.concatenate((pad, values)), window)[at]
    _cut(out, at, first, values)
    return out


def _trend(
    values: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> tuple[NDArray[np.float64], ...]:
    """The least-squares line through the last `window` values at rows `at`: (mean, slope).

    The line's value at the newest row is ``mean + slope * (window - 1) / 2``.
    """
    if len(at) == 0:
        return np.zeros(0), np.zeros(0)
    view = _windows(values, window, at, first)
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    # Row-wise sums, not a matrix product: a row's value then depends on its window
    # alone (BLAS may block rows differently by count), so online and offline agree.
    slope: NDArray[np.float64] = (view * x).sum(axis=1) / float(x @ x)
    mean: NDArray[np.float64] = view.mean(axis=1)
    return mean, slope


def _rolling_median(
    values: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> NDArray[np.float64]:
    """The median of the last `window` values at rows `at` (the first rows repeat the first).

    What ``np.median`` gives on each row's window, bit for bit (for an even window the
    mean of the two middle values, as numpy takes it), from two running rank filters:
    sorting every row's window cost more than the rest of the pipeline together. Rows
    whose window reaches back past their own series' start (`first`) sort theirs.
    """
    if len(at) == 0:
        return np.zeros(0)
    padded = np.concatenate((np.full(window - 1, values[0]), values))
    # A rank filter's window is centred at `size // 2 + origin`; this origin makes the
    # window of output j end at j, so row i's window is output `i + window - 1`.
    origin = (window - 1) // 2
    rows = at + (window - 1)
    high = ndimage.rank_filter(padded, window // 2, size=window, origin=origin)[rows]
    if window % 2:
        median: NDArray[np.float64] = high
    else:
        low = ndimage.rank_filter(padded, window // 2 - 1, size=window, origin=origin)[rows]
        median = (low + high) / 2.0
    young = _young(at, first, window)
    if len(young):
        cut = _windows(values, window, at[young], first[young])
        median[young] = np.median(cut, axis=1)
    return median


def _quiet(
    flags: NDArray[np.float64], at: NDArray[np.int64], first: NDArray[np.int64]
) -> NDArray[np.float64]:
    """1 where no breach was seen in the last `QUIET_EVENTS` events (this one included)."""
    quiet: NDArray[np.float64] = (_rolling_mean(flags, QUIET_EVENTS, at, first) == 0).astype(
        np.float64
    )
    return quiet


def _day_before(
    base: NDArray[np.float64],
    day: int,
    ahead: int,
    at: NDArray[np.int64],
    first: NDArray[np.int64],
) -> NDArray[np.float64]:
    """Each metric's highest value one day before the next `ahead` events, at rows `at`.

    Row t reads rows ``t + 1 - day ... t + ahead - day`` (clipped to its series' rows),
    all in the past while `ahead` < `day`.
    """
    n = len(base)
    out = np.empty((len(at), base.shape[1]))
    if n == 0 or len(at) == 0:
        return out
    for j in range(base.shape[1]):
        column = base[:, j]
        best = np.full(len(at), -np.inf)
        for step in range(1, ahead + 1):
            best = np.maximum(best, column[np.clip(at + step - day, first, n - 1)])
        out[:, j] = best
    return out
