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


def evaluate(
    module: SlaMLP, X: NDArray[Any], y: NDArray[Any], threshold: float
) -> dict[str, float]:
    """Holdout metrics of `module` (challenger or champion alike) at `threshold`.

    Keys: log_loss, brier, pr_auc (average precision), roc_auc, precision, recall, f1,
    tn, fp, fn, tp, n_rows, positive_rate, threshold. Ranking metrics are NaN when `y`
    holds a single class; precision/recall/F1 are 0 where undefined.
    """
    y_true = np.asarray(y).astype(np.int64)
    proba = predict_proba(module, np.array(X, dtype=np.float32)).astype(np.float64)
    proba = np.clip(proba, 0.0, 1.0)
    y_pred = (proba >= threshold).astype(np.int64)
    both = 0 < int(y_true.sum()) < y_true.shape[0]
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    return {
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba, pos_label=1)),
        "pr_auc": float(average_precision_score(y_true, proba)) if both else math.nan,
        "roc_auc": float(roc_auc_score(y_true, proba)) if both else math.nan,
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "tn": float(tn),
        "fp": float(fp),
        "fn": float(fn),
        "tp": float(tp),
        "n_rows": float(y_true.shape[0]),
        "positive_rate": float(y_true.mean()) if y_true.shape[0] else math.nan,
        "threshold": float(threshold),
    }
