"""Hyper-parameter search for one tenant's SLA-breach model, and its holdout evaluation.

`run_search` holds out the newest slice of the pairs (`time_split`), searches the
rest with scikit-learn (`GridSearchCV`, `RandomizedSearchCV` or
`HalvingGridSearchCV`) over :class:`SlaNet`, a skorch `NeuralNetBinaryClassifier`
around :class:`~slaops.model.SlaMLP`, cross-validated with `TimeSeriesSplit` (never
shuffled, so every validation row is newer than every row trained on), picks the
decision threshold on the validation folds, and measures the refit winner on the
holdout with `evaluate` -- the same function the champion is measured with.

Decision threshold (``SearchConfig.threshold_strategy``):

* ``"oof_f1"`` (default): the best parameters are re-fitted on every CV training
  fold; their predictions on the matching validation folds (out-of-fold, each from
  a model that saw only older rows) are pooled and the threshold maximising F1 on
  them is chosen. ``n_splits`` extra fits, run in parallel.
* ``"last_fold_f1"``: the same on the last (newest) fold only: one extra fit.

In both cases the holdout is never looked at before the final evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.base import clone
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    make_scorer,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    RandomizedSearchCV,
    TimeSeriesSplit,
    cross_validate,
)
from skorch import NeuralNetBinaryClassifier
from skorch.callbacks import EpochTimer, PassthroughScoring, PrintLog
from skorch.utils import is_dataset

from retrainer.dataset import DatasetError, DatasetReason, SupervisedSet, time_split
from slaops.artifacts import predict_proba
from slaops.model import SlaMLP

log = logging.getLogger(__name__)

Strategy = Literal["grid", "random", "halving"]
ThresholdStrategy = Literal["oof_f1", "last_fold_f1"]
HalvingResource = Literal["n_samples", "max_epochs"]

#: Learning rate x depth x width: 18 candidates, 90 fits under 5-fold CV.
DEFAULT_GRID: Final[Mapping[str, tuple[Any, ...]]] = {
    "lr": (1e-2, 1e-3, 1e-4),
    "module__hidden_layers": (1, 2, 3),
    "module__width": (32, 64),
}
#: Rows per forward pass when predicting (training uses `batch_size`).
_PREDICT_CHUNK: Final = 65_536


# --------------------------------------------------------------------------- estimator


class _ArrayDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor | None]]):
    """Whole-array tensors (float32 X, float32 y or None), built once per fit or predict."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor | None) -> None:
        self.X = X
        self.y = y

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.X[i], None if self.y is None else self.y[i]


class _Batches:
    """Re-iterable mini-batches sliced from `_ArrayDataset` tensors (no per-row collate).

    When `shuffle`, each pass draws a fresh permutation from torch's global RNG, which
    `SlaNet.fit` seeds, so batches are reproducible.
    """

    def __init__(self, data: _ArrayDataset, batch_size: int, shuffle: bool) -> None:
        self.data = data
        self.batch_size = max(1, batch_size)
        self.shuffle = shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        X, y = self.data.X, self.data.y
        n = int(X.shape[0])
        if self.shuffle and n > 1:
            perm = torch.randperm(n)
            X = X[perm]
            y = None if y is None else y[perm]
        for start in range(0, n, self.batch_size):
            stop = start + self.batch_size
            yield X[start:stop], None if y is None else y[start:stop]


