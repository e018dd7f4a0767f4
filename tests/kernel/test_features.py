"""The one feature pipeline (`kernel.features`): a per-row oracle, and train/serve parity.

Parity is checked through the product's own code paths: the consumer's pure core with a
real published model (its network's inputs captured by a forward hook) against the
retrainer's `build_pairs` rows for the same events, with batches cut anywhere and after
a restart that rebuilds the window from a replay. The fast paths (all metrics' windows
summed at once in numpy's own order, medians of grouped rows) are checked bit for bit
against the plain pipeline they replaced (`reference_transform`) and numpy's own sums.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.live_model import LiveModel
from kernel import features
from kernel.features import (
    _GROUP,
    _SORT_EXTRA,
    LOG_METRICS,
    QUIET_EVENTS,
    FeatureSpec,
    _day_before,
    _earlier,
    _pairwise_sum,
    _rolling_mean,
    _rolling_median,
    _rolling_medians,
    _run_length,
    _windows,
)
from retrainer.dataset import pairs_for_model
from schemas.telemetry import FEATURES
from testkit.live_models import Published, core_with, load, messages
from testkit.retrain_data import tenant_rows


def oracle_row(
    spec: FeatureSpec, ts: np.ndarray, metrics: np.ndarray, labels: np.ndarray, i: int
) -> list[float]:
    """Row i computed the slow, obvious way: one event at a time, plain Python."""

    def base(j: int) -> list[float]:
        j = max(j, 0)
        return [
            math.log1p(max(float(metrics[j, c]), 0.0))
            if name in LOG_METRICS
            else float(metrics[j, c])
            for c, name in enumerate(FEATURES)
        ]

    row = base(i)
    for lag in range(1, spec.lags + 1):
        row += base(i - lag)
    row += [abs(a - b) for a, b in zip(base(i), base(i - 1), strict=True)]
    row.append(float(labels[i]))
    for w in spec.breach_windows:
        seen = [float(labels[j]) for j in range(max(0, i - w + 1), i + 1)]
        row.append(sum(seen) / len(seen))
    run = 1
    while run < spec.history and i - run >= 0 and labels[i - run] == labels[i]:
        run += 1
    row.append(run / spec.history)
    for name in ("latency_p95_ms", "latency_p99_ms", "error_rate"):
        c = FEATURES.index(name)
        values = [base(j)[c] for j in range(max(0, i - spec.rolling_window + 1), i + 1)]
        mean = sum(values) / len(values)
        row += [mean, math.sqrt(max(sum(v * v for v in values) / len(values) - mean**2, 0.0))]
    if spec.time_of_day:
        angle = 2 * math.pi * (float(ts[i]) % 86_400) / 86_400
        row += [math.sin(angle), math.cos(angle)]
    if spec.day_of_week:
        angle = 2 * math.pi * ((float(ts[i]) - 3 * 86_400) % (7 * 86_400)) / (7 * 86_400)
        row += [math.sin(angle), math.cos(angle)]
    return row


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    lags=st.integers(0, 3),
    windows=st.lists(st.integers(2, 12), min_size=1, max_size=3, unique=True),
    rolling=st.integers(2, 12),
    seed=st.integers(0, 2**16),
)
def test_transform_matches_a_per_row_oracle(
    n: int, lags: int, windows: list[int], rolling: int, seed: int
) -> None:
    spec = FeatureSpec(version=1, lags=lags, breach_windows=tuple(windows), rolling_window=rolling)
    rng = np.random.default_rng(seed)
    ts = 1.7e9 + np.cumsum(rng.integers(1, 3_600, n)).astype(np.float64)
    metrics = rng.lognormal(3.0, 1.0, (n, len(FEATURES))).astype(np.float32)
    metrics[:, 3:5] = rng.random((n, 2))  # error_rate and cpu_util in [0, 1]
    labels = rng.random(n) < 0.3
    X = spec.transform(ts, metrics, labels)
    assert X.shape == (n, len(spec.names()))
    expected = np.array([oracle_row(spec, ts, metrics, labels, i) for i in range(n)])
    np.testing.assert_allclose(X, expected.astype(np.float32), rtol=2e-5, atol=2e-6)


def oracle_context(values: list[float], i: int, spec: FeatureSpec) -> list[float]:
    """Version 2's columns of one metric at row i, the slow way (windows padded at the start)."""

    def window(w: int) -> list[float]:
        return [values[max(j, 0)] for j in range(i - w + 1, i + 1)]

    seen = [values[j] for j in range(max(0, i - spec.rolling_window + 1), i + 1)]
    mean = sum(seen) / len(seen)
    out = [mean, math.sqrt(max(sum(v * v for v in seen) / len(seen) - mean**2, 0.0))]
    for k in spec.trend_windows:
        ys = window(k)
        xs = [x - (k - 1) / 2 for x in range(k)]
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
        out += [slope, sum(ys) / k + slope * ((k - 1) / 2 + spec.trend_ahead)]
    out.append(values[i] - float(np.median(window(spec.level_window))))
    return out


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 80),
    trend=st.lists(st.integers(2, 10), min_size=1, max_size=2, unique=True),
    level=st.integers(2, 30),
    season=st.sampled_from([0, 5, 17]),
    seed=st.integers(0, 2**16),
)
def test_version_2_matches_a_per_row_oracle(
    n: int, trend: list[int], level: int, season: int, seed: int
) -> None:
    spec = FeatureSpec(
        lags=1,
        breach_windows=(3,),
        rolling_window=4,
        trend_windows=tuple(trend),
        trend_ahead=3,
        level_window=level,
        season_events=season,
        time_of_day=False,
        day_of_week=False,
    )
    rng = np.random.default_rng(seed)
    ts = 1.7e9 + 60.0 * np.arange(n)
    metrics = rng.lognormal(3.0, 1.0, (n, len(FEATURES))).astype(np.float32)
    metrics[:, 3:5] = rng.random((n, 2))
    labels = rng.random(n) < 0.2
    X = spec.transform(ts, metrics, labels)
    names = spec.names()
    assert X.shape == (n, len(names))
    v1 = FeatureSpec(version=1, lags=1, breach_windows=(3,), rolling_window=4)
    base = [[oracle_row(v1, ts, metrics, labels, i)[c] for c in range(6)] for i in range(n)]
    for i in range(n):
        expected = [float(labels[max(0, i - 11) : i + 1].sum() == 0)]
        for c in range(6):
            expected += oracle_context([row[c] for row in base], i, spec)
        if season:
            for c in range(6):
                past = [base[min(max(i + s - season, 0), n - 1)][c] for s in range(1, 4)]
                expected.append(max(past))
        got = X[i, names.index("quiet") :]
        np.testing.assert_allclose(got, np.array(expected, np.float32), rtol=2e-5, atol=2e-5)


