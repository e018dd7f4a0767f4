"""Supervised pairs and time-ordered splits (`retrainer.dataset`): exact tables, no leakage."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.model_selection import TimeSeriesSplit

import retrainer.dataset
from kernel.errors import SlaopsError
from kernel.features import LOG_METRICS, FeatureSpec
from retrainer.dataset import SupervisedSet, build_pairs, dataset_sha256, time_split
from retrainer.errors import DatasetError, DatasetReason
from schemas.telemetry import FEATURES


def _table(n: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row i has ts 100 + i, features 10 * i + column, and breach on odd rows."""
    ts = 100.0 + np.arange(n, dtype=np.float64)
    features = 10.0 * np.arange(n)[:, None] + np.arange(6)[None, :]
    labels = np.arange(n) % 2 == 1
    return ts, features, labels


def _window(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = 1.7e9 + 60.0 * np.arange(n)
    features = rng.normal(size=(n, 6))
    labels = rng.random(n) < 0.2
    return ts, features, labels


def test_doctests() -> None:
    assert doctest.testmod(retrainer.dataset).failed == 0


#: The smallest pipeline: full windows from the second event on (version 1's columns:
#: pairing does not depend on the version; version 2 needs 12 events for `quiet`).
SMALL = FeatureSpec(version=1, lags=0, breach_windows=(2,), rolling_window=2)
LOGGED = [FEATURES.index(m) for m in LOG_METRICS]


def _base(features: np.ndarray) -> np.ndarray:
    """The pipeline's first six columns: metrics with latencies and rps as log1p."""
    out = np.asarray(features, dtype=np.float64).copy()
    out[:, LOGGED] = np.log1p(out[:, LOGGED])
    return out.astype(np.float32)


def test_pairs_shift_labels_by_horizon_after_the_first_full_window() -> None:
    ts, features, labels = _table()
    data = build_pairs(ts, features, labels, horizon=1, spec=SMALL, min_rows=1)
    assert isinstance(data, SupervisedSet)
    assert data.X.dtype == np.float32 and data.y.dtype == np.float32
    # t runs over rows 1..4 (row 0 has no full window; row 5 has no next label); with
    # horizon 1, "a breach within the horizon" is the next interval's breach
    np.testing.assert_array_equal(data.X[:, :6], _base(features[1:5]))
    np.testing.assert_array_equal(data.y, [0, 1, 0, 1])  # labels of rows 2..5
    np.testing.assert_array_equal(data.ts, ts[1:5])
    breach = data.X[:, data.feature_names.index("breach")]
    np.testing.assert_array_equal(breach, labels[1:5])  # this interval's own breach
    np.testing.assert_array_equal(data.X[:, data.feature_names.index("breach_rate_2")], 0.5)
    assert data.spec == SMALL.supported_by(5.0)  # 5 s of data: no time of day or week
    assert data.feature_names == data.spec.names() and "tod_sin" not in data.feature_names
    assert (data.horizon, data.lags, len(data), data.n_positive) == (1, 0, 4, 2)


def test_pairs_with_lags_and_longer_horizon_are_exact() -> None:
    ts, features, _ = _table()
    labels = np.array([0, 0, 0, 1, 0, 0], dtype=bool)  # one breach, at row 3
    spec = FeatureSpec(version=1, lags=1, breach_windows=(2,), rolling_window=2)
    data = build_pairs(ts, features, labels, horizon=2, spec=spec, min_rows=1)
    # t runs over rows 1..3: metrics at t, then at t - 1; label: a breach in t+1..t+2.
    expected = np.concatenate((_base(features[1:4]), _base(features[0:3])), axis=1)
    np.testing.assert_array_equal(data.X[:, :12], expected)
    np.testing.assert_array_equal(data.y, [1, 1, 0])  # row 3 is within 2 of rows 1 and 2
    np.testing.assert_array_equal(data.ts, [101.0, 102.0, 103.0])
    assert data.feature_names[6:12] == tuple(f"{name}_lag1" for name in data.feature_names[:6])
    assert "log1p_rps_lag1" in data.feature_names


def test_two_lags_name_blocks_in_order() -> None:
    ts, features, labels = _table(8)
    spec = FeatureSpec(version=1, lags=2, breach_windows=(2,), rolling_window=2)
    data = build_pairs(ts, features, labels, spec=spec, min_rows=1)
    assert data.X.shape == (5, len(data.spec.names()))
    assert data.feature_names[6] == "log1p_latency_p50_ms_lag1"
    assert data.feature_names[17] == "log1p_rps_lag2"
    np.testing.assert_array_equal(data.X[0, [3, 9, 15]], [23, 13, 3])  # error_rate t, t-1, t-2


def test_rows_are_sorted_by_ts_first() -> None:
    ts, features, labels = _table(10)
    order = np.random.default_rng(1).permutation(10)
    spec = FeatureSpec(version=1, lags=1, breach_windows=(2,), rolling_window=2)
    shuffled = build_pairs(ts[order], features[order], labels[order], spec=spec, min_rows=1)
    ordered = build_pairs(ts, features, labels, spec=spec, min_rows=1)
    np.testing.assert_array_equal(shuffled.X, ordered.X)
    np.testing.assert_array_equal(shuffled.y, ordered.y)
    np.testing.assert_array_equal(shuffled.ts, ordered.ts)
    assert shuffled.sha256 == ordered.sha256


def test_equal_timestamps_keep_arrival_order() -> None:
    ts = np.array([1.0, 1.0, 1.0, 0.0])
    features = np.arange(4)[:, None] * np.ones((1, 6))
    labels = np.array([0, 1, 0, 1], dtype=bool)
    data = build_pairs(ts, features, labels, spec=SMALL, min_rows=1)
    # sorted rows: 3 (ts 0), then 0, 1, 2 in arrival order; t = rows 0 and 1
    np.testing.assert_array_equal(data.X[:, 3], [0, 1])  # error_rate, not logged
    np.testing.assert_array_equal(data.y, [1, 0])


def test_arrays_are_read_only() -> None:
    data = build_pairs(*_table(), spec=SMALL, min_rows=1)
    with pytest.raises(ValueError):
        data.X[0, 0] = 1.0
    with pytest.raises(ValueError):
        data.y[0] = 1.0


def test_holdout_is_the_newest_slice() -> None:
    train, holdout = time_split(100, 0.15)
    assert holdout.tolist() == list(range(85, 100))
    assert train.tolist() == list(range(85))
    train, holdout = time_split(10, 0.15)  # ceil(1.5) = 2
    assert len(holdout) == 2 and holdout.min() > train.max()
    train, holdout = time_split(2, 0.01)
    assert train.tolist() == [0] and holdout.tolist() == [1]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_time_split_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError):
        time_split(100, fraction)


