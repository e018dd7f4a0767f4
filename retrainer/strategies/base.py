"""What a search strategy is given and what it returns: the contract of `STRATEGIES`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrainer.estimator import SlaNet

if TYPE_CHECKING:
    from retrainer.search import SearchConfig


@dataclass(frozen=True, eq=False)
class SearchSetup:
    """Everything a strategy builds its search from; the same for every strategy.

    `common` holds the keywords every scikit-learn search takes alike (scoring, the
    time-series `cv`, `refit`, `error_score="raise"`, `n_jobs`, ...); `config` the
    strategy's own knobs (`n_iter`, `halving_factor`, `seed`, ...).
    """

    #: The unfitted net every candidate is cloned from.
    estimator: SlaNet
    #: The candidates as scikit-learn parameter grids (`retrainer.search.expand_grid`).
    grid: list[dict[str, list[Any]]]
    common: Mapping[str, Any]
    config: SearchConfig


#: Builds an unfitted scikit-learn search (a `BaseSearchCV`) from a `SearchSetup`.
#: Promises: it scores, splits and refits as `common` says (so every strategy's
#: winner is judged the same way), and draws any randomness from `config.seed`.
BuildSearch = Callable[[SearchSetup], Any]
