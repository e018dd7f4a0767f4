"""The forecasters a tenant can get, each fitted on its training rows and judged out of fold.

Every candidate is a gated `SlaMLP` (one format, one serving path): while the tenant is
quiet (no breach in the last 12 intervals: where a warning can still come early) a
"quiet head" speaks, during and just after an incident a logistic map of the tenant's
recent breaches does. The quiet heads:

* ``mlp``: the network the search chose, trained on the quiet rows only;
* ``linear_trend``: a logistic map of one metric's ``predict_linear``-style projection
  (the trend over a window, read `trend_ahead` events on);
* ``seasonal_naive``: of one metric's value one day before the target time;
* ``level``: of one metric's value (a learned level: where the map crosses 1/2);
* ``prior``: the quiet rows' breach-within-horizon rate.

A rule's metric is learned, never told: each candidate column is fitted, and the one
that warns best out of fold is the rule of its kind. Out-of-fold predictions come from
blocked time folds with a purge gap of the feature history plus the horizon, so no
validation row's label or window was seen in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.base import clone

from kernel.artifacts import predict_proba
from kernel.mlp import MAX_Z, SlaMLP
from retrainer.dataset import SupervisedSet
from retrainer.estimator import SlaNet
from schemas.telemetry import FEATURES

KINDS: Final = ("mlp", "linear_trend", "seasonal_naive", "level", "prior")
#: Inputs of the incident head: the tenant's own recent breaches.
INCIDENT_PREFIXES: Final = ("breach",)
#: Fewest training rows (and positives) a fold must have to be fitted.
MIN_FOLD_ROWS: Final = 60
MIN_FOLD_POSITIVES: Final = 2
#: Platt maps stronger than this are not trusted (a handful of rows made them).
MAX_PLATT_SLOPE: Final = 4.0
_EPS: Final = 1e-4
_NEWTON_STEPS: Final = 50

Index = NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class CandidateRows:
    """A tenant's supervised pairs as the candidates read them.

    Built from a `SupervisedSet`, itself from the raw events of a `retrainer.replay.TenantRows`.
    """

    X: NDArray[np.float32]
    y: NDArray[np.float64]
    ts: NDArray[np.float64]
    names: tuple[str, ...]
    #: t's own breach flag and whether t is quiet.
    breach: NDArray[np.bool_]
    quiet: NDArray[np.bool_]

    @classmethod
    def of(cls, data: SupervisedSet) -> CandidateRows:
        names = data.feature_names
        if "quiet" not in names:
            raise ValueError("the feature spec has no 'quiet' column (feature version 2 has)")
        return cls(
            X=data.X,
            y=data.y.astype(np.float64),
            ts=data.ts,
            names=names,
            breach=data.X[:, names.index("breach")] >= 0.5,
            quiet=data.X[:, names.index("quiet")] >= 0.5,
        )

    def __len__(self) -> int:
        return len(self.y)

    def column(self, name: str) -> int:
        return self.names.index(name)


@dataclass(frozen=True)
class Folds:
    """Blocked time folds: each validates one block on every row before it, less a gap."""

    splits: tuple[tuple[Index, Index], ...]

    @property
    def valid(self) -> Index:
        return np.concatenate([v for _, v in self.splits]) if self.splits else _EMPTY

    @property
    def segments(self) -> Index:
        """Each validation row's fold number (onsets never span two folds)."""
        if not self.splits:
            return _EMPTY
        return np.concatenate(
            [np.full(len(v), k, np.int64) for k, (_, v) in enumerate(self.splits)]
        )


_EMPTY: Final = np.zeros(0, np.int64)


def blocked_folds(rows: CandidateRows, n_splits: int, gap: int) -> Folds:
    """`n_splits` folds over `n_splits + 1` equal blocks of time; block 0 only trains.

    A fold whose training part has too few rows or quiet positives is left out.
    """
    n = len(rows)
    edges = np.linspace(0, n, n_splits + 2).astype(np.int64)
    splits = []
    for k in range(1, n_splits + 1):
        train = np.arange(0, max(int(edges[k]) - gap, 0), dtype=np.int64)
        valid = np.arange(int(edges[k]), int(edges[k + 1]), dtype=np.int64)
        quiet = train[rows.quiet[train]]
        if len(quiet) < MIN_FOLD_ROWS or rows.y[quiet].sum() < MIN_FOLD_POSITIVES or not len(valid):
            continue
        splits.append((train, valid))
    return Folds(tuple(splits))