def test_no_validation_or_holdout_row_precedes_a_training_row() -> None:
    ts, features, labels = _window(400)
    order = np.random.default_rng(2).permutation(400)
    data = build_pairs(ts[order], features[order], labels[order], spec=FeatureSpec(lags=2))
    train, holdout = time_split(len(data))
    assert data.ts[holdout].min() > data.ts[train].max()
    for fold_train, fold_val in TimeSeriesSplit(n_splits=5).split(data.X[train]):
        rows_train, rows_val = train[fold_train], train[fold_val]
        assert rows_val.min() > rows_train.max()
        assert data.ts[rows_val].min() > data.ts[rows_train].max()
        assert data.ts[holdout].min() > data.ts[rows_val].max()


def test_sha256_is_stable_and_tracks_every_row() -> None:
    ts, features, labels = _window(300)
    first = build_pairs(ts, features, labels)
    again = build_pairs(ts.copy(), features.copy(), labels.copy())
    assert first.sha256 == again.sha256
    assert len(first.sha256) == 64 and int(first.sha256, 16) >= 0
    assert first.sha256 == dataset_sha256(first.X, first.y)

    features_changed = features.copy()
    features_changed[57, 3] += 1.0
    assert build_pairs(ts, features_changed, labels).sha256 != first.sha256

    labels_changed = labels.copy()
    labels_changed[120] = not labels_changed[120]
    assert build_pairs(ts, features, labels_changed).sha256 != first.sha256

    assert build_pairs(ts, features, labels, horizon=2).sha256 != first.sha256


