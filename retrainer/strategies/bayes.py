"""`bayes`: Bayesian search on Optuna (seeded TPE), trials pruned on per-epoch loss.

The space is the config's grid, each parameter a categorical choice among its listed
values; a sampled point is mapped to the nearest candidate of the grid (depth 0 has
one width, `retrainer.search.expand_grid`), and a candidate already tried is told its
earlier result without fitting again. At most `n_trials` distinct candidates are fitted.

Each trial cross-validates one candidate on the search's folds (the same time-ordered
folds and scorer as every strategy), one fold after the other, in one task of the
fits backend (`joblib.Parallel`, so local processes or Dask workers). Every epoch of
every fold fit reports its validation-tail loss (`SlaNet`'s `valid_loss`) to a median
pruner at step `fold * epochs + epoch` (`epochs`: the most any candidate trains); after
each fold's first `warmup_epochs`, a trial whose best loss so far is worse than the
median of the finished trials' at that step is stopped there, and its fold fits up to
that point count as fits. Trials run in rounds of `n_jobs` (the config's, whatever the
backend yields), so the same seed and `n_jobs` give the same trials; the pruner of a
round's trials sees the trials of earlier rounds (each task rebuilds a study of them).
The study's objective is minus the mean fold score (log loss by default), minimised.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import optuna
from joblib import Parallel, cpu_count, delayed  # type: ignore[import-untyped]
from numpy.typing import NDArray
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState
from sklearn.base import clone
from sklearn.metrics import check_scoring
from sklearn.model_selection import ParameterGrid
from skorch.callbacks import Callback

from retrainer.estimator import SlaNet
from retrainer.strategies.base import SearchSetup

log = logging.getLogger(__name__)

#: Types a grid value may have to be an Optuna categorical choice (and a card value).
CHOICE_TYPES: Final = (bool, int, float, str, type(None))
#: Most samples drawn per fitted trial before the search gives up on new candidates.
_ASKS_PER_TRIAL: Final = 10
#: Median pruner: finished trials before any pruning.
PRUNER_STARTUP_TRIALS: Final = 4


def warmup_epochs(patience: int, max_epochs: int) -> int:
    """Epochs of each fold fit never pruned: twice the early-stopping patience, at most
    half the epochs. Slow learners (a small learning rate) trail for the first epochs
    and would be pruned for it: on `bench/bench_search.py`'s 60-point space, pruning
    from the first epoch missed the grid's winner by 0.004 log loss, this not at all.

    >>> warmup_epochs(8, 100), warmup_epochs(8, 5)
    (16, 2)
    """
    return max(1, min(2 * patience, max_epochs // 2))


def check_choices(grid: Mapping[str, Sequence[Any]]) -> None:
    """Raise `ValueError` unless every grid value can be a categorical choice."""
    for name, values in grid.items():
        bad = [v for v in values if not isinstance(v, CHOICE_TYPES)]
        if bad:
            raise ValueError(
                f"strategy bayes treats each grid list as categorical choices, which must be "
                f"numbers, strings, booleans or null; {name} has {bad[:3]!r}"
            )
        if len({(type(v), v) for v in values}) != len(values):
            raise ValueError(f"strategy bayes: grid parameter {name} lists a value twice")


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


class _Pruning(Callback):
    """Reports each epoch's validation-tail loss to `trial` and raises `TrialPruned`
    when the pruner says so (skorch lets the exception end the fit)."""

    def __init__(self, trial: optuna.trial.Trial, first_step: int, warmup: int) -> None:
        self.trial = trial
        self.first_step = first_step
        self.warmup = warmup
        self.reported: dict[int, float] = {}

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        loss = net.history[-1].get("valid_loss")
        if loss is None or not np.isfinite(loss):
            return  # a fold too small for a validation tail: nothing to judge it by
        step = self.first_step + len(net.history) - 1
        self.trial.report(float(loss), step)
        self.reported[step] = float(loss)
        if len(net.history) > self.warmup and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial's task returns: its fold scores (all folds, unless pruned)."""

    scores: list[float]
    pruned: bool
    n_fits: int
    seconds: float
    intermediate: dict[int, float]


def _pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS)


