"""`grid`: every candidate, each cross-validated on every fold (`GridSearchCV`)."""

from __future__ import annotations

from typing import Any

from sklearn.model_selection import GridSearchCV

from retrainer.strategies.base import SearchSetup


def build(setup: SearchSetup) -> Any:
    return GridSearchCV(setup.estimator, setup.grid, **setup.common)
