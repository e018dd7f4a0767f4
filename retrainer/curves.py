"""The compact curves a model card carries for its report: learning curve and PR curve.

Both are bounded (`kernel.artifacts.MAX_LEARNING_EPOCHS`, `MAX_PR_POINTS`) so a card
stays small whatever the search or the number of rows, and both hold finite numbers only
(strict JSON).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import precision_recall_curve

from kernel.artifacts import MAX_LEARNING_EPOCHS, MAX_PR_POINTS


def _loss(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, 6) if math.isfinite(number) and number >= 0 else None


def learning_curve(history: Any) -> list[dict[str, Any]]:
    """Per epoch of a skorch net's `history`: train loss and (when it had a tail) valid loss.

    Epochs without a finite train loss are skipped; at most the first
    `MAX_LEARNING_EPOCHS` are kept.

    >>> curve = learning_curve([{"epoch": 1, "train_loss": 0.7, "valid_loss": 0.6},
    ...                         {"epoch": 2, "train_loss": float("nan")},
    ...                         {"epoch": 3, "train_loss": 0.5, "valid_loss": None}])
    >>> [(p["epoch"], p["train_loss"], p["valid_loss"]) for p in curve]
    [(1, 0.7, 0.6), (3, 0.5, None)]
    """
    points: list[dict[str, Any]] = []
    for row in list(history)[:MAX_LEARNING_EPOCHS]:
        train = _loss(row.get("train_loss"))
        if train is None:
            continue
        points.append(
            {
                "epoch": int(row.get("epoch", len(points) + 1)),
                "train_loss": train,
                "valid_loss": _loss(row.get("valid_loss")),
            }
        )
    return points


def pr_curve(y: NDArray[Any], proba: NDArray[Any]) -> list[dict[str, float]]:
    """The out-of-fold precision-recall curve, thinned to at most `MAX_PR_POINTS` points.

    Points go from the lowest threshold (recall 1) to the highest; thinning keeps both
    ends. Empty when `y` holds no breach (the curve is undefined).

    >>> [p["recall"] for p in pr_curve(np.array([0, 1, 1]), np.array([0.2, 0.6, 0.9]))]
    [1.0, 1.0, 0.5]
    """
    y_true = np.asarray(y).astype(bool)
    if not y_true.any():
        return []
    precision, recall, thresholds = precision_recall_curve(y_true, np.asarray(proba, np.float64))
    p, r = precision[:-1], recall[:-1]  # the last point has no threshold
    keep = np.unique(np.linspace(0, len(thresholds) - 1, min(len(thresholds), MAX_PR_POINTS)))
    return [
        {
            "threshold": round(float(np.clip(thresholds[i], 0.0, 1.0)), 6),
            "precision": round(float(p[i]), 6),
            "recall": round(float(r[i]), 6),
        }
        for i in keep.astype(np.int64)
    ]