def run_trial(
    estimator: SlaNet,
    X: NDArray[np.float32],
    y: NDArray[np.float32],
    folds: list[tuple[NDArray[np.int64], NDArray[np.int64]]],
    params: dict[str, Any],
    scoring: Any,
    finished: list[dict[int, float]],
    fold_steps: int,
    warmup: int,
) -> TrialOutcome:
    """Cross-validate `params` fold by fold; pruned against the `finished` trials.

    `finished` holds the intermediate values of every trial finished before this
    round; a study of them is rebuilt here (in whichever process runs the task).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study = optuna.create_study(direction="minimize", pruner=_pruner())
    study.add_trials(
        [optuna.trial.create_trial(value=0.0, intermediate_values=values) for values in finished]
    )
    trial = study.ask()
    scores: list[float] = []
    n_fits = 0
    reported: dict[int, float] = {}
    for k, (train, valid) in enumerate(folds):
        hook = _Pruning(trial, first_step=k * fold_steps, warmup=warmup)
        net = clone(estimator).set_params(**params, callbacks=[("bayes_pruning", hook)])
        n_fits += 1
        try:
            net.fit(X[train], y[train])
        except optuna.TrialPruned:
            reported.update(hook.reported)
            return TrialOutcome(scores, True, n_fits, time.perf_counter() - started, reported)
        reported.update(hook.reported)
        scorer = check_scoring(net, scoring=scoring)
        scores.append(float(scorer(net, X[valid], y[valid])))
    return TrialOutcome(scores, False, n_fits, time.perf_counter() - started, reported)


class BayesSearchCV:
    """A scikit-learn-shaped search (`fit`, `best_params_`, `best_estimator_`,
    `cv_results_`) driven by an Optuna study; `trials_` and `n_fits_` besides."""

    def __init__(
        self,
        estimator: SlaNet,
        grid: list[dict[str, list[Any]]],
        *,
        n_trials: int,
        seed: int,
        rounds_of: int,
        scoring: Any,
        cv: Any,
        n_jobs: int,
        **_: Any,
    ) -> None:
        self.estimator = estimator
        self.grid = grid
        self.n_trials = n_trials
        self.seed = seed
        self.rounds_of = rounds_of
        self.scoring = scoring
        self.cv = cv
        self.n_jobs = n_jobs

    def _candidates(self) -> list[dict[str, Any]]:
        seen: set[tuple[tuple[str, str], ...]] = set()
        out = []
        for sub in self.grid:
            for params in ParameterGrid(sub):
                if _key(params) not in seen:
                    seen.add(_key(params))
                    out.append(dict(params))
        return out

    def _space(self) -> dict[str, BaseDistribution]:
        """Each parameter's values over every sub-grid, in grid order, once each."""
        choices: dict[str, dict[tuple[tuple[str, str], ...], Any]] = {}
        for sub in self.grid:
            for name, values in sub.items():
                for value in values:
                    choices.setdefault(name, {}).setdefault(_key({name: value}), value)
        return {name: CategoricalDistribution(list(v.values())) for name, v in choices.items()}

    @staticmethod
    def _nearest(sample: Mapping[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
        """The first candidate agreeing with `sample` on the most parameters."""

        def agree(candidate: dict[str, Any]) -> int:
            return sum(_key({k: v}) == _key({k: sample.get(k)}) for k, v in candidate.items())

        return max(candidates, key=agree)  # max keeps the first of equals

    def fit(self, X: NDArray[np.float32], y: NDArray[np.float32]) -> BayesSearchCV:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        folds = [(np.asarray(t), np.asarray(v)) for t, v in self.cv_split(X, y)]
        candidates = self._candidates()
        space = self._space()
        epochs: int = self.estimator.max_epochs
        fold_steps = max(int(p.get("max_epochs", epochs)) for p in candidates)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.seed,
                n_startup_trials=max(2, min(10, self.n_trials // 3)),
                multivariate=True,
                constant_liar=True,
            )
        study = optuna.create_study(direction="minimize", sampler=sampler)
        results: dict[tuple[tuple[str, str], ...], tuple[dict[str, Any], TrialOutcome, int]] = {}
        finished: list[dict[int, float]] = []
        limit = min(self.n_trials, len(candidates))
        asks = 0
        while len(results) < limit and asks < _ASKS_PER_TRIAL * limit:
            wanted = min(self.rounds_of, limit - len(results))
            batch: list[tuple[Any, dict[str, Any]]] = []
            waiting: list[tuple[Any, tuple[tuple[str, str], ...]]] = []
            while len(batch) < wanted and asks < _ASKS_PER_TRIAL * limit:
                asks += 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    trial = study.ask(space)
                params = self._nearest(trial.params, candidates)
                key = _key(params)
                if key in results:
                    self._tell(study, trial, results[key][1])
                elif any(_key(p) == key for _t, p in batch):
                    waiting.append((trial, key))
                else:
                    batch.append((trial, params))
            outcomes = Parallel(n_jobs=self.n_jobs)(
                delayed(run_trial)(
                    self.estimator,
                    X,
                    y,
                    folds,
                    p,
                    self.scoring,
                    list(finished),
                    fold_steps,
                    warmup_epochs(self.estimator.patience, int(p.get("max_epochs", fold_steps))),
                )
                for _t, p in batch
            )
            for (trial, params), outcome in zip(batch, outcomes, strict=True):
                for step, value in sorted(outcome.intermediate.items()):
                    trial.report(value, step)
                self._tell(study, trial, outcome)
                results[_key(params)] = (params, outcome, trial.number)
                if not outcome.pruned:
                    finished.append(outcome.intermediate)
            for trial, key in waiting:
                self._tell(study, trial, results[key][1])
        self._finish(X, y, results, len(folds))
        return self

    def cv_split(self, X: Any, y: Any) -> Any:
        if hasattr(self.cv, "split"):
            return self.cv.split(X, y)
        return self.cv

    @staticmethod
    def _tell(study: optuna.Study, trial: Any, outcome: TrialOutcome) -> None:
        if outcome.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, -float(np.mean(outcome.scores)))

    def _finish(
        self,
        X: NDArray[np.float32],
        y: NDArray[np.float32],
        results: Mapping[Any, tuple[dict[str, Any], TrialOutcome, int]],
        n_folds: int,
    ) -> None:
        done = [(p, o, n) for p, o, n in results.values() if not o.pruned]
        if not done:  # cannot happen: pruning needs finished trials first
            raise RuntimeError("every trial of the bayes search was pruned")
        self.trials_ = [
            {
                "number": n,
                "params": dict(p),
                "loss": None if o.pruned else -float(np.mean(o.scores)),
                "pruned": o.pruned,
                "fits": o.n_fits,
            }
            for p, o, n in sorted(results.values(), key=lambda item: item[2])
        ]
        self.n_fits_ = sum(o.n_fits for _p, o, _n in results.values())
        self.n_pruned_ = sum(o.pruned for _p, o, _n in results.values())
        self.cv_results_: dict[str, Any] = {
            "params": [p for p, _o, _n in done],
            "mean_test_score": np.array([np.mean(o.scores) for _p, o, _n in done]),
            "std_test_score": np.array([np.std(o.scores) for _p, o, _n in done]),
            "mean_fit_time": np.array([o.seconds / max(1, o.n_fits) for _p, o, _n in done]),
        }
        best = int(np.argmax(self.cv_results_["mean_test_score"]))
        self.best_index_ = best
        self.best_params_ = dict(done[best][0])
        self.best_score_ = float(self.cv_results_["mean_test_score"][best])
        self.best_estimator_ = clone(self.estimator).set_params(**self.best_params_).fit(X, y)
        log.info(
            "bayes search trials=%d pruned=%d fits=%d folds=%d",
            len(results),
            self.n_pruned_,
            self.n_fits_,
            n_folds,
        )


def build(setup: SearchSetup) -> Any:
    config = setup.config
    common = dict(setup.common)
    n_jobs = int(common.pop("n_jobs", 1))
    rounds_of = config.n_jobs if config.n_jobs > 0 else cpu_count()
    return BayesSearchCV(
        setup.estimator,
        setup.grid,
        n_trials=config.n_trials,
        seed=config.seed,
        rounds_of=max(1, rounds_of),
        n_jobs=n_jobs,
        **common,
    )
