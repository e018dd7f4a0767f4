"""Search strategies: how a search draws and judges its candidates, one module each.

Every strategy searches the same grid with the same time-series folds, scoring and
refit (`base.SearchSetup`); they differ in which candidates get how many fits. Adding
one is a module with a `build(setup)` and one line in `STRATEGIES`: `SearchConfig`
checks `strategy` against it, and the `strategy` setting (its validation, `--help` and
README row) is generated from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from retrainer.strategies import bayes, grid, halving, randomized
from retrainer.strategies.base import BuildSearch, SearchSetup

__all__ = ["STRATEGIES", "BuildSearch", "SearchSetup", "StrategyName", "strategy_builder"]

#: A strategy's name: a key of `STRATEGIES`.
StrategyName = str

#: Strategy name -> what builds its scikit-learn search.
STRATEGIES: Final[Mapping[StrategyName, BuildSearch]] = {
    "grid": grid.build,
    "random": randomized.build,
    "halving": halving.build,
    "bayes": bayes.build,
}


def strategy_builder(name: object) -> BuildSearch:
    """The builder of strategy `name`; raises `ValueError` naming the known ones."""
    build = STRATEGIES.get(name) if isinstance(name, str) else None
    if build is None:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return build
