"""`halving`: successive halving (`HalvingGridSearchCV`), on rows or on epochs.

Each round keeps the best 1/`halving_factor` of the candidates and multiplies their
resource by `halving_factor`: rows of each fold (`halving_resource="n_samples"`) or
`max_epochs` (up to the config's `max_epochs`; the grid then cannot search epochs).
"""

from __future__ import annotations

from typing import Any

from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import HalvingGridSearchCV

from retrainer.strategies.base import SearchSetup


def build(setup: SearchSetup) -> Any:
    config = setup.config
    if config.halving_resource == "max_epochs":
        grid = [{k: v for k, v in sub.items() if k != "max_epochs"} for sub in setup.grid]
        return HalvingGridSearchCV(
            setup.estimator,
            grid,
            factor=config.halving_factor,
            resource="max_epochs",
            max_resources=config.max_epochs,
            random_state=config.seed,
            **setup.common,
        )
    return HalvingGridSearchCV(
        setup.estimator,
        setup.grid,
        factor=config.halving_factor,
        random_state=config.seed,
        **setup.common,
    )
