"""Supervised pairs from one tenant's telemetry: features at t -> a breach within the horizon.

Pure numpy. The rows handed in are ONE tenant's valid events (the retrainer
replays them from `sla.telemetry` by offset range); `build_pairs` orders them by
timestamp (stable, so equal timestamps keep their replay order), computes each
event's features with the one pipeline (`kernel.features.FeatureSpec.transform`, the
consumer's too), drops the first events whose windows are not yet full, and pairs
each row with whether a breach follows within the next `horizon` events.

>>> spec = FeatureSpec(version=1, lags=1, breach_windows=(2,), rolling_window=2)
>>> ts = np.array([3.0, 1.0, 2.0, 4.0, 5.0])
>>> feats = np.arange(5, dtype=np.float32).reshape(5, 1) * np.ones((1, 6), np.float32)
>>> labels = np.array([1, 0, 0, 1, 0], dtype=bool)
>>> data = build_pairs(ts, feats, labels, horizon=1, spec=spec, min_rows=1)
>>> data.ts.tolist(), data.y.tolist()  # t = 2, 3, 4 (t = 1 has no full window)
([2.0, 3.0, 4.0], [1.0, 1.0, 0.0])
>>> data.X[:, data.feature_names.index("breach")].tolist()  # the breach at t itself
[0.0, 1.0, 1.0]
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kernel.features import FeatureSpec
from retrainer.errors import DatasetError, DatasetReason
from schemas.telemetry import FEATURES

#: Fewest supervised pairs worth a search unless the caller says otherwise.
DEFAULT_MIN_ROWS: Final = 200
#: Share of the newest pairs kept away from the search and used to judge the winner.
DEFAULT_HOLDOUT_FRACTION: Final = 0.15


@dataclass(frozen=True, eq=False)
class SupervisedSet:
    """Time-ordered supervised pairs of one tenant, ready for a binary classifier.

    `X` is float32 `(n, len(spec.names()))`; `y` is float32 0/1, which is what
    skorch's `NeuralNetBinaryClassifier` (a `BCEWithLogitsLoss`) trains on; `ts` is
    the epoch-second timestamp of the features of each row (the label is `horizon`
    rows later). Arrays are read-only so that `sha256` keeps describing them.
    """

    X: NDArray[np.float32]
    y: NDArray[np.float32]
    ts: NDArray[np.float64]
    feature_names: tuple[str, ...]
    horizon: int
    spec: FeatureSpec
    sha256: str

    @property
    def lags(self) -> int:
        return self.spec.lags

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_positive(self) -> int:
        return int(np.count_nonzero(self.y))


def dataset_sha256(X: NDArray[np.float32], y: NDArray[np.float32]) -> str:
    """Deterministic digest of the training rows: shapes, then X and y as little-endian bytes."""
    x_le = np.ascontiguousarray(X, dtype="<f4")
    y_le = np.ascontiguousarray(y, dtype="<f4")
    digest = hashlib.sha256()
    digest.update(f"slaops-pairs-v1 X{x_le.shape} y{y_le.shape}\n".encode())
    digest.update(x_le.tobytes())
    digest.update(y_le.tobytes())
    return digest.hexdigest()


def build_pairs(
    ts: ArrayLike,
    features: ArrayLike,
    labels: ArrayLike,
    *,
    horizon: int = 1,
    spec: FeatureSpec | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> SupervisedSet:
    """Pair the pipeline's features at each event with the label `horizon` events on.

    `features` are the raw telemetry metrics (`FEATURES` order). Periodic features the
    rows' time span cannot teach are left out of `spec` (`FeatureSpec.supported_by`);
    the returned set's `spec` is the one to serve with. The first `spec.history - 1`
    events (windows not yet full) and the last `horizon` events (no future label) make
    no pair. Raises `DatasetError` when the inputs disagree in shape, hold non-finite
    values, yield fewer than `min_rows` pairs, or only one class.
    """
    return _pairs(ts, features, labels, _Pairing(horizon, spec or FeatureSpec(), min_rows))


def pairs_for_model(
    ts: ArrayLike,
    features: ArrayLike,
    labels: ArrayLike,
    *,
    spec: FeatureSpec,
    horizon: int = 1,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> SupervisedSet:
    """`build_pairs` with exactly `spec`, never trimmed to what the rows' span supports.

    For scoring a published model on new rows with the features it was trained on (its
    card's `features` and `horizon`). Raises `DatasetError` like `build_pairs`.
    """
    return _pairs(ts, features, labels, _Pairing(horizon, spec, min_rows, exact_spec=True))


@dataclass(frozen=True)
class _Pairing:
    """How rows become pairs: `build_pairs`'s keywords, and whether `spec` is kept as is."""

    horizon: int
    spec: FeatureSpec
    min_rows: int
    exact_spec: bool = False


def _pairs(ts: ArrayLike, features: ArrayLike, labels: ArrayLike, how: _Pairing) -> SupervisedSet:
    spec, horizon, min_rows = how.spec, how.horizon, how.min_rows
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    if min_rows < 1:
        raise ValueError(f"min_rows must be >= 1, got {min_rows!r}")

    ts_arr = np.asarray(ts, dtype=np.float64)
    feat_arr = np.asarray(features, dtype=np.float32)
    label_arr = np.asarray(labels)
    if ts_arr.ndim != 1 or feat_arr.ndim != 2 or label_arr.ndim != 1:
        raise DatasetError(
            DatasetReason.SHAPE,
            f"expected ts (n,), features (n, k), labels (n,); got {ts_arr.shape}, "
            f"{feat_arr.shape}, {label_arr.shape}",
        )
    n = ts_arr.shape[0]
    if feat_arr.shape[0] != n or label_arr.shape[0] != n:
        raise DatasetError(
            DatasetReason.SHAPE,
            f"row counts differ: ts {n}, features {feat_arr.shape[0]}, labels {label_arr.shape[0]}",
        )
    if feat_arr.shape[1] != len(FEATURES):
        raise DatasetError(
            DatasetReason.SHAPE, f"{feat_arr.shape[1]} metric columns, expected {len(FEATURES)}"
        )
    if not (np.isfinite(ts_arr).all() and np.isfinite(feat_arr).all()):
        raise DatasetError(DatasetReason.NON_FINITE, "ts and features must be finite")
    if label_arr.dtype != np.bool_ and not np.isin(label_arr, (0, 1)).all():
        raise DatasetError(DatasetReason.SHAPE, "labels must be boolean or 0/1")

    order = np.argsort(ts_arr, kind="stable")
    ts_sorted = ts_arr[order]
    if not how.exact_spec and n >= 2:
        spec = spec.supported_by(
            float(ts_sorted[-1] - ts_sorted[0]), float(np.median(np.diff(ts_sorted)))
        )
    first = spec.history - 1
    n_pairs = n - first - horizon
    if n_pairs < min_rows:
        raise DatasetError(
            DatasetReason.TOO_FEW_ROWS,
            f"{max(n_pairs, 0)} pairs from {n} rows (history={spec.history}, "
            f"horizon={horizon}); need >= {min_rows}",
        )
    y_sorted = label_arr[order].astype(np.float32)
    X_all = spec.transform(ts_sorted, feat_arr[order], y_sorted)

    rows = np.arange(first, n - horizon)  # the t of every pair
    X = np.ascontiguousarray(X_all[rows])
    y = np.ascontiguousarray(within_horizon(y_sorted, horizon)[rows])
    ts_out = np.ascontiguousarray(ts_sorted[rows])
    if not np.isfinite(X).all():
        raise DatasetError(DatasetReason.NON_FINITE, "features overflowed float32")

    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.shape[0]:
        raise DatasetError(
            DatasetReason.SINGLE_CLASS,
            f"all {y.shape[0]} labels are {'breach' if n_pos else 'no breach'}",
        )

    for arr in (X, y, ts_out):
        arr.setflags(write=False)
    return SupervisedSet(
        X=X,
        y=y,
        ts=ts_out,
        feature_names=spec.names(),
        horizon=horizon,
        spec=spec,
        sha256=dataset_sha256(X, y),
    )


def within_horizon(labels: ArrayLike, horizon: int) -> NDArray[np.float32]:
    """1 where a breach follows within the next `horizon` events (t+1 ... t+horizon).

    The last rows look past the end: what is there counts (training drops them).

    >>> within_horizon(np.array([0, 0, 0, 1, 0, 0]), 2).tolist()
    [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    flags = np.asarray(labels).astype(bool)
    n = len(flags)
    seen = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    index = np.arange(n)
    ahead = seen[np.minimum(index + 1 + horizon, n)] - seen[np.minimum(index + 1, n)]
    out: NDArray[np.float32] = (ahead > 0).astype(np.float32)
    return out


def time_split(
    n: int, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices `(train, holdout)` of `n` time-ordered rows; the holdout is the newest slice.

    The holdout has `ceil(n * holdout_fraction)` rows, at least one, and leaves at least
    one row to train on.

    >>> train, holdout = time_split(10, 0.15)
    >>> train.tolist(), holdout.tolist()
    ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    if n < 2:
        raise DatasetError(DatasetReason.TOO_FEW_ROWS, f"cannot split {n} rows in two")
    n_holdout = min(max(1, math.ceil(n * holdout_fraction - 1e-9)), n - 1)
    cut = n - n_holdout
    return np.arange(cut, dtype=np.int64), np.arange(cut, n, dtype=np.int64)
