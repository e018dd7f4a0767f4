"""Supervised pairs and time-ordered splits (`retrainer.dataset`): exact tables, no leakage."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.model_selection import TimeSeriesSplit

import retrainer.dataset
from kernel.errors import SlaopsError
from retrainer.dataset import (
    DatasetError,
    DatasetReason,
    SupervisedSet,
    build_pairs,
    dataset_sha256,
    time_split,
)
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


def test_pairs_without_lags_shift_labels_by_horizon() -> None:
    ts, features, labels = _table()
    data = build_pairs(ts, features, labels, horizon=1, min_rows=1)
    assert isinstance(data, SupervisedSet)
    assert data.X.dtype == np.float32 and data.y.dtype == np.float32
    np.testing.assert_array_equal(data.X, features[:5].astype(np.float32))
    np.testing.assert_array_equal(data.y, [1, 0, 1, 0, 1])  # labels of rows 1..5
    np.testing.assert_array_equal(data.ts, ts[:5])
    assert data.feature_names == FEATURES
    assert (data.horizon, data.lags, len(data), data.n_positive) == (1, 0, 5, 3)


def test_pairs_with_lags_and_longer_horizon_are_exact() -> None:
    ts, features, labels = _table()
    data = build_pairs(ts, features, labels, horizon=2, lags=1, min_rows=1)
    # t runs over rows 1..3: features at t, then at t - 1; label at t + 2.
    expected_x = np.array(
        [
            [10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5],
            [20, 21, 22, 23, 24, 25, 10, 11, 12, 13, 14, 15],
            [30, 31, 32, 33, 34, 35, 20, 21, 22, 23, 24, 25],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(data.X, expected_x)
    np.testing.assert_array_equal(data.y, [1, 0, 1])  # rows 3, 4, 5
    np.testing.assert_array_equal(data.ts, [101.0, 102.0, 103.0])
    assert data.feature_names[:6] == FEATURES
    assert data.feature_names[6:] == tuple(f"{name}_lag1" for name in FEATURES)
    assert "rps_lag1" in data.feature_names


def test_two_lags_name_blocks_in_order() -> None:
    ts, features, labels = _table(8)
    data = build_pairs(ts, features, labels, lags=2, min_rows=1, feature_names=list("abcdef"))
    assert data.X.shape == (5, 18)
    assert data.feature_names[:7] == ("a", "b", "c", "d", "e", "f", "a_lag1")
    assert data.feature_names[-1] == "f_lag2"
    np.testing.assert_array_equal(data.X[0, [0, 6, 12]], [20, 10, 0])


def test_rows_are_sorted_by_ts_first() -> None:
    ts, features, labels = _table(10)
    order = np.random.default_rng(1).permutation(10)
    shuffled = build_pairs(ts[order], features[order], labels[order], lags=1, min_rows=1)
    ordered = build_pairs(ts, features, labels, lags=1, min_rows=1)
    np.testing.assert_array_equal(shuffled.X, ordered.X)
    np.testing.assert_array_equal(shuffled.y, ordered.y)
    np.testing.assert_array_equal(shuffled.ts, ordered.ts)
    assert shuffled.sha256 == ordered.sha256


def test_equal_timestamps_keep_arrival_order() -> None:
    ts = np.array([1.0, 1.0, 1.0, 0.0])
    features = np.arange(4)[:, None] * np.ones((1, 6))
    labels = np.array([0, 1, 0, 1], dtype=bool)
    data = build_pairs(ts, features, labels, min_rows=1)
    # sorted rows: 3 (ts 0), then 0, 1, 2 in arrival order
    np.testing.assert_array_equal(data.X[:, 0], [3, 0, 1])
    np.testing.assert_array_equal(data.y, [0, 1, 0])


def test_arrays_are_read_only() -> None:
    data = build_pairs(*_table(), min_rows=1)
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
    data = build_pairs(ts[order], features[order], labels[order], lags=2)
    train, holdout = time_split(len(data))
    assert data.ts[holdout].min() > data.ts[train].max()
    for fold_train, fold_val in TimeSeriesSplit(n_splits=5).split(data.X[train]):
        rows_train, rows_val = train[fold_train], train[fold_val]
        assert rows_val.min() > rows_train.max()
        assert data.ts[rows_val].min() > data.ts[rows_train].max()
        assert data.ts[holdout].min() > data.ts[rows_val].max()


def test_sha256_is_stable_and_tracks_every_row() -> None:
    ts, features, labels = _window(200)
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
        build_pairs(ts, features, labels)  # default min_rows 100
    assert info.value.reason is DatasetReason.TOO_FEW_ROWS
    assert str(info.value).startswith("too_few_rows:")
    with pytest.raises(DatasetError) as info:
        build_pairs(ts, features, labels, lags=5, horizon=3, min_rows=43)  # 42 pairs
    assert info.value.reason is DatasetReason.TOO_FEW_ROWS
    assert len(build_pairs(ts, features, labels, lags=5, horizon=3, min_rows=42)) == 42
    with pytest.raises(DatasetError) as info:
        time_split(1)
    assert info.value.reason is DatasetReason.TOO_FEW_ROWS


@pytest.mark.parametrize("value", [False, True])
def test_single_class(value: bool) -> None:
    ts, features, _ = _window(150)
    with pytest.raises(DatasetError) as info:
        build_pairs(ts, features, np.full(150, value))
    assert info.value.reason is DatasetReason.SINGLE_CLASS


def test_single_class_after_the_horizon_shift() -> None:
    ts, features, _ = _window(150)
    labels = np.zeros(150, dtype=bool)
    labels[0] = True  # the only breach is never a target (row 0 has no predecessor)
    with pytest.raises(DatasetError) as info:
        build_pairs(ts, features, labels)
    assert info.value.reason is DatasetReason.SINGLE_CLASS


def test_shape_and_value_errors() -> None:
    ts, features, labels = _window(150)
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


@pytest.mark.parametrize("kwargs", [{"horizon": 0}, {"horizon": 1.5}, {"lags": -1}])
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        build_pairs(*_window(150), **kwargs)  # type: ignore[arg-type]