def test_a_row_depends_only_on_its_history() -> None:
    spec = FeatureSpec()
    rows = tenant_rows(300, seed=2)
    full = spec.transform(rows.ts, rows.features, rows.labels)
    changed = rows.features.copy()
    changed[200:] *= 3.0  # the future changes
    flipped = rows.labels.copy()
    flipped[200:] = ~flipped[200:]
    again = spec.transform(rows.ts, changed, flipped)
    np.testing.assert_array_equal(full[:200], again[:200])


@contextmanager
def captured_inputs(model: LiveModel) -> Iterator[list[np.ndarray]]:
    """Every input the model's network is called with, in call order."""
    seen: list[np.ndarray] = []

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].detach().cpu().numpy().copy())

    handle = model.module.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


N = 700


@pytest.mark.parametrize("cuts", [(350,), (1, 24, 25, 333, 699), tuple(range(50, N, 50))])
def test_online_inputs_equal_the_training_rows_across_batches(
    published: Published,
    cuts: tuple[int, ...],
) -> None:
    model = load(published)
    stream = messages(3, 150.0, N)
    rows = tenant_rows(N, seed=3, threshold_ms=150.0)
    offline = pairs_for_model(rows.ts, rows.features, rows.labels, spec=model.features, min_rows=1)
    core = core_with(model)
    with captured_inputs(model) as seen:
        for start, stop in zip((0, *cuts), (*cuts, N), strict=True):
            core.process(stream[start:stop])
    online = np.concatenate(seen)
    assert online.shape == (N, len(model.features.names()))
    first = model.features.history - 1  # from here on both have full windows
    np.testing.assert_array_equal(online[first : first + len(offline)], offline.X)


