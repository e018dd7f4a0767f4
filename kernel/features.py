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
        # A row of zeros after the events: the padding of rolling windows (`_Windowed`).
        padded = np.zeros((n + 1, len(FEATURES)))
        base = padded[:n]
        base[...] = raw
        for j, name in enumerate(FEATURES):
            if name in LOG_METRICS:
                base[:, j] = np.log1p(np.maximum(base[:, j], 0.0))
        out = np.empty((len(at), len(self.names())), dtype=np.float32)
        if not len(at):
            return out
        windowed = _Windowed(self, len(at))
        # The other columns first, in blocks of adjacent columns (start, values).
        binary = bool(((flags == 0.0) | (flags == 1.0)).all())
        counts_of = _flag_counts(flags) if binary else None
        per_row = [flags[at]]
        per_row += [_flag_mean(flags, w, at, first, counts_of) for w in self.breach_windows]
        per_row.append(_run_length(flags, self.history, series)[at] / self.history)
        if self.version >= 2:
            quiet = _flag_mean(flags, QUIET_EVENTS, at, first, counts_of) == 0
            per_row.append(quiet.astype(np.float64))
        blocks = [(windowed.flags_at, np.stack(per_row, axis=1))]
        col = windowed.stats_at + windowed.per_metric * len(windowed.metrics)
        if self.version >= 2 and self.season_events:
            season = _day_before(base, self.season_events, self.trend_ahead, at, first)
            blocks.append((col, season))
            col += len(FEATURES)
        periodic: list[NDArray[np.float64]] = []
        if self.time_of_day:
            day = 2 * np.pi * np.mod(ts_arr[at], _DAY_S) / _DAY_S
            periodic += [np.sin(day), np.cos(day)]
        if self.day_of_week:
            week = 2 * np.pi * np.mod(ts_arr[at] - _EPOCH_WEEKDAY_S, _WEEK_S) / _WEEK_S
            periodic += [np.sin(week), np.cos(week)]
        if periodic:
            blocks.append((col, np.stack(periodic, axis=1)))
        median = base[:0]  # version 1 has none
        if self.version >= 2:
            median = _rolling_medians(base, self.level_window, at, first)
        # Then a chunk of rows at a time (every column is row-wise), while in cache.
        for lo in range(0, len(at), windowed.chunk):
            hi = min(lo + windowed.chunk, len(at))
            windowed.write(out[lo:hi], padded, at[lo:hi], first[lo:hi], median, lo)
            for start, values in blocks:
                out[lo:hi, start : start + values.shape[1]] = values[lo:hi]
        return out


#: Rows x window events gathered at once for the windowed columns: their buffers (made
#: once a call: allocating large arrays again and again costs more than the sums) stay
#: in cache.
_CHUNK_WINDOWS: Final = 1 << 15


