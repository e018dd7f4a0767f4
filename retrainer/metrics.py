"""Holdout metrics of a model (challenger or champion alike) and the F1-optimal threshold."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from kernel.artifacts import predict_proba
from kernel.mlp import SlaMLP


def f1_threshold(y_true: NDArray[Any], proba: NDArray[Any], default: float = 0.5) -> float:
    """The probability threshold (predict breach when `proba >= t`) maximising F1.

    Falls back to `default` when `y_true` holds no breach. Ties go to the lowest threshold.
    """
    y = np.asarray(y_true).astype(bool)
    if not y.any():
        return default
    precision, recall, thresholds = precision_recall_curve(y, np.asarray(proba, np.float64))
    p, r = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(thresholds[int(np.argmax(f1))])


def half_f1_threshold(y_true: NDArray[Any], proba: NDArray[Any], default: float = 0.5) -> float:
    """Half the best F1 reachable on (`y_true`, `proba`): the F1-optimal threshold of a
    calibrated forecaster (Lipton, Elkan and Naryanaswamy, 2014), without the noise of
    an argmax over a few hundred rows. `default` when `y_true` holds no breach.

    >>> rng = np.random.default_rng(0)
    >>> p = rng.beta(1, 4, 20_000)
    >>> y = rng.random(20_000) < p  # calibrated by construction
    >>> t = half_f1_threshold(y, p)
    >>> round(t, 2), round(f1_threshold(y, p), 2)
    (0.25, 0.24)
    """
    y = np.asarray(y_true).astype(bool)
    if not y.any():
        return default
    best = f1_score(y, np.asarray(proba) >= f1_threshold(y, proba), zero_division=0)
    return float(best) / 2 if best > 0 else default


#: Equal-width probability bins of the reliability table and the calibration error.
CALIBRATION_BINS = 10


def evaluate(
    module: SlaMLP, X: NDArray[Any], y: NDArray[Any], threshold: float
) -> dict[str, float]:
    """Holdout metrics of `module` (challenger or champion alike) at `threshold`."""
    proba = predict_proba(module, np.array(X, dtype=np.float32))
    return evaluate_proba(y, proba, threshold)


def evaluate_proba(
    y: NDArray[Any],
    proba: NDArray[Any],
    threshold: float,
    y_pred: NDArray[Any] | None = None,
) -> dict[str, float]:
    """Metrics of probabilities `proba` for outcomes `y`, hard forecasts at `threshold`.

    `y_pred` overrides the hard forecasts (persistence forecasts this interval's
    breach, whatever probability it is given). Keys: log_loss, brier, ece (expected
    calibration error over `CALIBRATION_BINS` bins), pr_auc (average precision),
    roc_auc, precision, recall, f1, tn, fp, fn, tp, n_rows, positive_rate, threshold.
    Ranking metrics are NaN when `y` holds a single class; precision/recall/F1 are 0
    where undefined.
    """
    y_true = np.asarray(y).astype(np.int64)
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    hard = (p >= threshold) if y_pred is None else np.asarray(y_pred).astype(bool)
    hard_i = hard.astype(np.int64)
    both = 0 < int(y_true.sum()) < y_true.shape[0]
    tn, fp, fn, tp = confusion_matrix(y_true, hard_i, labels=[0, 1]).ravel()
    return {
        "log_loss": float(log_loss(y_true, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, p, pos_label=1)),
        "ece": expected_calibration_error(y_true, p),
        "pr_auc": float(average_precision_score(y_true, p)) if both else math.nan,
        "roc_auc": float(roc_auc_score(y_true, p)) if both else math.nan,
        "precision": float(precision_score(y_true, hard_i, zero_division=0)),
        "recall": float(recall_score(y_true, hard_i, zero_division=0)),
        "f1": float(f1_score(y_true, hard_i, zero_division=0)),
        "tn": float(tn),
        "fp": float(fp),
        "fn": float(fn),
        "tp": float(tp),
        "n_rows": float(y_true.shape[0]),
        "positive_rate": float(y_true.mean()) if y_true.shape[0] else math.nan,
        "threshold": float(threshold),
    }


def reliability_table(y: NDArray[Any], proba: NDArray[Any]) -> list[dict[str, float]]:
    """Per non-empty probability bin: its bounds, rows, mean forecast and observed rate.

    A calibrated model has `mean_proba` close to `observed_rate` in every bin.

    >>> rows = reliability_table(np.array([0, 0, 1, 1]), np.array([0.05, 0.05, 0.95, 0.95]))
    >>> [(r["lower"], r["n"], r["observed_rate"]) for r in rows]
    [(0.0, 2.0, 0.0), (0.9, 2.0, 1.0)]
    """
    y_true = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    bins = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    rows = []
    for b in range(CALIBRATION_BINS):
        inside = bins == b
        n = int(inside.sum())
        if n:
            rows.append(
                {
                    "lower": round(b / CALIBRATION_BINS, 6),
                    "upper": round((b + 1) / CALIBRATION_BINS, 6),
                    "n": float(n),
                    "mean_proba": float(p[inside].mean()),
                    "observed_rate": float(y_true[inside].mean()),
                }
            )
    return rows


def expected_calibration_error(y: NDArray[Any], proba: NDArray[Any]) -> float:
    """Row-weighted mean |observed rate - mean forecast| over the reliability bins."""
    rows = reliability_table(y, proba)
    total = sum(r["n"] for r in rows)
    if not total:
        return math.nan
    return float(sum(r["n"] * abs(r["observed_rate"] - r["mean_proba"]) for r in rows) / total)
