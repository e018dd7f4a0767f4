"""Hyper-parameter search for the network candidate of one tenant's forecaster.

`run_search` searches the given rows (the tenant's quiet rows: where early warning
lives; see `retrainer.forecasters`) with the strategy's scikit-learn search
(`retrainer.strategies`: `GridSearchCV`, `RandomizedSearchCV`, `HalvingGridSearchCV`,
or an Optuna study for `bayes`) over :class:`SlaNet`, a skorch `NeuralNetBinaryClassifier` around
:class:`~kernel.mlp.SlaMLP`, cross-validated on the caller's blocked time folds (never
shuffled, a purge gap between training and validation rows), scored by log loss, and
refits the winner on every row searched. It holds nothing out: the winner is judged
beside the other candidates on out-of-fold predictions over the whole training window
(`retrainer.selection`), not on one tail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.base import clone
from sklearn.metrics import (
    log_loss,
    make_scorer,
)
from sklearn.model_selection import ParameterGrid, TimeSeriesSplit

from kernel.mlp import SlaMLP
from retrainer.cancel import CancelToken
from retrainer.curves import learning_curve
from retrainer.dataset import SupervisedSet
from retrainer.errors import DatasetError, DatasetReason
from retrainer.estimator import SlaNet
from retrainer.fits import FitBackend, LocalFits
from retrainer.strategies import SearchSetup, StrategyName, strategy_builder
from retrainer.strategies.bayes import check_choices

log = logging.getLogger(__name__)

HalvingResource = Literal["n_samples", "max_epochs"]

#: Learning rate x depth: 4 candidates, at most 20 fits under 5 folds. Depth 0 (a
#: logistic regression on the same normalised features) is in the grid so that a tenant
#: whose data supports no more than a linear model gets one. Small on purpose: the
#: network competes with the learned rules (`retrainer.forecasters`), which won on most
#: streams of `bench/bench_early_warning.py`, and every tenant's retrains must fit a
#: backtest of 17 tenants in 10 minutes on 2 cores; the 3 x 3 x 2 grid of earlier rounds
#: (15 candidates) took 50 to 90 s a retrain there, this one 8 s. Wider grids are a
#: setting away (`grid`, `grid_file`).
DEFAULT_GRID: Final[Mapping[str, tuple[Any, ...]]] = {
    "lr": (1e-2, 1e-3),
    "module__hidden_layers": (0, 1),
    "module__width": (32,),
}


def default_grid() -> dict[str, list[Any]]:
    """A fresh copy of `DEFAULT_GRID` as lists (what scikit-learn's searches expect)."""
    return {name: list(values) for name, values in DEFAULT_GRID.items()}


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, list[Any]]]:
    """`grid` as scikit-learn parameter grids, searching width once for depth 0.

    >>> [len(list(ParameterGrid(g))) for g in expand_grid(DEFAULT_GRID)]
    [4]
    >>> grid = {"lr": [1e-2, 1e-3], "module__hidden_layers": [0, 1, 2], "module__width": [32, 64]}
    >>> [len(list(ParameterGrid(g))) for g in expand_grid(grid)]
    [2, 8]
    """
    plain = {name: list(values) for name, values in grid.items()}
    depths = plain.get("module__hidden_layers", [])
    widths = plain.get("module__width", [])
    if 0 not in depths or len(widths) < 2:
        return [plain]
    linear = {**plain, "module__hidden_layers": [0], "module__width": widths[:1]}
    deeper = [d for d in depths if d != 0]
    if not deeper:
        return [linear]
    return [linear, {**plain, "module__hidden_layers": deeper}]