def _as_tensor(values: Any) -> torch.Tensor:
    """float32 tensor sharing memory with `values` where possible (copied if read-only)."""
    arr = np.asarray(values, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.as_tensor(arr)


@contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run with `n_threads` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if n_threads is not None and n_threads != previous:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class SlaNet(NeuralNetBinaryClassifier):
    """skorch binary classifier around `SlaMLP`, made for cross-validated search.

    Per `fit`, from the data passed to that fit only:

    * the module's normalisation buffers get the column mean/std of `X`
      (`feature_mean_`, `feature_std_`), and `module__n_features` defaults to `X`'s width;
    * with `balance_classes`, `criterion__pos_weight` defaults to n_neg / n_pos
      (`pos_weight_`; 1.0 when a class is missing), unless given explicitly;
    * torch's RNG is seeded with `seed` (inside `torch.random.fork_rng`, so the
      caller's RNG state is untouched) and torch runs `num_threads` threads (one per
      joblib worker by default; the caller's setting is restored afterwards).

    Data is fed from whole tensors sliced into batches (no per-row `Dataset` and
    `DataLoader` collate); training batches are shuffled per epoch. `train_split`
    defaults to None: the cross-validation around the net is the validation.

    Parameters route the skorch way: `lr`, `max_epochs`, `batch_size`,
    `module__hidden_layers`, `module__width`, `module__dropout`, `module__activation`,
    `optimizer__weight_decay`, ...
    """

    def __init__(
        self,
        module: type[torch.nn.Module] | torch.nn.Module = SlaMLP,
        *,
        criterion: type[torch.nn.Module] = torch.nn.BCEWithLogitsLoss,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        lr: float = 1e-3,
        max_epochs: int = 20,
        batch_size: int = 256,
        train_split: Any = None,
        verbose: int = 0,
        seed: int = 0,
        balance_classes: bool = True,
        num_threads: int | None = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            verbose=verbose,
            **kwargs,
        )
        self.seed = seed
        self.balance_classes = balance_classes
        self.num_threads = num_threads

    @property
    def _default_callbacks(self) -> list[tuple[str, Any]]:
        # skorch's, less `valid_acc`: under CV there is no internal validation set to
        # score (`valid_loss` stays for callers who do set a `train_split`).
        return [
            ("epoch_timer", EpochTimer()),
            ("train_loss", PassthroughScoring(name="train_loss", on_train=True)),
            ("valid_loss", PassthroughScoring(name="valid_loss")),
            ("print_log", PrintLog()),
        ]

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> SlaNet:
        # Nothing learned from an earlier fit may leak into this one.
        self.feature_mean_ = self.feature_std_ = self.pos_weight_ = None
        if not is_dataset(X):
            X_arr = np.asarray(X, dtype=np.float32)
            if X_arr.ndim != 2:
                raise ValueError(f"X must be 2-D, got shape {X_arr.shape}")
            self.n_features_in_ = int(X_arr.shape[1])
            self.feature_mean_ = X_arr.mean(axis=0, dtype=np.float64).astype(np.float32)
            self.feature_std_ = X_arr.std(axis=0, dtype=np.float64).astype(np.float32)
            if y is not None:
                y_arr = np.asarray(y)
                n_pos = int(np.count_nonzero(y_arr))
                n_neg = int(y_arr.shape[0]) - n_pos
                self.pos_weight_ = n_neg / n_pos if n_pos and n_neg else 1.0
            X = X_arr
        with _torch_threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            super().fit(X, y, **fit_params)
        return self

    def initialize_module(self) -> SlaNet:
        kwargs = self.get_params_for("module")
        n_features = getattr(self, "n_features_in_", None)
        if n_features is not None and "n_features" not in kwargs and isinstance(self.module, type):
            kwargs["n_features"] = n_features
        self.module_ = self.initialized_instance(self.module, kwargs)
        mean, std = getattr(self, "feature_mean_", None), getattr(self, "feature_std_", None)
        if mean is not None and std is not None and hasattr(self.module_, "set_normalization"):
            self.module_.set_normalization(mean, std)
        return self

    def initialize_criterion(self) -> SlaNet:
        kwargs = self.get_params_for("criterion")
        pos_weight = getattr(self, "pos_weight_", None)
        if self.balance_classes and pos_weight is not None and "pos_weight" not in kwargs:
            kwargs["pos_weight"] = torch.tensor(pos_weight, dtype=torch.float32)
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def _set_training(self, training: bool = True) -> None:
        # skorch flips every module's mode on every batch; skip the recursive
        # `train()` walk when the mode is already right (it is, after the first batch).
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, torch.nn.Module) and module.training != training:
                module.train(training)

    def get_dataset(self, X: Any, y: Any = None) -> Any:
        if is_dataset(X):
            return super().get_dataset(X, y)
        y_t = None if y is None else _as_tensor(y)
        return _ArrayDataset(_as_tensor(X), y_t)

    def get_iterator(self, dataset: Any, training: bool = False) -> Any:
        if not isinstance(dataset, _ArrayDataset):
            return super().get_iterator(dataset, training=training)
        if training:
            batch_size = self.get_params_for("iterator_train").get("batch_size", self.batch_size)
            if batch_size == -1:
                batch_size = len(dataset)
            return _Batches(dataset, batch_size, shuffle=True)
        return _Batches(dataset, _PREDICT_CHUNK, shuffle=False)


# --------------------------------------------------------------------------- search


def default_grid() -> dict[str, list[Any]]:
    """A fresh copy of `DEFAULT_GRID` as lists (what scikit-learn's searches expect)."""
    return {name: list(values) for name, values in DEFAULT_GRID.items()}