def test_online_inputs_equal_the_training_rows_after_a_restart(published: Published) -> None:
    model = load(published)
    stream = messages(3, 150.0, N)
    rows = tenant_rows(N, seed=3, threshold_ms=150.0)
    offline = pairs_for_model(rows.ts, rows.features, rows.labels, spec=model.features, min_rows=1)
    before = core_with(model)
    before.process(stream[:400])
    # A new process: the window is rebuilt by replaying what the first one committed
    # (offsets below 400 emit nothing again), then the stream goes on.
    restarted = core_with(model)
    with captured_inputs(model) as seen:
        restarted.process(stream[:400], replay_below={0: 400})
        seen.clear()  # forecasts made while replaying are not the ones that count
        restarted.process(stream[400:550])
        restarted.process(stream[550:])
    online = np.concatenate(seen)
    t0 = 400 - (model.features.history - 1)  # offline row of event 400
    np.testing.assert_array_equal(online[: len(offline) - t0], offline.X[t0:])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 400),
    window=st.sampled_from([2, 3, 7, 24, 71, 72, 200]),
    seed=st.integers(0, 2**16),
)
def test_the_rolling_median_is_numpys_median_of_each_window_bit_for_bit(
    n: int, window: int, seed: int
) -> None:
    """The running rank filters give exactly what sorting each row's window gives (ties
    included: values rounded to one decimal), for all rows and for any subset of rows."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0.0, 2.0, n), 1)
    padded = np.concatenate((np.full(window - 1, values[0]), values))
    every = np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)
    rows = np.arange(n)
    assert np.array_equal(_rolling_median(values, window, rows, 0 * rows), every)
    some = rng.choice(n, size=min(n, 9), replace=False)
    assert np.array_equal(_rolling_median(values, window, some, 0 * some), every[some])


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 120), min_size=1, max_size=5),
    version=st.sampled_from([1, 2]),
    season=st.sampled_from([0, 9, 40]),
    seed=st.integers(0, 2**16),
)
def test_series_end_to_end_transform_as_each_alone_bit_for_bit(
    lengths: list[int], version: int, season: int, seed: int
) -> None:
    """With `starts`, several tenants' events in one call give each tenant's own rows:
    no row reads another series, however short its own (a young tenant's)."""
    if version == 1:
        spec = FeatureSpec(version=1, time_of_day=False, day_of_week=False)
    else:
        spec = FeatureSpec(season_events=season, level_window=30, time_of_day=True)
    rng = np.random.default_rng(seed)
    alone: list[np.ndarray] = []
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    starts: list[np.ndarray] = []
    offset = 0
    for length in lengths:
        ts = 1.7e9 + 300.0 * np.arange(length) + rng.integers(0, 10**6)
        metrics = rng.lognormal(3.0, 1.0, (length, len(FEATURES))).astype(np.float32)
        metrics[:, 3:5] = rng.random((length, 2))
        labels = rng.random(length) < 0.3
        alone.append(spec.transform(ts, metrics, labels))
        starts.append(np.full(length, offset))
        offset += length
        parts.append((ts, metrics, labels))
    columns = [np.concatenate([p[c] for p in parts]) for c in range(3)]
    together = spec.transform(*columns, starts=np.concatenate(starts))
    assert np.array_equal(together, np.concatenate(alone))
    # And for any rows asked (a block's rows after each tenant's history).
    rows = np.flatnonzero(rng.random(len(together)) < 0.3)
    picked = spec.transform(*columns, rows=rows, starts=np.concatenate(starts))
    assert np.array_equal(picked, together[rows])


def test_starts_must_point_at_or_before_each_event() -> None:
    ts = np.arange(4) * 60.0
    metrics = np.ones((4, len(FEATURES)), dtype=np.float32)
    labels = np.zeros(4, dtype=bool)
    with pytest.raises(ValueError, match="starts"):
        FeatureSpec().transform(ts, metrics, labels, starts=np.array([0, 2, 2, 3]))


# The fast paths, against the plain pipeline they replace, bit for bit -----------------


def _mean_std(
    values: np.ndarray, window: int, at: np.ndarray, first: np.ndarray
) -> list[np.ndarray]:
    """The rolling mean and std columns, plainly: from `_rolling_mean` of x and x**2."""
    mean = _rolling_mean(values, window, at, first)
    mean_sq = _rolling_mean(values * values, window, at, first)
    std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    return [mean[:, None], std[:, None]]


def reference_transform(
    spec: FeatureSpec,
    ts: np.ndarray,
    metrics: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray | None = None,
    starts: np.ndarray | None = None,
) -> np.ndarray:
    """`FeatureSpec.transform` the plain way: one metric and one window at a time, every
    row's window copied out and summed by numpy (``view.sum(axis=1)``, ``view.mean``),
    every median a rank filter or ``np.median``. What the pipeline computed before its
    windows were summed for all metrics at once; the two must agree bit for bit."""
    ts = np.asarray(ts, dtype=np.float64)
    base = np.asarray(metrics, dtype=np.float64).copy()
    flags = np.asarray(labels, dtype=np.float64)
    n = len(ts)
    at = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    series = np.zeros(n, dtype=np.int64) if starts is None else np.asarray(starts, np.int64)
    first = series[at]
    for j, name in enumerate(FEATURES):
        if name in LOG_METRICS:
            base[:, j] = np.log1p(np.maximum(base[:, j], 0.0))
    columns = [base[at]]
    columns += [base[_earlier(at, lag, first)] for lag in range(1, spec.lags + 1)]
    columns.append(np.abs(base[at] - base[_earlier(at, 1, first)]))
    columns.append(flags[at, None])
    columns += [_rolling_mean(flags, w, at, first)[:, None] for w in spec.breach_windows]
    columns.append((_run_length(flags, spec.history, series)[at] / spec.history)[:, None])
    if spec.version == 1:
        for metric in ("latency_p95_ms", "latency_p99_ms", "error_rate"):
            columns += _mean_std(base[:, FEATURES.index(metric)], spec.rolling_window, at, first)
    else:
        quiet = _rolling_mean(flags, QUIET_EVENTS, at, first) == 0
        columns.append(quiet.astype(np.float64)[:, None])
        for j in range(len(FEATURES)):
            values = base[:, j]
            columns += _mean_std(values, spec.rolling_window, at, first)
            for k in spec.trend_windows:
                view = _windows(values, k, at, first) if len(at) else np.zeros((0, k))
                x = np.arange(k, dtype=np.float64) - (k - 1) / 2.0
                slope = (view * x).sum(axis=1) / float(x @ x)
                level = view.mean(axis=1)
                projected = level + slope * ((k - 1) / 2.0 + spec.trend_ahead)
                columns += [slope[:, None], projected[:, None]]
            median = _rolling_median(values, spec.level_window, at, first)
            columns.append((values[at] - median)[:, None])
        if spec.season_events:
            columns.append(_day_before(base, spec.season_events, spec.trend_ahead, at, first))
    if spec.time_of_day:
        day = 2 * np.pi * np.mod(ts[at], 86_400.0) / 86_400.0
        columns.append(np.stack([np.sin(day), np.cos(day)], axis=1))
    if spec.day_of_week:
        week = 2 * np.pi * np.mod(ts[at] - 3 * 86_400.0, 7 * 86_400.0) / (7 * 86_400.0)
        columns.append(np.stack([np.sin(week), np.cos(week)], axis=1))
    return np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """NaN where the other is NaN, and every other value the same bits (signed zeros)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = np.isnan(a)
    return bool(
        np.array_equal(nan, np.isnan(b))
        and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))
    )


def tenants_end_to_end(
    rng: np.random.Generator, tails: list[int], blocks: list[int], kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the consumer transforms: each tenant's tail then its block, end to end; the
    rows asked are the blocks'."""
    lengths = np.array(tails) + np.array(blocks)
    n = int(lengths.sum())
    ts = 1.7e9 + np.cumsum(rng.integers(1, 600, n)).astype(np.float64)
    metrics = rng.lognormal(3.0, 1.0, (n, len(FEATURES)))
    if kind == "ties":
        metrics = np.round(metrics / 10.0) * 10.0
    elif kind == "few values":
        metrics = rng.integers(0, 3, (n, len(FEATURES))).astype(np.float64)
    elif kind == "signed":
        metrics = rng.normal(0.0, 1.0, (n, len(FEATURES)))
        metrics[rng.random(metrics.shape) < 0.05] = -0.0
    elif kind == "non-finite":
        metrics[rng.random(metrics.shape) < 0.02] = np.nan
        metrics[rng.random(metrics.shape) < 0.01] = np.inf
    elif kind == "infinite":  # no NaN: the medians' fast paths sort infinities
        metrics[rng.random(metrics.shape) < 0.05] = np.inf
        metrics[rng.random(metrics.shape) < 0.05] = -np.inf
    if kind != "float64":
        metrics = metrics.astype(np.float32)
    labels = rng.random(n) < 0.2
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    starts = np.repeat(offsets, lengths)
    rows = np.concatenate(
        [o + t + np.arange(b) for o, t, b in zip(offsets, tails, blocks, strict=True)]
    )
    return ts, metrics, labels, rows, starts


KINDS = ["float32", "float64", "ties", "few values", "signed", "non-finite", "infinite"]


@settings(max_examples=60, deadline=None)
@given(
    tails=st.lists(st.sampled_from([0, 1, 5, 23, 40, 71, 71, 71, 100]), min_size=1, max_size=12),
    block=st.integers(1, 70),
    kind=st.sampled_from(KINDS),
    version=st.sampled_from([1, 2, 2]),
    rolling=st.sampled_from([2, 5, 9, 24, 130]),
    trend=st.lists(
        st.sampled_from([2, 3, 6, 7, 8, 9, 24, 129, 140]), min_size=1, max_size=3, unique=True
    ),
    level=st.sampled_from([2, 7, 15, 16, 17, 33, 72]),
    season=st.sampled_from([0, 0, 30]),
    flags_kind=st.sampled_from(["bool", "bool", "fractions"]),
    seed=st.integers(0, 2**16),
)
def test_transform_equals_the_plain_pipeline_bit_for_bit(
    tails: list[int],
    block: int,
    kind: str,
    version: int,
    rolling: int,
    trend: list[int],
    level: int,
    season: int,
    flags_kind: str,
    seed: int,
) -> None:
    """Many tenants end to end (young ones too), their blocks' rows or every row, all the
    spec's windows odd and even, short and past numpy's 128-value blocks; ties, signed
    zeros, NaN and infinity; breach flags that are not 0 or 1."""
    if version == 1:
        spec = FeatureSpec(version=1, lags=3, rolling_window=rolling)
    else:
        spec = FeatureSpec(
            rolling_window=rolling,
            trend_windows=tuple(trend),
            level_window=level,
            season_events=season,
        )
    rng = np.random.default_rng(seed)
    blocks = [int(b) for b in rng.integers(1, block + 1, len(tails))]
    ts, metrics, labels, rows, starts = tenants_end_to_end(rng, tails, blocks, kind)
    flags = labels if flags_kind == "bool" else labels * rng.random(len(labels))
    with np.errstate(invalid="ignore"):
        for asked, each in ((rows, starts), (None, starts), (None, None)):
            got = spec.transform(ts, metrics, flags, rows=asked, starts=each)
            assert same_bits(got, reference_transform(spec, ts, metrics, flags, asked, each))


def test_the_consumers_workload_equals_the_plain_pipeline_bit_for_bit() -> None:
    """The default spec on 300 tenants' full tails and 50-event blocks (every row in a
    group of the median's), and the same tenants with every row."""
    rng = np.random.default_rng(5)
    spec = FeatureSpec()
    ts, metrics, labels, rows, starts = tenants_end_to_end(rng, [71] * 300, [50] * 300, "float32")
    got = spec.transform(ts, metrics, labels, rows=rows, starts=starts)
    assert same_bits(got, reference_transform(spec, ts, metrics, labels, rows, starts))
    got = spec.transform(ts, metrics, labels, starts=starts)
    assert same_bits(got, reference_transform(spec, ts, metrics, labels, None, starts))


@settings(max_examples=40, deadline=None)
@given(
    window=st.sampled_from(
        [1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 64, 127, 128, 129, 130, 200, 257, 1440]
    ),
    rows=st.integers(0, 50),
    scale=st.sampled_from([1e-3, 1.0, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_pairwise_sum_is_numpys_row_sum_bit_for_bit(
    window: int, rows: int, scale: float, seed: int
) -> None:
    """Numpy sums a contiguous row from 0.0 pairwise (eight accumulators a block, blocks of
    at most 128): `_pairwise_sum` adds every row's values in that order, all rows at once."""
    rng = np.random.default_rng(seed)
    view = rng.lognormal(0.0, 3.0, (rows, window)) * rng.choice([-1.0, 1.0], (rows, window)) * scale
    view[rng.random(view.shape) < 0.1] = 0.0
    view[rng.random(view.shape) < 0.1] = -0.0
    if rows:
        view[0] = -0.0  # sums to 0.0, not -0.0
    terms = np.ascontiguousarray(view.T)[:, :, None]
    got = _pairwise_sum(terms)[:, 0]
    expected = view.sum(axis=1)
    assert np.array_equal(got.view(np.int64), expected.view(np.int64))
    # And of products made on the way, as the trend's slope sums them.
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    products = _pairwise_sum(terms, times=x[:, None, None])[:, 0]
    assert np.array_equal(products.view(np.int64), (view * x).sum(axis=1).view(np.int64))
    squares = _pairwise_sum(terms, times=terms)[:, 0]
    assert np.array_equal(squares.view(np.int64), (view * view).sum(axis=1).view(np.int64))


def test_the_sorting_network_sorts_every_input_of_zeros_and_ones() -> None:
    """The 0/1 principle: a network that sorts every 0/1 input sorts every input."""
    for bits in itertools.product([0, 1], repeat=_GROUP - 1):
        values = list(bits)
        for i, j in _SORT_EXTRA:
            values[i], values[j] = min(values[i], values[j]), max(values[i], values[j])
        assert values == sorted(bits)


@settings(max_examples=40, deadline=None)
@given(
    tails=st.lists(st.sampled_from([0, 3, 30, 71, 71, 90]), min_size=1, max_size=8),
    block=st.integers(1, 40),
    window=st.sampled_from([2, 3, 15, 16, 17, 24, 33, 71, 72]),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**16),
)
def test_rolling_medians_are_the_rank_filters_bit_for_bit(
    tails: list[int], block: int, window: int, kind: str, seed: int
) -> None:
    """Grouped rows, rows sorted alone, and columns with NaN or -0.0 (the rank filters')
    all give `_rolling_median`'s values, hence np.median's of each window."""
    rng = np.random.default_rng(seed)
    blocks = [int(b) for b in rng.integers(1, block + 1, len(tails))]
    _ts, metrics, _labels, rows, starts = tenants_end_to_end(rng, tails, blocks, kind)
    base = np.log1p(np.abs(metrics.astype(np.float64))) * np.sign(metrics)
    for at in (rows, np.arange(len(base)), rows[rng.random(len(rows)) < 0.5]):
        first = starts[at]
        with np.errstate(invalid="ignore"):  # -inf + inf: the mean of the middle two is NaN
            got = _rolling_medians(base, window, at, first)
        for j in range(base.shape[1]):
            with np.errstate(invalid="ignore"):
                expected = _rolling_median(base[:, j], window, at, first)
            nan = np.isnan(expected)
            assert np.array_equal(nan, np.isnan(got[:, j]))
            assert np.array_equal(got[~nan, j].view(np.int64), expected[~nan].view(np.int64))


def young_series(
    rng: np.random.Generator, lengths: list[int], kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Series end to end (`tenants_end_to_end`'s values), most of them shorter than the
    windows read; some start with a run of their first value (its padding's ties)."""
    _ts, metrics, _labels, _rows, starts = tenants_end_to_end(
        rng, lengths, [0] * len(lengths), kind
    )
    for start, length in zip(np.unique(starts), lengths, strict=True):
        if rng.random() < 0.3:
            metrics[start : start + rng.integers(1, length + 1)] = metrics[start]
    return metrics.astype(np.float64), starts


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 90), min_size=1, max_size=40),
    window=st.sampled_from([10, 11, 16, 17, 24, 33, 71, 72, 73, 130]),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**16),
)
def test_young_rows_medians_are_numpys_of_their_padded_windows_bit_for_bit(
    lengths: list[int], window: int, kind: str, seed: int
) -> None:
    """Rows whose window reaches back before their series' start (a tenant just live, all
    of a cold batch), many series at once: the medians of their windows padded with the
    series' first value, as `_rolling_median` and ``np.median`` take them, for every row,
    any subset, in any order, repeated."""
    rng = np.random.default_rng(seed)
    base, starts = young_series(rng, lengths, kind)
    n = len(base)
    picks = (
        np.arange(n),
        np.flatnonzero(rng.random(n) < 0.4),
        rng.integers(0, n, 2 * n),
        np.arange(n)[::-1].copy(),
    )
    back = np.arange(window - 1, -1, -1)
    with np.errstate(invalid="ignore"):  # -inf + inf: the mean of the middle two is NaN
        for at in picks:
            first = starts[at]
            got = _rolling_medians(base, window, at, first)
            if kind not in ("signed", "non-finite"):  # where the rank filters are np.median's
                windows = base[np.maximum(at[:, None] - back, first[:, None])]  # (rows, window, 6)
                expected = np.median(windows, axis=1)
                assert np.array_equal(got.view(np.int64), expected.view(np.int64))
            for j in range(base.shape[1]):
                plain = _rolling_median(base[:, j], window, at, first)
                assert np.array_equal(got[:, j].view(np.int64), plain.view(np.int64))


@pytest.mark.parametrize("padded", [1, 64, 500])
def test_young_rows_medians_a_few_rows_at_a_time_are_the_same(padded: int) -> None:
    """The copies of young series' starts are made a few rows at a time (a series' rows
    split between them, one row a time): the same medians as `_rolling_median`'s."""
    rng = np.random.default_rng(padded)
    base, starts = young_series(rng, [int(k) for k in rng.integers(1, 80, 25)], "ties")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "_PADDED", padded)
        for window in (10, 17, 72):
            for at in (np.arange(len(base)), rng.integers(0, len(base), 300)):
                got = _rolling_medians(base, window, at, starts[at])
                for j in range(base.shape[1]):
                    plain = _rolling_median(base[:, j], window, at, starts[at])
                    assert np.array_equal(got[:, j].view(np.int64), plain.view(np.int64))


@settings(max_examples=30, deadline=None)
@given(
    young=st.lists(st.integers(1, 80), min_size=1, max_size=30),
    mature=st.lists(st.integers(72, 150), max_size=4),
    kind=st.sampled_from(KINDS),
    rolling=st.sampled_from([5, 24, 25]),
    level=st.sampled_from([16, 17, 71, 72]),
    seed=st.integers(0, 2**16),
)
def test_young_tenants_transform_as_the_plain_pipeline_bit_for_bit(
    young: list[int], mature: list[int], kind: str, rolling: int, level: int, seed: int
) -> None:
    """A batch of tenants that just went live (every row young) among a few with full
    windows, in any order: every row, and the rows of each tenant's last events."""
    spec = FeatureSpec(rolling_window=rolling, level_window=level)
    rng = np.random.default_rng(seed)
    lengths = list(rng.permutation(young + mature))
    blocks = [int(rng.integers(1, length + 1)) for length in lengths]
    tails = [length - block for length, block in zip(lengths, blocks, strict=True)]
    ts, metrics, labels, rows, starts = tenants_end_to_end(rng, tails, blocks, kind)
    with np.errstate(invalid="ignore"):
        for asked in (None, rows):
            got = spec.transform(ts, metrics, labels, rows=asked, starts=starts)
            assert same_bits(got, reference_transform(spec, ts, metrics, labels, asked, starts))