class _Windowed:
    """The columns read from each row's last events of every metric, a chunk of rows at a
    time: the metrics and lags, their changes, the rolling statistics and (version 2) the
    trends and the distance from the rolling median (computed beforehand).

    Each row's last `span` events of all six metrics are gathered once, as `_earlier`
    gives them (a series' first rows repeat its first event), and every window sum is
    `_pairwise_sum` of them: numpy's own order of summing a row, so each value is what
    summing that row's window on its own (``view.sum(axis=1)``, ``view.mean(axis=1)``)
    gives, bit for bit. The rolling statistics of rows whose window reaches back before
    their series' start are `_rolling_mean`'s: the same sums, of those windows with
    zeros (not the first event) before the start.
    """

    def __init__(self, spec: FeatureSpec, rows: int) -> None:
        self.spec = spec
        self.flags_at = len(FEATURES) * (spec.lags + 2)
        after_run = self.flags_at + len(spec.breach_windows) + 2
        needed = [spec.lags + 1, 2, spec.rolling_window]
        if spec.version == 1:
            self.stats_at = after_run
            self.per_metric = 2
            self.metrics = [FEATURES.index(m) for m in ROLLING_METRICS]
        else:
            self.stats_at = after_run + 1  # after `quiet`
            self.per_metric = 3 + 2 * len(spec.trend_windows)
            self.metrics = list(range(len(FEATURES)))
            needed += spec.trend_windows
        self.span = max(needed)
        #: Rows a chunk holds, and its buffers (flat: a shorter last chunk's views of them
        #: are contiguous too).
        self.chunk = min(max(_CHUNK_WINDOWS // self.span, 64), rows)
        size = self.span * self.chunk
        self._index = np.empty(size, dtype=np.int64)
        self._stack = np.empty(size * len(FEATURES))
        self._scratch = np.empty(16 * self.chunk * len(FEATURES))

    def write(
        self,
        out: NDArray[np.float32],
        base: NDArray[np.float64],
        at: NDArray[np.int64],
        first: NDArray[np.int64],
        median: NDArray[np.float64],
        lo: int,
    ) -> None:
        """Write rows `at`'s windowed columns into `out` (their rows, at most `chunk`) from
        `base`, the events' columns and a row of zeros after them; `median` holds every
        row's rolling median (version 2), these rows from `lo` on."""
        spec, span, m, rows = self.spec, self.span, len(FEATURES), len(at)
        shape = (span, rows, m)
        index = self._index[: span * rows].reshape(span, rows)
        np.subtract(at, np.arange(span - 1, -1, -1)[:, None], out=index)
        np.maximum(index, first, out=index)
        # stack[span - 1 - k] is base[_earlier(at, k, first)]: oldest event first.
        stack = self._stack[: index.size * m].reshape(shape)
        np.take(base, index, axis=0, out=stack, mode="clip")  # in range: no buffering
        scratch = self._scratch[: 16 * rows * m].reshape(16, rows, m)
        now = stack[span - 1]
        out[:, :m] = now
        for lag in range(1, spec.lags + 1):
            out[:, lag * m : (lag + 1) * m] = stack[span - 1 - lag]
        out[:, (spec.lags + 1) * m : (spec.lags + 2) * m] = np.abs(now - stack[span - 2])
        w = spec.rolling_window
        window = stack[span - w :]
        sums = _pairwise_sum(window, scratch)
        counts = np.minimum(at - first + 1, w)[:, None]
        mean = sums / counts
        mean_sq = _pairwise_sum(window, scratch, window) / counts
        std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
        partial = np.flatnonzero(at - first < w - 1)
        if len(partial):  # `_rolling_mean`'s windows: zeros before the series' start
            events = at[partial] - np.arange(w - 1, -1, -1)[:, None]
            events[events < first[partial]] = len(base) - 1
            cut = np.take(base, events, axis=0)
            some = counts[partial]
            cut_mean = _pairwise_sum(cut) / some
            cut_sq = _pairwise_sum(cut, times=cut) / some
            mean[partial] = cut_mean
            std[partial] = np.sqrt(np.maximum(cut_sq - cut_mean * cut_mean, 0.0))
        c, per = self.stats_at, self.per_metric
        if spec.version == 1:
            for i, j in enumerate(self.metrics):
                out[:, c + 2 * i] = mean[:, j]
                out[:, c + 2 * i + 1] = std[:, j]
            return
        block = out[:, c : c + m * per]
        block[:, 0::per] = mean
        block[:, 1::per] = std
        for i, k in enumerate(spec.trend_windows):
            view = stack[span - k :]
            level = (sums if k == w else _pairwise_sum(view, scratch)) / k
            x = np.arange(k, dtype=np.float64) - (k - 1) / 2.0
            slope = _pairwise_sum(view, scratch, x[:, None, None]) / float(x @ x)
            block[:, 2 + 2 * i :: per] = slope
            block[:, 3 + 2 * i :: per] = level + slope * ((k - 1) / 2.0 + spec.trend_ahead)
        block[:, per - 1 :: per] = now - median[lo : lo + rows]


def _pairwise_sum(
    terms: NDArray[np.float64],
    scratch: NDArray[np.float64] | None = None,
    times: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """The sum over axis 0 of `terms` (window positions, oldest first), or of the products
    ``terms * times`` (`times` broadcast to `terms`: each product as numpy makes it), added
    in the order numpy sums a contiguous row (``view.sum(axis=1)``: ``0.0 +`` its pairwise
    sum, eight accumulators per block of up to 128), so that each result equals that row
    sum bit for bit, for every row at once. `scratch` (16 of `terms[0]`) saves allocating
    it."""
    if scratch is None:
        scratch = np.empty((16, *terms.shape[1:]))
    total = np.empty(terms.shape[1:])
    _pairwise(terms, times, scratch, total)
    total += 0.0  # numpy's reduction starts from 0.0: a sum of -0.0s is 0.0
    return total


def _pairwise(
    terms: NDArray[np.float64],
    times: NDArray[np.float64] | None,
    scratch: NDArray[np.float64],
    out: NDArray[np.float64],
) -> None:
    """numpy's pairwise sum of `terms` (times `times`) over axis 0 into `out`."""
    n = len(terms)

    def term(i: int, j: int, into: NDArray[np.float64]) -> NDArray[np.float64]:
        if times is None:
            return terms[i:j]
        return np.multiply(terms[i:j], times[i:j], out=into[: j - i])

    r, spare = scratch[:8], scratch[8:16]
    if n < 8:
        out[...] = term(0, 1, spare)[0]
        for i in range(1, n):
            out += term(i, i + 1, spare)[0]
    elif n <= 128:
        stop = n - n % 8
        if times is None and stop >= 16:
            np.add(terms[:8], terms[8:16], out=r)
            begin = 16
        else:
            r[...] = term(0, 8, r)
            begin = 8
        for i in range(begin, stop, 8):
            r += term(i, i + 8, spare)
        r[0::2] += r[1::2]  # r0 + r1, r2 + r3, r4 + r5, r6 + r7
        r[0::4] += r[2::4]  # (r0 + r1) + (r2 + r3), (r4 + r5) + (r6 + r7)
        np.add(r[0], r[4], out=out)
        for i in range(stop, n):
            out += term(i, i + 1, spare)[0]
    else:
        half = n // 2
        half -= half % 8
        _pairwise(terms[:half], None if times is None else times[:half], scratch, out)
        rest = np.empty_like(out)
        _pairwise(terms[half:], None if times is None else times[half:], scratch, rest)
        out += rest


def _flag_counts(flags: NDArray[np.float64]) -> NDArray[np.float64]:
    """Running counts of breach flags (0 or 1), from 0 before the first event: exact."""
    return np.concatenate(([0.0], np.cumsum(flags)))


def _flag_mean(
    flags: NDArray[np.float64],
    window: int,
    at: NDArray[np.int64],
    first: NDArray[np.int64],
    counts: NDArray[np.float64] | None,
) -> NDArray[np.float64]:
    """`_rolling_mean` of the flags; with `counts` (`_flag_counts`, flags all 0 or 1) from
    their differences: whole numbers, exact in any order, so the same bits."""
    if counts is None:
        return _rolling_mean(flags, window, at, first)
    sums = counts[at + 1] - counts[np.maximum(at - window + 1, first)]
    mean: NDArray[np.float64] = sums / np.minimum(at - first + 1, window)
    return mean


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


def _windows(
    values: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> NDArray[np.float64]:
    """The last `window` values at each row of `at`; a series' first rows repeat its first."""
    pad = np.full(window - 1, values[0] if len(values) else 0.0)
    out: NDArray[np.float64] = sliding_window_view(np.concatenate((pad, values)), window)[at]
    _cut(out, at, first, values)
    return out


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


#: Consecutive rows of a series whose medians are taken together (`_rolling_medians`):
#: fewer sort more shared values again, more sort more values of their own.
_GROUP: Final = 5
#: A sorting network of `_GROUP - 1` values (tested on every 0/1 input).
_SORT_EXTRA: Final = ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2))


def _rolling_medians(
    base: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> NDArray[np.float64]:
    """`_rolling_median` of every column of `base` at rows `at`, bit for bit, cheaper.

    Where a column holds no NaN and no -0.0, equal values have equal bits and a window's
    median is a function of its values alone, however found: up to `_GROUP` consecutive
    rows of a series share all but `_GROUP - 1` values of their windows, sorted once
    (`_grouped_medians`). Rows whose window reaches back past their series' start read
    a copy of their series' first events behind its padding (`_padded_starts`), where
    their windows are whole and they group alike. Other columns take `_rolling_median`.
    With windows too short to group, each row sorts its own; or where that would sort
    more values than rank filters over every event read, every column takes
    `_rolling_median`.
    """
    out = np.empty((len(at), base.shape[1]))
    every = np.ascontiguousarray(base.T)
    with np.errstate(over="ignore", invalid="ignore"):  # only a quick test
        exact = np.isfinite(every.sum(axis=1)) & ~np.signbit(every).any(axis=1)
    if not exact.all():  # the precise test, where the quick one was not sure
        exact = ~(np.isnan(every) | ((every == 0.0) & np.signbit(every))).any(axis=1)
    grouped = window >= 2 * _GROUP
    sort = grouped or len(at) * window <= 16 * len(base)
    cols = np.flatnonzero(exact) if sort else at[:0]
    for j in np.flatnonzero(~np.isin(np.arange(base.shape[1]), cols)):
        out[:, j] = _rolling_median(base[:, j], window, at, first)
    if not len(cols) or not len(at):
        return out
    values = every if len(cols) == len(every) else every[cols]
    if not grouped:
        _sorted_medians(values, window, at, first, cols, out)
        return out
    mature = at - first >= window - 1
    rows = np.flatnonzero(mature)
    _grouped_into(out, cols, values, window, rows, at[rows], first[rows])
    young = np.flatnonzero(~mature)
    step = max(_PADDED // window, 1)
    for lo in range(0, len(young), step):  # a few at a time: the copies are large
        rows = young[lo : lo + step]
        padded, spot, key = _padded_starts(values, window, at[rows], first[rows])
        _grouped_into(out, cols, padded, window, rows, spot, key)
    return out


#: `_rolling_medians` takes young rows this over the window at a time: the copies of
#: their series' starts (`_padded_starts`) then hold at most twice this many events.
_PADDED: Final = 1 << 18


def _grouped_into(
    out: NDArray[np.float64],
    cols: NDArray[np.int64],
    values: NDArray[np.float64],
    window: int,
    rows: NDArray[np.int64],
    spot: NDArray[np.int64],
    key: NDArray[np.int64],
) -> None:
    """Write into `out` (rows `rows`, columns `cols`) the medians of the whole windows of
    `values` ending at events `spot`; rows of consecutive events with the same `key` (of
    one series) are grouped."""
    if not len(rows):
        return
    starts, sizes = _median_groups(spot, key)
    medians = _grouped_medians(values, window, spot[starts])  # (cols, _GROUP, groups)
    real = np.arange(_GROUP)[:, None] < sizes
    some = rows[(starts + np.arange(_GROUP)[:, None])[real]]
    if len(cols) == out.shape[1]:
        out[some] = medians[:, real].T
    else:
        out[np.ix_(some, cols)] = medians[:, real].T


def _padded_starts(
    values: NDArray[np.float64], window: int, at: NDArray[np.int64], first: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Each series of rows `at` (young: ``at - first < window - 1``) of `values` (columns
    of events) from its start, behind as many copies of its first value as its youngest
    row's window lacks, end to end: there each row's window is whole and what
    `_rolling_median` pads it to. Returns them, each row's event in them, and the start
    of its series' copy."""
    age = at - first
    series, which = np.unique(first, return_inverse=True)
    youngest = np.full(len(series), window)
    np.minimum.at(youngest, which, age)
    oldest = np.zeros(len(series), dtype=np.int64)
    np.maximum.at(oldest, which, age)
    pad = window - 1 - youngest
    sizes = pad + oldest + 1
    begin = np.cumsum(sizes) - sizes
    # Position p of a series' copy reads its event max(p - pad, 0).
    index = np.arange(int(sizes.sum())) - np.repeat(begin + pad - series, sizes)
    np.maximum(index, np.repeat(series, sizes), out=index)
    spot: NDArray[np.int64] = begin[which] + pad[which] + age
    return np.take(values, index, axis=1), spot, begin[which]


def _sorted_medians(
    values: NDArray[np.float64],
    window: int,
    at: NDArray[np.int64],
    first: NDArray[np.int64],
    cols: NDArray[np.int64],
    out: NDArray[np.float64],
) -> None:
    """Each row's median of `values` (columns `cols` of `out`), its window sorted: windows
    too short for `_grouped_medians`."""
    back = np.arange(window - 1, -1, -1)
    step = max(_CHUNK_WINDOWS // window, 16)
    for lo in range(0, len(at), step):  # a few at a time: windows can be large
        some = np.arange(lo, min(lo + step, len(at)))
        windows = np.take(values, np.maximum(at[some, None] - back, first[some, None]), axis=1)
        windows.sort(axis=-1)
        out[np.ix_(some, cols)] = _middle(windows, window).T


def _middle(ordered: NDArray[np.float64], window: int) -> NDArray[np.float64]:
    """The median of each sorted `window` along the last axis, as `_rolling_median`."""
    if window % 2:
        odd: NDArray[np.float64] = ordered[..., window // 2]
        return odd
    even: NDArray[np.float64] = (ordered[..., window // 2 - 1] + ordered[..., window // 2]) / 2.0
    return even


def _median_groups(
    at: NDArray[np.int64], first: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Where in `at` each group of rows starts, and its size: up to `_GROUP` rows of
    consecutive events of one series (the same `first`), counted from the start of each
    run of such rows."""
    n = len(at)
    if not n:
        return at[:0], at[:0]
    joined = (at[1:] == at[:-1] + 1) & (first[1:] == first[:-1])
    begin = np.flatnonzero(np.concatenate(([True], ~joined)))
    end = np.append(begin[1:], n)  # each run's end, after its last row
    counts = (end - begin + _GROUP - 1) // _GROUP
    starts = np.repeat(begin, counts)
    starts += _GROUP * (np.arange(len(starts)) - np.repeat(np.cumsum(counts) - counts, counts))
    sizes: NDArray[np.int64] = np.minimum(np.repeat(end, counts) - starts, _GROUP)
    return starts, sizes


def _grouped_medians(
    values: NDArray[np.float64], window: int, r0: NDArray[np.int64]
) -> NDArray[np.float64]:
    """The medians of rows ``r0 + g`` (g < `_GROUP`) of each row of `values` (no NaN, no
    -0.0), the windows whole: (rows of values, `_GROUP`, len(r0)).

    The group's windows share the `window - _GROUP + 1` events up to ``r0`` (sorted once,
    `core`); row g adds its own `_GROUP - 1`: the `_GROUP - 1 - g` oldest of its window
    and the g after ``r0`` (`extra`, sorted by `_SORT_EXTRA`). The k-th smallest of the two
    sorted parts is the least over j of ``max(core[k - j], extra[j - 1])``: j of the k + 1
    values at or below it are extra (k >= j and the core has k + 1 values, as windows are
    at least twice the group). Groups are taken a few hundred at a time, in buffers that
    stay in cache.
    """
    g, extra_n, cols = _GROUP, _GROUP - 1, len(values)
    ks = (window // 2,) if window % 2 else (window // 2 - 1, window // 2)
    # Row i's extra events, relative to r0: (extra_n, g).
    offsets = np.array(
        [
            [i - window + 1 + t for t in range(extra_n - i)] + [1 + t for t in range(i)]
            for i in range(g)
        ]
    ).T
    # Each group's core, values[:, r0 + g - window : r0 + 1], copied out by row.
    cores = sliding_window_view(values, window - g + 1, axis=1)
    last = values.shape[1] - 1
    out = np.empty((cols, g, len(r0)))
    step = max(_CHUNK_WINDOWS // window, 16)
    extra_buf = np.empty(cols * extra_n * g * step)
    for lo in range(0, len(r0), step):
        starts = r0[lo : lo + step]
        n = len(starts)
        core = cores[:, starts + (g - window)]
        core.sort(axis=-1)
        # A group of fewer rows computes the rest too (clipped to the events), unused.
        extra = extra_buf[: cols * extra_n * g * n].reshape(cols, extra_n, g, n)
        index = np.minimum(offsets[:, :, None] + starts, last)
        np.take(values, index, axis=1, out=extra, mode="clip")
        low = np.empty((cols, g, n))
        for i, j in _SORT_EXTRA:
            np.minimum(extra[:, i], extra[:, j], out=low)
            np.maximum(extra[:, i], extra[:, j], out=extra[:, j])
            extra[:, i] = low
        # The core's values the ks read (k - extra_n ... k for each), each contiguous.
        picks = np.moveaxis(core[:, :, ks[0] - extra_n : ks[-1] + 1], 2, 0)[:, :, None].copy()
        median = out[:, :, lo : lo + n]
        for which, k in enumerate(ks):
            best = np.repeat(picks[k - (ks[0] - extra_n)], g, axis=1)
            for j in range(1, extra_n + 1):
                np.maximum(picks[k - j - (ks[0] - extra_n)], extra[:, j - 1], out=low)
                np.minimum(best, low, out=best)
            if which:
                median += best
                median /= 2.0
            else:
                median[...] = best
    return out


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