@dataclass(frozen=True)
class SearchConfig:
    """How to search. `grid` maps `SlaNet` parameters to candidate values.

    `max_epochs`, `batch_size` and `lr` are the net's values where `grid` does not
    search them. `n_iter` is used by `random` only. `halving` keeps the best
    1/`halving_factor` of the candidates per round while multiplying their resource by
    `halving_factor`: rows of each fold (`n_samples`, random rows of the fold, the
    final round on whole folds) or `max_epochs` (up to `max_epochs`; the winner is
    refit with the epochs of its last round, which may be fewer).

    With 18 candidates and factor 3, halving runs 3 rounds that each cost about a
    ninth of the grid, so it is at most ~3x cheaper by construction; small rounds cost
    more than their share (a batch step costs about the same for 80 rows as for 256).
    `balance_classes` weights breaches by n_neg / n_pos in the loss (probabilities
    then lean towards breach; the chosen threshold accounts for it).
    """

    strategy: Strategy = "grid"
    grid: Mapping[str, Sequence[Any]] = field(default_factory=default_grid)
    n_splits: int = 5
    scoring: str = "neg_log_loss"
    n_jobs: int = 2
    seed: int = 0
    max_epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    n_iter: int = 6
    halving_factor: int = 3
    halving_resource: HalvingResource = "n_samples"
    holdout_fraction: float = 0.15
    threshold_strategy: ThresholdStrategy = "oof_f1"
    balance_classes: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in ("grid", "random", "halving"):
            raise ValueError(f"strategy must be grid, random or halving, got {self.strategy!r}")
        if self.halving_resource not in ("n_samples", "max_epochs"):
            raise ValueError(f"unknown halving_resource {self.halving_resource!r}")
        if self.threshold_strategy not in ("oof_f1", "last_fold_f1"):
            raise ValueError(f"unknown threshold_strategy {self.threshold_strategy!r}")
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
            ("halving_factor", 2),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.n_jobs == 0:
            raise ValueError("n_jobs must not be 0")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")

    @property
    def n_candidates(self) -> int:
        return math.prod(len(v) for v in self.grid.values())

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
            optimizer__fused=True,
        )


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The refit winner, how it was chosen, and how it did on the unseen holdout."""

    strategy: Strategy
    best_params: dict[str, Any]
    module: SlaMLP
    threshold: float
    holdout_metrics: dict[str, float]
    cv_table: list[dict[str, Any]]
    fit_seconds: float
    search_seconds: float
    train_idx: NDArray[np.int64]
    holdout_idx: NDArray[np.int64]
    n_fits: int


def _log_loss_scorer() -> Any:
    # labels=[0, 1] keeps a validation fold without any breach scoreable.
    return make_scorer(
        log_loss, greater_is_better=False, response_method="predict_proba", labels=[0, 1]
    )


def _make_search(config: SearchConfig, cv: TimeSeriesSplit) -> Any:
    scoring = _log_loss_scorer() if config.scoring == "neg_log_loss" else config.scoring
    grid = {name: list(values) for name, values in config.grid.items()}
    common: dict[str, Any] = {
        "scoring": scoring,
        "cv": cv,
        "refit": True,
        "error_score": "raise",
        "n_jobs": config.n_jobs,
        "return_train_score": False,
    }
    estimator = config.estimator()
    if config.strategy == "grid":
        return GridSearchCV(estimator, grid, **common)
    if config.strategy == "random":
        return RandomizedSearchCV(
            estimator,
            grid,
            n_iter=min(config.n_iter, config.n_candidates),
            random_state=config.seed,
            **common,
        )
    if config.halving_resource == "max_epochs":
        grid.pop("max_epochs", None)
        return HalvingGridSearchCV(
            estimator,
            grid,
            factor=config.halving_factor,
            resource="max_epochs",
            max_resources=config.max_epochs,
            random_state=config.seed,
            **common,
        )
    return HalvingGridSearchCV(
        estimator, grid, factor=config.halving_factor, random_state=config.seed, **common
    )


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


def f1_threshold(y_true: NDArray[Any], proba: NDArray[Any], default: float = 0.5) -> float:
    """The probability threshold (predict breach when `proba >= t`) maximising F1.

    Falls back to `default` when `y_true` holds no breach. Ties go to the lowest threshold.
    """
    y = np.asarray(y_true).astype(bool)
    if not y.any():
        return default
    precision, recall, thresholds = precision_recall_curve(y, np.asarray(proba, np.float64))
    p, r = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(thresholds[int(np.argmax(f1))])


def _choose_threshold(
    best: SlaNet,
    X: NDArray[np.float32],
    y: NDArray[np.float32],
    cv: TimeSeriesSplit,
    config: SearchConfig,
) -> float:
    splits = list(cv.split(X))
    if config.threshold_strategy == "last_fold_f1":
        splits = splits[-1:]
    result = cross_validate(
        clone(best),
        X,
        y,
        cv=splits,
        scoring=_log_loss_scorer(),
        n_jobs=config.n_jobs,
        return_estimator=True,
        return_indices=True,
        error_score="raise",
    )
    val_idx = result["indices"]["test"]
    proba = np.concatenate(
        [
            predict_proba(est.module_, X[idx])
            for est, idx in zip(result["estimator"], val_idx, strict=True)
        ]
    )
    return f1_threshold(y[np.concatenate(val_idx)], proba)


def evaluate(
    module: SlaMLP, X: NDArray[Any], y: NDArray[Any], threshold: float
) -> dict[str, float]:
    """Holdout metrics of `module` (challenger or champion alike) at `threshold`.

    Keys: log_loss, brier, pr_auc (average precision), roc_auc, precision, recall, f1,
    tn, fp, fn, tp, n_rows, positive_rate, threshold. Ranking metrics are NaN when `y`
    holds a single class; precision/recall/F1 are 0 where undefined.
    """
    y_true = np.asarray(y).astype(np.int64)
    proba = predict_proba(module, np.array(X, dtype=np.float32)).astype(np.float64)
    proba = np.clip(proba, 0.0, 1.0)
    y_pred = (proba >= threshold).astype(np.int64)
    both = 0 < int(y_true.sum()) < y_true.shape[0]
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    return {
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba, pos_label=1)),
        "pr_auc": float(average_precision_score(y_true, proba)) if both else math.nan,
        "roc_auc": float(roc_auc_score(y_true, proba)) if both else math.nan,
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "tn": float(tn),
        "fp": float(fp),
        "fn": float(fn),
        "tp": float(tp),
        "n_rows": float(y_true.shape[0]),
        "positive_rate": float(y_true.mean()) if y_true.shape[0] else math.nan,
        "threshold": float(threshold),
    }


def run_search(data: SupervisedSet, config: SearchConfig | None = None) -> SearchResult:
    """Search on all but the newest `holdout_fraction` of `data`; judge the winner on the rest."""
    config = config or SearchConfig()
    started = time.perf_counter()
    train_idx, holdout_idx = time_split(len(data), config.holdout_fraction)
    X_train, y_train = data.X[train_idx], data.y[train_idx]
    n_pos = int(np.count_nonzero(y_train))
    if n_pos in (0, y_train.shape[0]):
        raise DatasetError(
            DatasetReason.SINGLE_CLASS, f"training part ({y_train.shape[0]} rows) has one class"
        )
    if y_train.shape[0] < 2 * (config.n_splits + 1):
        raise DatasetError(
            DatasetReason.TOO_FEW_ROWS,
            f"{y_train.shape[0]} training rows for {config.n_splits} time-series folds",
        )

    cv = TimeSeriesSplit(n_splits=config.n_splits)
    search = _make_search(config, cv)
    log.info(
        "search strategy=%s candidates=%d rows=%d holdout=%d sha256=%s",
        config.strategy,
        config.n_candidates,
        len(train_idx),
        len(holdout_idx),
        data.sha256[:12],
    )
    search.fit(X_train, y_train)
    search_seconds = time.perf_counter() - started

    best: SlaNet = search.best_estimator_
    threshold = _choose_threshold(best, X_train, y_train, cv, config)
    module = best.module_
    module.eval()
    metrics = evaluate(module, data.X[holdout_idx], data.y[holdout_idx], threshold)
    fit_seconds = time.perf_counter() - started
    n_fits = len(search.cv_results_["params"]) * config.n_splits
    log.info(
        "search done strategy=%s best=%s holdout_log_loss=%.4f f1=%.3f seconds=%.1f",
        config.strategy,
        search.best_params_,
        metrics["log_loss"],
        metrics["f1"],
        fit_seconds,
    )
    return SearchResult(
        strategy=config.strategy,
        best_params={k: _jsonable(v) for k, v in search.best_params_.items()},
        module=module,
        threshold=threshold,
        holdout_metrics=metrics,
        cv_table=_cv_table(search.cv_results_, config.scoring),
        fit_seconds=fit_seconds,
        search_seconds=search_seconds,
        train_idx=train_idx,
        holdout_idx=holdout_idx,
        n_fits=n_fits,
    )