@dataclass(eq=False)
class Candidate:
    """One forecaster: its out-of-fold probabilities and the module fitted on every row."""

    kind: str
    #: The rule's input column (None for the network and the prior).
    column: str | None
    #: P(breach within the horizon) on `Folds.valid` rows, from models that did not see them.
    oof: NDArray[np.float64]
    module: SlaMLP
    #: The final module's probabilities on every training row (for the policy's transfer).
    fitted: NDArray[np.float64]
    params: dict[str, object] = field(default_factory=dict)


def _logistic(
    z: NDArray[np.float64], y: NDArray[np.float64], c: float = 1.0
) -> tuple[NDArray[np.float64], float]:
    """Coefficients and intercept of an L2 logistic regression; a constant for one class.

    Newton's method on at most a handful of columns (the rules and the incident head):
    the same optimum as scikit-learn's ``LogisticRegression(C=c)`` (the intercept
    unpenalised), at a hundredth of its cost per fit.
    """
    rate = float(np.clip((y.sum() + 0.5) / (len(y) + 1.0), _EPS, 1 - _EPS))
    intercept = math.log(rate / (1 - rate))
    d = z.shape[1]
    if len(y) == 0 or y.min() == y.max() or d == 0:
        return np.zeros(d), intercept
    A = np.column_stack((z, np.ones(len(y))))
    w = np.zeros(d + 1)
    w[-1] = intercept
    penalty = np.full(d + 1, 1.0 / c)
    penalty[-1] = 0.0
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ w, -30.0, 30.0)))
        gradient = A.T @ (p - y) + penalty * w
        hessian = (A * (p * (1 - p))[:, None]).T @ A + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return w[:-1].copy(), float(w[-1])


def _zscores(module: SlaMLP, X: NDArray[np.float32], columns: Sequence[int]) -> NDArray[np.float64]:
    mean = module.feature_mean.numpy()[list(columns)]
    std = module.feature_std.numpy()[list(columns)]
    z: NDArray[np.float64] = np.clip((X[:, list(columns)] - mean) / std, -MAX_Z, MAX_Z)
    return z.astype(np.float64)


def _incident_columns(names: Sequence[str]) -> list[int]:
    return [i for i, name in enumerate(names) if name.startswith(INCIDENT_PREFIXES)]


def gate(module: SlaMLP, rows: CandidateRows, train: Index) -> SlaMLP:
    """`module` (trained for quiet rows) as a gated forecaster, fitted on `train`.

    Copies the network into a gated module of the same shape, fits the incident head on
    the non-quiet training rows, and records the training range of the six metrics for
    the out-of-distribution shrinkage.
    """
    arch = {**module.architecture(), "gated": True}
    gated = SlaMLP(**arch)  # type: ignore[arg-type]
    gated.load_state_dict(module.state_dict(), strict=False)
    columns = _incident_columns(rows.names)
    busy = train[~rows.quiet[train]]
    coef, intercept = _logistic(_zscores(gated, rows.X[busy], columns), rows.y[busy])
    watch = np.zeros(len(rows.names), np.float32)
    watch[: len(FEATURES)] = 1.0  # the metrics at t: a level never seen in training
    X = rows.X[train]
    rate = float(np.clip(rows.y[train].mean(), _EPS, 1 - _EPS))
    with torch.no_grad():
        gated.incident.weight.zero_()
        gated.incident.weight[0, columns] = torch.as_tensor(coef, dtype=torch.float32)
        gated.incident.bias.fill_(intercept)
        gated.prior_logit.fill_(math.log(rate / (1 - rate)))
    gated.set_gate(rows.column("quiet"), X.min(axis=0), X.max(axis=0), watch)
    gated.eval()
    return gated


def _normalised(rows: CandidateRows, train: Index) -> SlaMLP:
    """A depth-0 module normalised on the quiet training rows, its head all zero."""
    quiet = train[rows.quiet[train]]
    X = rows.X[quiet] if len(quiet) else rows.X[train]
    module = SlaMLP(n_features=len(rows.names), hidden_layers=0)
    module.set_normalization(X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64))
    with torch.no_grad():
        module.head.weight.zero_()
        module.head.bias.zero_()
    return module


def fit_rule(rows: CandidateRows, train: Index, column: str | None) -> SlaMLP:
    """A rule on `column` (the prior when None), fitted on `train`, gated."""
    module = _normalised(rows, train)
    quiet = train[rows.quiet[train]]
    index = [] if column is None else [rows.column(column)]
    coef, intercept = _logistic(
        _zscores(module, rows.X[quiet], index) if index else np.zeros((len(quiet), 0)),
        rows.y[quiet],
    )
    with torch.no_grad():
        if index:
            module.head.weight[0, index] = torch.as_tensor(coef, dtype=torch.float32)
        module.head.bias.fill_(intercept)
    return gate(module, rows, train)


