"""Platt scaling fitted on out-of-fold forecasts, folded into the network's last layer.

A network that early-stops on log loss is close to calibrated, but the one refit on all
training rows is trained longer on more data than any fold's and is usually somewhat
over-confident. A two-parameter map ``logit' = slope * logit + intercept``, fitted on the
pooled out-of-fold forecasts (each from a model that saw only older rows), corrects
that; it is folded into the head layer (``w' = slope * w``, ``b' = slope * b +
intercept``), so the published ``state_dict`` already gives calibrated probabilities
and nothing else needs to ship.

>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=2_000)
>>> y = rng.random(2_000) < 1 / (1 + np.exp(-z))  # the truth: P(breach) = sigmoid(z)
>>> m = fit_platt(y, 1 / (1 + np.exp(-3 * z)))  # forecasts three times too confident
>>> round(m.slope, 1)  # the map undoes it
0.3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression

from kernel.mlp import SlaMLP

_EPS: Final = 1e-6
#: Slopes outside this range mean the forecasts carry (almost) no ranking information;
#: the map is then left out rather than allowed to flatten or invert the model.
_SLOPE_RANGE: Final = (0.05, 20.0)


@dataclass(frozen=True)
class PlattMap:
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def identity(self) -> bool:
        return self.slope == 1.0 and self.intercept == 0.0

    def apply(self, proba: NDArray[Any]) -> NDArray[np.float64]:
        p = np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1 - _EPS)
        z = self.slope * np.log(p / (1 - p)) + self.intercept
        out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
        return out


def fit_platt(y: NDArray[Any], proba: NDArray[Any]) -> PlattMap:
    """The map minimising log loss of `y` given `proba` (identity if it cannot be fitted)."""
    y_arr = np.asarray(y).astype(np.int64)
    if y_arr.min(initial=0) == y_arr.max(initial=0) or len(y_arr) < 10:
        return PlattMap()
    p = np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1 - _EPS)
    z = np.log(p / (1 - p)).reshape(-1, 1)
    model = LogisticRegression(C=1e4, max_iter=1000).fit(z, y_arr)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if not _SLOPE_RANGE[0] <= slope <= _SLOPE_RANGE[1]:
        return PlattMap()
    return PlattMap(slope, intercept)


def fold_into(module: SlaMLP, mapping: PlattMap) -> None:
    """Make `module`'s logits those of `mapping` applied to its probabilities."""
    if mapping.identity:
        return
    with torch.no_grad():
        module.head.weight.mul_(mapping.slope)
        module.head.bias.mul_(mapping.slope).add_(mapping.intercept)
