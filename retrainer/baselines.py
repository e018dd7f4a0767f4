"""Forecasts that need no network, fitted on the same training rows and scored on the
same holdout as the challenger: what a model must beat to be worth publishing.

* ``prior``: the tenant's breach rate on the training rows, for every interval.
* ``persistence``: "this interval's breach" -- the hard forecast is the breach flag
  at t; its probabilities are P(breach at t+h | breach at t) counted on the training
  rows (Laplace-smoothed), so that log loss and Brier are defined.
* ``logistic``: a logistic regression on the same features (standardised).

Skill over a baseline is ``1 - score / baseline_score`` for log loss and Brier
(positive: better than the baseline) and a difference for F1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from retrainer.dataset import SupervisedSet
from retrainer.metrics import evaluate_proba, f1_threshold

BASELINES: Final = ("prior", "persistence", "logistic")
#: The baselines a challenger must beat (probabilistic skill > 0) to go live.
GATED_BASELINES: Final = ("prior", "persistence")
_EPS: Final = 1e-6


@dataclass(frozen=True)
class BaselineForecasts:
    """Each baseline's holdout probabilities, hard forecasts and metrics."""

    metrics: dict[str, dict[str, float]]
    proba: dict[str, NDArray[np.float64]]


def persistence_proba(flags: Any, y: Any) -> NDArray[np.float64]:
    """P(y = 1 | flag) for flag 0 and 1, Laplace-smoothed: the persistence forecast.

    >>> persistence_proba(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])).tolist()
    [0.25, 0.5]
    """
    now = np.asarray(flags) >= 0.5
    target = np.asarray(y, dtype=np.float64)
    return np.array(
        [(target[now == flag].sum() + 1.0) / ((now == flag).sum() + 2.0) for flag in (False, True)]
    )


def _breach_now(data: SupervisedSet, rows: NDArray[np.int64]) -> NDArray[np.bool_]:
    column = data.feature_names.index("breach")
    flags: NDArray[np.bool_] = data.X[rows, column] >= 0.5
    return flags


def score_baselines(
    data: SupervisedSet,
    train_idx: NDArray[np.int64],
    holdout_idx: NDArray[np.int64],
    *,
    seed: int = 0,
) -> BaselineForecasts:
    """Fit every baseline on `train_idx` and score it on `holdout_idx`."""
    y_train = data.y[train_idx].astype(np.float64)
    y_hold = data.y[holdout_idx]
    n_hold = len(holdout_idx)
    metrics: dict[str, dict[str, float]] = {}
    proba: dict[str, NDArray[np.float64]] = {}

    rate = float(np.clip(y_train.mean(), _EPS, 1 - _EPS))
    proba["prior"] = np.full(n_hold, rate)
    metrics["prior"] = evaluate_proba(y_hold, proba["prior"], 0.5)

    now_train = _breach_now(data, train_idx)
    now_hold = _breach_now(data, holdout_idx)
    given = persistence_proba(now_train, y_train)
    proba["persistence"] = np.where(now_hold, given[1], given[0]).astype(np.float64)
    metrics["persistence"] = evaluate_proba(y_hold, proba["persistence"], 0.5, y_pred=now_hold)

    logistic = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    )
    logistic.fit(data.X[train_idx], data.y[train_idx].astype(np.int64))
    fitted = logistic.predict_proba(data.X[train_idx])[:, 1]
    threshold = f1_threshold(y_train, fitted)
    proba["logistic"] = logistic.predict_proba(data.X[holdout_idx])[:, 1].astype(np.float64)
    metrics["logistic"] = evaluate_proba(y_hold, proba["logistic"], threshold)
    return BaselineForecasts(metrics=metrics, proba=proba)


def skill(
    model: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """The model's skill over each baseline: ``log_loss_skill_vs_prior`` and so on.

    >>> skill({"log_loss": 0.3, "brier": 0.1, "f1": 0.6},
    ...       {"prior": {"log_loss": 0.6, "brier": 0.2, "f1": 0.0}})
    {'log_loss_skill_vs_prior': 0.5, 'brier_skill_vs_prior': 0.5, 'f1_gain_vs_prior': 0.6}
    """
    out: dict[str, float] = {}
    for name, base in baselines.items():
        for metric in ("log_loss", "brier"):
            reference = float(base[metric])
            value = 1.0 - float(model[metric]) / reference if reference > 0 else math.nan
            out[f"{metric}_skill_vs_{name}"] = round(value, 12)
        out[f"f1_gain_vs_{name}"] = round(float(model["f1"]) - float(base["f1"]), 12)
    return out


def losing_baseline(skills: Mapping[str, float]) -> tuple[str, str] | None:
    """(baseline, why) for the first gated baseline the model does not beat, else None.

    A model must have positive log-loss skill over the prior and over persistence,
    and positive Brier skill over the prior: its probabilities must carry more
    information than the breach rate and than "this interval's breach".
    """
    checks: list[tuple[str, str]] = [
        ("prior", "log_loss"),
        ("prior", "brier"),
        ("persistence", "log_loss"),
    ]
    for baseline, metric in checks:
        value = skills.get(f"{metric}_skill_vs_{baseline}", math.nan)
        if not (math.isfinite(value) and value > 0):
            return baseline, f"{metric} skill vs {baseline} is {value:.4f} (must be > 0)"
    return None


def as_card(forecasts: BaselineForecasts) -> dict[str, Any]:
    """Baseline metrics as strict JSON can carry them (NaN dropped)."""
    return {
        name: {k: float(v) for k, v in values.items() if math.isfinite(v)}
        for name, values in forecasts.metrics.items()
    }