@dataclass(frozen=True)
class SearchConfig:
    """How to search. `grid` maps `SlaNet` parameters to candidate values.

    `max_epochs`, `batch_size` and `lr` are the net's values where `grid` does not
    search them. `n_iter` is used by `random` only; `n_trials` (the most candidates
    fitted) by `bayes` only, which runs its trials in rounds of `n_jobs`
    (`retrainer.strategies.bayes`). `halving` keeps the best
    1/`halving_factor` of the candidates per round while multiplying their resource by
    `halving_factor`: rows of each fold (`n_samples`, random rows of the fold, the
    final round on whole folds) or `max_epochs` (up to `max_epochs`; the winner is
    refit with the epochs of its last round, which may be fewer).

    With 15 candidates and factor 3, halving runs 3 rounds that each cost about a
    ninth of the grid, so it is at most ~3x cheaper by construction; small rounds cost
    more than their share (a batch step costs about the same for 80 rows as for 256).
    Each fit trains up to `max_epochs` in batches of `batch_size`, stopping early
    when the log loss on the newest `valid_fraction` of its own rows has not improved
    for `patience` epochs. `balance_classes` (off by default) weights breaches by
    n_neg / n_pos in the loss: probabilities then lean towards breach, so every
    consumer of them (selection, champion/challenger, downstream users) would read
    them wrong; the warning threshold is tuned instead. `persistence_offset` starts
    the network from "this interval's breach" (off by default: on quiet rows, where the
    network speaks, that flag is always 0). `fits` says where the fits run
    (`LocalFits`: `n_jobs` local processes).
    """

    #: A key of `retrainer.strategies.STRATEGIES`.
    strategy: StrategyName = "grid"
    grid: Mapping[str, Sequence[Any]] = field(default_factory=default_grid)
    n_splits: int = 5
    scoring: str = "neg_log_loss"
    n_jobs: int = 2
    seed: int = 0
    max_epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    n_iter: int = 6
    n_trials: int = 20
    halving_factor: int = 3
    halving_resource: HalvingResource = "n_samples"
    balance_classes: bool = False
    valid_fraction: float = 0.15
    patience: int = 8
    weight_decay: float = 1e-4
    persistence_offset: bool = False
    fits: FitBackend = field(default_factory=LocalFits)
    #: Every fit stops after its epoch once this is cancelled (a revocation).
    cancel: CancelToken | None = None

    def __post_init__(self) -> None:
        strategy_builder(self.strategy)  # raises ValueError naming the known strategies
        if self.halving_resource not in ("n_samples", "max_epochs"):
            raise ValueError(f"unknown halving_resource {self.halving_resource!r}")
        if not self.grid or any(
            isinstance(v, str) or not isinstance(v, Sequence) or len(v) == 0
            for v in self.grid.values()
        ):
            raise ValueError("grid must map each parameter to a non-empty list of values")
        for name, minimum in (
            ("n_splits", 2),
            ("max_epochs", 1),
            ("batch_size", 1),
            ("n_iter", 1),
            ("n_trials", 1),
            ("halving_factor", 2),
            ("patience", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.n_jobs == 0:
            raise ValueError("n_jobs must not be 0")
        if self.strategy == "bayes":
            check_choices(self.grid)
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction!r}")

    @property
    def n_candidates(self) -> int:
        return sum(len(ParameterGrid(g)) for g in expand_grid(self.grid))

    def estimator(self) -> SlaNet:
        """The unfitted net every candidate is cloned from.

        Adam runs its fused kernel: on these small tensors the per-step Python work of
        the default implementation is a fifth of a fit.
        """
        return SlaNet(
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            balance_classes=self.balance_classes,
            valid_fraction=self.valid_fraction,
            patience=self.patience,
            optimizer__fused=True,
            optimizer__weight_decay=self.weight_decay,
            cancel=self.cancel,
        )


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The refit winner and how it was chosen."""

    strategy: StrategyName
    best_params: dict[str, Any]
    #: The winner as the search fitted it (clone it to fit again with its parameters).
    best: SlaNet
    #: The winner refit on every searched row.
    module: SlaMLP
    cv_table: list[dict[str, Any]]
    fit_seconds: float
    search_seconds: float
    #: The rows searched (indices into the `SupervisedSet`).
    rows: NDArray[np.int64]
    n_fits: int
    #: The winner's epochs (train and validation-tail loss) before its refit on every row.
    learning_curve: list[dict[str, Any]] = field(default_factory=list)
    #: `bayes` only: each trial (number, params, loss or None, pruned, fits), in order.
    trials: list[dict[str, Any]] = field(default_factory=list)


def _log_loss_scorer() -> Any:
    # labels=[0, 1] keeps a validation fold without any breach scoreable.
    return make_scorer(
        log_loss, greater_is_better=False, response_method="predict_proba", labels=[0, 1]
    )


def _make_search(config: SearchConfig, cv: Any, offset_column: int | None, n_jobs: int) -> Any:
    scoring = _log_loss_scorer() if config.scoring == "neg_log_loss" else config.scoring
    common: dict[str, Any] = {
        "scoring": scoring,
        "cv": cv,
        "refit": True,
        "error_score": "raise",
        "n_jobs": n_jobs,
        "return_train_score": False,
    }
    estimator = config.estimator().set_params(offset_column=offset_column)
    setup = SearchSetup(estimator, expand_grid(config.grid), common, config)
    return strategy_builder(config.strategy)(setup)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def _cv_table(cv_results: Mapping[str, Any], scoring: str) -> list[dict[str, Any]]:
    """One row per evaluated candidate (per halving iteration), best first.

    Rank orders by halving iteration (the last first), then by mean validation score;
    for grid and random search that is just the score.
    """
    n = len(cv_results["params"])
    iters = np.asarray(cv_results.get("iter", np.zeros(n, dtype=int)))
    scores = np.asarray(cv_results["mean_test_score"], dtype=np.float64)
    order = sorted(range(n), key=lambda i: (-iters[i], -np.nan_to_num(scores[i], nan=-np.inf)))
    rows = []
    for rank, i in enumerate(order, start=1):
        row: dict[str, Any] = {
            "params": {k: _jsonable(v) for k, v in cv_results["params"][i].items()},
            "mean_val_score": float(scores[i]),
            "std_val_score": float(cv_results["std_test_score"][i]),
            "mean_fit_seconds": float(cv_results["mean_fit_time"][i]),
            "rank": rank,
        }
        if scoring == "neg_log_loss":
            row["mean_val_log_loss"] = -row["mean_val_score"]
            row["std_val_log_loss"] = row["std_val_score"]
        if "iter" in cv_results:
            row["iter"] = int(cv_results["iter"][i])
            row["n_resources"] = int(cv_results["n_resources"][i])
        rows.append(row)
    return rows


def _refit_on_every_row(best: SlaNet, X: NDArray[np.float32], y: NDArray[np.float32]) -> SlaNet:
    """The winner again, on ALL training rows for the epochs early stopping chose.

    The refit that picked those epochs held back the newest rows to validate on; they are
    the rows most like the future, so the model that ships learns from them too.
    """
    losses = [row.get("valid_loss") for row in best.history]
    if not losses or any(loss is None for loss in losses):
        return best  # trained without a validation tail: already on every row
    epochs = int(np.nanargmin(np.asarray(losses, dtype=np.float64))) + 1
    final = clone(best).set_params(valid_fraction=0.0, train_split=None, max_epochs=epochs)
    final.fit(X, y)
    return final


Splits = list[tuple[NDArray[np.int64], NDArray[np.int64]]]


def run_search(
    data: SupervisedSet,
    config: SearchConfig | None = None,
    *,
    rows: NDArray[np.int64] | None = None,
    splits: Splits | None = None,
) -> SearchResult:
    """Search `data`'s `rows` (all by default) on `splits` (indices into those rows).

    Without `splits`, scikit-learn's `TimeSeriesSplit` with `n_splits`. Raises
    `DatasetError` when the rows hold one class or too few rows for the folds.
    """
    config = config or SearchConfig()
    started = time.perf_counter()
    chosen = np.arange(len(data), dtype=np.int64) if rows is None else np.asarray(rows)
    X, y = data.X[chosen], data.y[chosen]
    n_pos = int(np.count_nonzero(y))
    if n_pos in (0, y.shape[0]):
        raise DatasetError(
            DatasetReason.SINGLE_CLASS, f"the {y.shape[0]} rows to search have one class"
        )
    if y.shape[0] < 2 * (config.n_splits + 1):
        raise DatasetError(
            DatasetReason.TOO_FEW_ROWS,
            f"{y.shape[0]} rows to search for {config.n_splits} time-series folds",
            hint="wait for more of the tenant's telemetry or lower n_splits (SLAOPS_N_SPLITS)",
        )
    cv: Any = splits if splits else TimeSeriesSplit(n_splits=config.n_splits)
    offset = data.feature_names.index("breach") if config.persistence_offset else None
    log.info(
        "search strategy=%s candidates=%d rows=%d sha256=%s fits=%s",
        config.strategy,
        config.n_candidates,
        len(chosen),
        data.sha256[:12],
        config.fits.describe(),
    )
    with config.fits.fits(X, y, config.n_jobs) as n_jobs:
        search = _make_search(config, cv, offset, n_jobs)
        search.fit(X, y)
    search_seconds = time.perf_counter() - started
    best: SlaNet = search.best_estimator_
    curve = learning_curve(best.history)
    final = _refit_on_every_row(best, X, y)
    module = final.module_
    module.eval()
    n_folds = len(splits) if splits else config.n_splits
    # bayes counts its own (a pruned trial's fold fits up to the pruning count).
    n_fits = getattr(search, "n_fits_", len(search.cv_results_["params"]) * n_folds)
    log.info(
        "search done strategy=%s best=%s seconds=%.1f",
        config.strategy,
        search.best_params_,
        time.perf_counter() - started,
    )
    return SearchResult(
        strategy=config.strategy,
        best_params={k: _jsonable(v) for k, v in search.best_params_.items()},
        best=best,
        module=module,
        cv_table=_cv_table(search.cv_results_, config.scoring),
        fit_seconds=time.perf_counter() - started,
        search_seconds=search_seconds,
        rows=chosen,
        n_fits=n_fits,
        learning_curve=curve,
        trials=[
            {**t, "params": {k: _jsonable(v) for k, v in t["params"].items()}}
            for t in getattr(search, "trials_", [])
        ],
    )
