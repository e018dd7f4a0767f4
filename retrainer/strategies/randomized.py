"""`random`: `n_iter` candidates drawn with the config's seed (`RandomizedSearchCV`)."""

from __future__ import annotations

from typing import Any

from sklearn.model_selection import RandomizedSearchCV

from retrainer.strategies.base import SearchSetup


def build(setup: SearchSetup) -> Any:
    config = setup.config
    return RandomizedSearchCV(
        setup.estimator,
        setup.grid,
        n_iter=min(config.n_iter, config.n_candidates),
        random_state=config.seed,
        **setup.common,
    )