def rule_columns(names: Sequence[str]) -> dict[str, list[str]]:
    """The input columns each rule kind may learn to watch."""
    base = list(names[: len(FEATURES)])
    return {
        "linear_trend": [n for n in names if "_projected_" in n],
        "seasonal_naive": [n for n in names if n.endswith("_day_before")],
        "level": base,
    }


def _out_of_fold(
    rows: CandidateRows, folds: Folds, fit: Callable[[Index], SlaMLP]
) -> NDArray[np.float64]:
    parts = [
        predict_proba(fit(train), rows.X[valid]).astype(np.float64) for train, valid in folds.splits
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def rule_candidates(rows: CandidateRows, folds: Folds) -> list[Candidate]:
    """Every rule on every column it may watch, and the prior: cheap, closed-form fits."""
    everything = np.arange(len(rows), dtype=np.int64)
    out = []
    choices: list[tuple[str, str | None]] = [("prior", None)]
    for kind, columns in rule_columns(rows.names).items():
        choices += [(kind, column) for column in columns]
    for kind, column in choices:
        oof = _out_of_fold(rows, folds, partial(fit_rule, rows, column=column))
        final = fit_rule(rows, everything, column)
        fitted = predict_proba(final, rows.X).astype(np.float64)
        out.append(Candidate(kind, column, oof, final, fitted))
    return out


def network_candidate(rows: CandidateRows, folds: Folds, best: SlaNet, final: SlaMLP) -> Candidate:
    """The searched network: refitted on each fold's quiet rows for its out-of-fold view.

    `best` is the search's winner (its parameters), `final` the module refit on every
    quiet training row.
    """

    def fit(train: Index) -> SlaMLP:
        quiet = train[rows.quiet[train]]
        net = clone(best).fit(rows.X[quiet], rows.y[quiet].astype(np.float32))
        return gate(net.module_, rows, train)

    everything = np.arange(len(rows), dtype=np.int64)
    module = gate(final, rows, everything)
    fitted = predict_proba(module, rows.X).astype(np.float64)
    return Candidate("mlp", None, _out_of_fold(rows, folds, fit), module, fitted)


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, _EPS, 1 - _EPS)
    out: NDArray[np.float64] = np.log(q / (1 - q))
    return out


def _platt(y: NDArray[np.float64], p: NDArray[np.float64]) -> tuple[float, float]:
    """(slope, intercept) of the logistic map of `p`'s logit that fits `y` best."""
    if len(y) < 10 or y.min() == y.max():
        return 1.0, 0.0
    coef, intercept = _logistic(_logit(p)[:, None], y, c=1e4)
    return float(np.clip(coef[0], 0.0, MAX_PLATT_SLOPE)), intercept


def calibrate(candidate: Candidate, rows: CandidateRows, folds: Folds) -> Candidate:
    """The candidate with each head's probabilities Platt-scaled on its out-of-fold rows.

    A one-column rule fitted on a few days of one tenant is often over-confident on the
    next fold; the map (slope at most `MAX_PLATT_SLOPE`, and >= 0 so the ranking, and
    with it every warning, stays) shrinks it toward the rate, and is folded into the
    module's heads, so the published weights give the calibrated probability.
    """
    valid = folds.valid
    quiet = rows.quiet[valid]
    y = rows.y[valid]
    maps = {
        True: _platt(y[quiet], candidate.oof[quiet]),
        False: _platt(y[~quiet], candidate.oof[~quiet]),
    }
    oof = candidate.oof.copy()
    for side, (slope, intercept) in maps.items():
        part = quiet == side
        oof[part] = 1.0 / (1.0 + np.exp(-np.clip(slope * _logit(oof[part]) + intercept, -30, 30)))
    module = candidate.module
    with torch.no_grad():
        for layer, (slope, intercept) in (
            (module.head, maps[True]),
            (module.incident, maps[False]),
        ):
            layer.weight.mul_(slope)
            layer.bias.mul_(slope).add_(intercept)
    fitted = predict_proba(module, rows.X).astype(np.float64)
    params = {**candidate.params, "platt_quiet": maps[True], "platt_incident": maps[False]}
    return Candidate(candidate.kind, candidate.column, oof, module, fitted, params)