def test_too_few_rows() -> None:
    ts, features, labels = _window(50)
    with pytest.raises(DatasetError) as info:
        build_pairs(ts, features, labels)  # default min_rows 200
    assert info.value.reason is DatasetReason.TOO_FEW_ROWS
    assert str(info.value).startswith("too_few_rows:")
    with pytest.raises(DatasetError) as info:
        build_pairs(ts, features, labels, spec=SMALL, horizon=3, min_rows=47)  # 46 pairs
    assert info.value.reason is DatasetReason.TOO_FEW_ROWS
    assert len(build_pairs(ts, features, labels, spec=SMALL, horizon=3, min_rows=46)) == 46
    spec = FeatureSpec(version=1, lags=5, breach_windows=(2,), rolling_window=2)  # history 6
    assert len(build_pairs(ts, features, labels, spec=spec, horizon=3, min_rows=42)) == 42
    with pytest.raises(DatasetError) as info:
        time_split(1)
    assert info.value.reason is DatasetReason.TOO_FEW_ROWS


@pytest.mark.parametrize("value", [False, True])
def test_single_class(value: bool) -> None:
    ts, features, _ = _window(350)
    with pytest.raises(DatasetError) as info:
        build_pairs(ts, features, np.full(350, value))
    assert info.value.reason is DatasetReason.SINGLE_CLASS


def test_single_class_after_the_horizon_shift() -> None:
    ts, features, _ = _window(350)
    labels = np.zeros(350, dtype=bool)
    labels[0] = True  # the only breach is never a target (row 0 has no predecessor)
    with pytest.raises(DatasetError) as info:
        build_pairs(ts, features, labels)
    assert info.value.reason is DatasetReason.SINGLE_CLASS


def test_shape_and_value_errors() -> None:
    ts, features, labels = _window(250)
    cases = [
        ((ts[:-1], features, labels), DatasetReason.SHAPE),
        ((ts, features[:, :3].ravel(), labels), DatasetReason.SHAPE),
        ((ts, features, labels.astype(int) * 2), DatasetReason.SHAPE),
    ]
    bad = features.copy()
    bad[3, 2] = np.nan
    cases.append(((ts, bad, labels), DatasetReason.NON_FINITE))
    bad_ts = ts.copy()
    bad_ts[0] = np.inf
    cases.append(((bad_ts, features, labels), DatasetReason.NON_FINITE))
    for args, reason in cases:
        with pytest.raises(DatasetError) as info:
            build_pairs(*args)
        assert info.value.reason is reason


def test_dataset_error_is_a_value_error_and_a_slaops_error() -> None:
    assert issubclass(DatasetError, ValueError)
    assert issubclass(DatasetError, SlaopsError)


@pytest.mark.parametrize("kwargs", [{"horizon": 0}, {"horizon": 1.5}, {"min_rows": 0}])
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        build_pairs(*_window(250), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("days", "periodic"),
    [(1, ()), (6.9, ()), (7, ("tod_sin", "tod_cos")), (49, ("tod_sin", "tod_cos", "dow_sin"))],
)
def test_time_features_only_when_the_rows_span_several_periods(
    days: float, periodic: tuple[str, ...]
) -> None:
    n = 400
    ts = 1.7e9 + np.linspace(0.0, days * 86_400.0, n)
    _, features, labels = _window(n)
    data = build_pairs(ts, features, labels)
    present = {name for name in data.feature_names if name[:4] in ("tod_", "dow_")}
    assert set(periodic) <= present and len(present) == 2 * len({p[:3] for p in periodic})
    assert data.X.shape[1] == len(data.spec.names())
