"""Forecasts that need no network, fitted on each fold's training rows and scored on the
same out-of-fold rows as every candidate: what a forecaster is set beside.

* ``prior``: the tenant's rate of "a breach within the horizon" on the training rows.
* ``persistence``: "this interval's breach" -- the hard forecast is the breach flag
  at t; its probabilities are P(breach within the horizon | breach at t) counted on the
  training rows (Laplace-smoothed), so that log loss and Brier are defined.
* ``logistic``: a logistic regression on the same features (standardised).

Skill over a baseline is ``1 - score / baseline_score`` for log loss and Brier
(positive: better than the baseline) and a difference for F1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from retrainer.metrics import evaluate_proba

if TYPE_CHECKING:  # the forecasters import the estimator, which imports this module
    from retrainer.forecasters import CandidateRows, Folds

BASELINES: Final = ("prior", "persistence", "logistic")
#: The baselines a challenger must beat (probabilistic skill > 0) to go live.
GATED_BASELINES: Final = ("prior", "persistence")
_EPS: Final = 1e-6


@dataclass(frozen=True)
class BaselineForecasts:
    """Each baseline's out-of-fold probabilities, hard forecasts and metrics."""

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


def oof_baselines(rows: CandidateRows, folds: Folds, *, seed: int = 0) -> BaselineForecasts:
    """Every baseline fitted on each fold's training rows, scored on its validation rows.

    The same out-of-fold rows every candidate is judged on (`Folds.valid`), so a card's
    baselines and its forecaster answer the same question on the same data.
    """
    valid = folds.valid
    y = rows.y[valid]
    parts: dict[str, list[NDArray[np.float64]]] = {name: [] for name in BASELINES}
    for train, check in folds.splits:
        y_train = rows.y[train]
        rate = float(np.clip(y_train.mean(), _EPS, 1 - _EPS))
        parts["prior"].append(np.full(len(check), rate))
        given = persistence_proba(rows.breach[train], y_train)
        parts["persistence"].append(np.where(rows.breach[check], given[1], given[0]))
        if 0 < y_train.sum() < len(y_train):
            logistic = make_pipeline(
                StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
            )
            logistic.fit(rows.X[train], y_train.astype(np.int64))
            parts["logistic"].append(logistic.predict_proba(rows.X[check])[:, 1])
        else:
            parts["logistic"].append(np.full(len(check), rate))
    proba = {
        name: np.concatenate(p).astype(np.float64) if p else np.zeros(0)
        for name, p in parts.items()
    }
    metrics = {
        "prior": evaluate_proba(y, proba["prior"], 0.5),
        "persistence": evaluate_proba(y, proba["persistence"], 0.5, y_pred=rows.breach[valid]),
        "logistic": evaluate_proba(y, proba["logistic"], 0.5),
    }
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
