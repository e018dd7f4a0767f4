"""The skorch estimator and the search (`retrainer.search`), on tiny data."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit

from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP, build_module
from retrainer.dataset import SupervisedSet, build_pairs
from retrainer.errors import DatasetError, DatasetReason
from retrainer.estimator import SlaNet, TailSplit
from retrainer.metrics import evaluate, f1_threshold
from retrainer.search import (
    SearchConfig,
    SearchResult,
    _refit_on_every_row,
    expand_grid,
    run_search,
)
from testkit.retrain_data import TINY_GRID, synthetic

METRIC_KEYS = {
    "log_loss",
    "brier",
    "ece",
    "pr_auc",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "tn",
    "fp",
    "fn",
    "tp",
    "n_rows",
    "positive_rate",
    "threshold",
}


@pytest.fixture(scope="module")
def result(data: SupervisedSet, tiny_config: SearchConfig) -> SearchResult:
    return run_search(data, tiny_config)


# --------------------------------------------------------------------------- estimator


def test_clone_keeps_params_and_drops_fitted_state(data: SupervisedSet) -> None:
    net = SlaNet(lr=0.05, max_epochs=2, seed=7, module__width=8, module__dropout=0.1)
    copy = clone(net)
    assert copy.get_params()["module__width"] == 8
    assert copy.get_params()["module__dropout"] == 0.1
    for name in ("lr", "max_epochs", "seed", "batch_size", "balance_classes", "train_split"):
        assert copy.get_params()[name] == net.get_params()[name]
    net.fit(data.X, data.y)
    fitted_copy = clone(net)
    assert not fitted_copy.initialized_
    assert not hasattr(fitted_copy, "module_") and not hasattr(fitted_copy, "feature_mean_")
    assert fitted_copy.get_params()["module__width"] == 8


def test_tiny_grid_search_works(data: SupervisedSet) -> None:
    # like skorch's test_grid_search_works, with time-ordered folds
    net = SlaNet(max_epochs=2, batch_size=64)
    params = {"lr": [0.01, 0.02], "module__width": [4, 8]}
    search = GridSearchCV(
        net, params, cv=TimeSeriesSplit(n_splits=2), scoring="neg_log_loss", error_score="raise"
    )
    search.fit(data.X, data.y)
    assert set(search.best_params_) == {"lr", "module__width"}
    assert search.best_estimator_.module_.width == search.best_params_["module__width"]
    proba = search.predict_proba(data.X[:10])
    assert proba.shape == (10, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert search.predict(data.X[:10]).shape == (10,)


def test_normalisation_buffers_are_the_training_stats(data: SupervisedSet) -> None:
    X, y = data.X[:200], data.y[:200]
    net = SlaNet(max_epochs=1).fit(X, y)
    module = net.module_
    assert isinstance(module, SlaMLP)
    np.testing.assert_allclose(module.feature_mean.numpy(), X.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(module.feature_std.numpy(), X.std(axis=0), rtol=1e-5, atol=1e-7)
    assert module.feature_mean.dtype == torch.float32
    # a second fit on other rows re-estimates them
    net.fit(data.X[200:], data.y[200:])
    np.testing.assert_allclose(
        net.module_.feature_mean.numpy(), data.X[200:].mean(axis=0), rtol=1e-5, atol=1e-7
    )


def test_pos_weight_is_computed_per_fit(data: SupervisedSet) -> None:
    net = SlaNet(max_epochs=1, balance_classes=True).fit(data.X, data.y)
    n_pos = int(data.y.sum())
    expected = (len(data.y) - n_pos) / n_pos
    assert net.pos_weight_ == pytest.approx(expected)
    assert float(net.criterion_.pos_weight) == pytest.approx(expected, rel=1e-6)
    unweighted = SlaNet(max_epochs=1, balance_classes=False).fit(data.X, data.y)
    assert unweighted.criterion_.pos_weight is None
    assert SlaNet(max_epochs=1).fit(data.X, data.y).criterion_.pos_weight is None  # default
    explicit = SlaNet(max_epochs=1, criterion__pos_weight=torch.tensor(2.0)).fit(data.X, data.y)
    assert float(explicit.criterion_.pos_weight) == 2.0


def test_n_features_follows_the_data() -> None:
    spec = FeatureSpec(lags=2)
    lagged = build_pairs(*synthetic(300), spec=spec)
    net = SlaNet(max_epochs=1).fit(lagged.X, lagged.y)
    assert net.module_.n_features == len(lagged.spec.names()) == 72  # no time features


def test_fit_is_seeded_and_leaves_global_state_alone(data: SupervisedSet) -> None:
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    first = SlaNet(max_epochs=2, seed=3, module__dropout=0.2).fit(data.X, data.y)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    second = SlaNet(max_epochs=2, seed=3, module__dropout=0.2).fit(data.X, data.y)
    other = SlaNet(max_epochs=2, seed=4, module__dropout=0.2).fit(data.X, data.y)
    a, b, c = (n.module_.state_dict() for n in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_validation_is_the_newest_tail_of_each_fit(data: SupervisedSet) -> None:
    seen: list[tuple[int, int]] = []
    split = TailSplit(0.2)
    head, tail = split(SlaNet().get_dataset(data.X, data.y))
    seen.append((len(head), len(tail)))
    cut = len(data) - math.ceil(0.2 * len(data))
    assert seen == [(cut, len(data) - cut)]
    assert torch.equal(tail.X, torch.as_tensor(np.array(data.X[cut:])))  # newest rows, in order
    net = SlaNet(max_epochs=3).fit(data.X, data.y)
    assert net.train_split == TailSplit(0.15)
    assert np.isfinite(net.history[-1, "valid_loss"])
    plain = SlaNet(max_epochs=2, valid_fraction=0).fit(data.X, data.y)
    assert plain.train_split is None and "valid_loss" not in plain.history[-1]


def test_early_stopping_keeps_the_best_epoch(data: SupervisedSet) -> None:
    net = SlaNet(max_epochs=200, lr=0.05, patience=3, module__width=64).fit(data.X, data.y)
    losses = [row["valid_loss"] for row in net.history]
    assert len(losses) < 200  # stopped early
    best = int(np.argmin(losses))
    assert len(losses) - 1 - best >= 3  # ran `patience` epochs past the best
    proba = net.predict_proba(data.X[-len(data) // 7 :])[:, 1]
    tail = data.y[-len(data) // 7 :]
    assert log_loss(tail, proba, labels=[0, 1]) < losses[-1] + 1e-9


# --------------------------------------------------------------------------- search


def test_result_shape(result: SearchResult, data: SupervisedSet) -> None:
    assert isinstance(result.module, SlaMLP) and not result.module.training
    assert set(result.best_params) == set(TINY_GRID)
    assert result.rows.tolist() == list(range(len(data)))  # every row searched by default
    assert result.n_fits == 2 * 3
    assert result.fit_seconds >= result.search_seconds > 0
    assert [row["rank"] for row in result.cv_table] == [1, 2]
    best_row = result.cv_table[0]
    assert best_row["params"] == result.best_params
    assert best_row["mean_val_log_loss"] == pytest.approx(-best_row["mean_val_score"])
    assert best_row["mean_val_log_loss"] <= result.cv_table[1]["mean_val_log_loss"]
    assert {"std_val_log_loss", "mean_fit_seconds"} <= set(best_row)


def test_the_caller_s_rows_and_folds_are_what_is_searched(
    data: SupervisedSet, tiny_config: SearchConfig
) -> None:
    rows = np.arange(0, len(data), 2, dtype=np.int64)  # every other row
    third = len(rows) // 3
    splits = [
        (np.arange(0, third), np.arange(third + 5, 2 * third)),
        (np.arange(0, 2 * third), np.arange(2 * third + 5, len(rows))),
    ]
    out = run_search(data, tiny_config, rows=rows, splits=splits)
    assert out.rows.tolist() == rows.tolist()
    assert out.n_fits == 2 * len(splits)  # two candidates on the caller's two folds
    assert out.module.n_features == data.X.shape[1]


def test_learnable_problem_beats_the_prior_on_rows_it_never_saw(
    data: SupervisedSet, tiny_config: SearchConfig
) -> None:
    cut = int(0.8 * len(data))
    out = run_search(data, tiny_config, rows=np.arange(cut, dtype=np.int64))
    m = evaluate(out.module, data.X[cut:], data.y[cut:], 0.5)
    prior = float(data.y[:cut].mean())
    prior_loss = log_loss(data.y[cut:], np.full(len(data) - cut, prior), labels=[0, 1])
    assert m["log_loss"] < 0.8 * prior_loss
    assert m["roc_auc"] > 0.9
    assert m["pr_auc"] > 2 * m["positive_rate"]


def test_same_data_and_seed_give_identical_results(
    result: SearchResult, data: SupervisedSet, tiny_config: SearchConfig
) -> None:
    again = run_search(data, replace(tiny_config, n_jobs=2))  # and across worker processes
    assert again.best_params == result.best_params
    assert [r["mean_val_score"] for r in again.cv_table] == [
        r["mean_val_score"] for r in result.cv_table
    ]
    a, b = result.module.state_dict(), again.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_is_the_same_for_any_module(result: SearchResult, data: SupervisedSet) -> None:
    X, y = data.X[-200:], data.y[-200:]
    metrics = evaluate(result.module, X, y, 0.5)
    assert set(metrics) == METRIC_KEYS
    clone_module = build_module(result.module.architecture())
    clone_module.load_state_dict(result.module.state_dict())
    assert evaluate(clone_module, X, y, 0.5) == metrics
    never = evaluate(result.module, X, y, 1.1)
    assert never["tp"] == never["fp"] == 0 and never["precision"] == 0.0


def test_evaluate_single_class_holdout(result: SearchResult, data: SupervisedSet) -> None:
    m = evaluate(result.module, data.X[:20], np.zeros(20, dtype=np.float32), 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert m["tp"] == m["fn"] == 0


def test_f1_threshold() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    proba = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert f1_threshold(y, proba) == pytest.approx(0.35)
    assert f1_threshold(np.zeros(3), np.array([0.2, 0.3, 0.4])) == 0.5


@pytest.mark.parametrize(
    "changes",
    [
        {"strategy": "random", "n_iter": 2},
        {"strategy": "halving"},
        {"strategy": "halving", "halving_resource": "max_epochs", "halving_factor": 2},
    ],
)
def test_other_strategies_run(
    data: SupervisedSet, tiny_config: SearchConfig, changes: dict[str, object]
) -> None:
    config = replace(tiny_config, **changes)  # type: ignore[arg-type]
    out = run_search(data, config)
    assert out.strategy == config.strategy
    assert evaluate(out.module, data.X, data.y, 0.5)["roc_auc"] > 0.8
    assert [row["rank"] for row in out.cv_table] == list(range(1, len(out.cv_table) + 1))
    if config.strategy == "halving":
        assert {"iter", "n_resources"} <= set(out.cv_table[0])
        assert out.cv_table[0]["iter"] == max(row["iter"] for row in out.cv_table)


def test_rows_to_search_with_one_class_are_refused(tiny_config: SearchConfig) -> None:
    ts, features, _ = synthetic(400)
    labels = np.zeros(400, dtype=bool)
    labels[-20:] = True  # breaches only in the newest rows
    data = build_pairs(ts, features, labels)
    with pytest.raises(DatasetError) as info:
        run_search(data, tiny_config, rows=np.arange(200, dtype=np.int64))
    assert info.value.reason is DatasetReason.SINGLE_CLASS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "bayesian"},
        {"grid": {}},
        {"grid": {"lr": []}},
        {"grid": {"lr": 0.1}},
        {"n_splits": 1},
        {"max_epochs": 0},
        {"n_jobs": 0},
        {"halving_resource": "rows"},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SearchConfig(**kwargs)  # type: ignore[arg-type]


def test_default_config_is_the_documented_grid() -> None:
    config = SearchConfig()
    assert config.strategy == "grid" and config.n_splits == 5 and config.n_jobs == 2
    assert config.scoring == "neg_log_loss" and not config.persistence_offset
    assert config.n_candidates == 4
    assert config.grid["lr"] == [1e-2, 1e-3] and config.grid["module__hidden_layers"] == [0, 1]


def test_depth_zero_is_searched_once_whatever_the_widths() -> None:
    grids = expand_grid(
        {"lr": [1e-2, 1e-3], "module__hidden_layers": [0, 2], "module__width": [8, 16]}
    )
    assert grids == [
        {"lr": [1e-2, 1e-3], "module__hidden_layers": [0], "module__width": [8]},
        {"lr": [1e-2, 1e-3], "module__hidden_layers": [2], "module__width": [8, 16]},
    ]
    assert expand_grid({"lr": [1e-2], "module__width": [8, 16]}) == [
        {"lr": [1e-2], "module__width": [8, 16]}
    ]


def test_a_net_that_learnt_nothing_forecasts_persistence(data: SupervisedSet) -> None:
    column = data.feature_names.index("breach")
    net = SlaNet(max_epochs=1, lr=1e-9, offset_column=column).fit(data.X, data.y)
    flags = data.X[:, column] >= 0.5
    expected = [(data.y[flags == f].sum() + 1) / ((flags == f).sum() + 2) for f in (False, True)]
    net.module_.head.weight.data.zero_()
    net.module_.head.bias.data.zero_()
    proba = net.predict_proba(data.X)[:, 1]
    np.testing.assert_allclose(proba, np.where(flags, expected[1], expected[0]), rtol=1e-5)


def test_the_refit_learns_from_the_newest_rows_too(data: SupervisedSet) -> None:
    best = SlaNet(max_epochs=30, patience=3).fit(data.X, data.y)
    seen = sum(b.get("train_batch_size", 0) for b in best.history[-1]["batches"])
    assert seen == len(data) - math.ceil(0.15 * len(data))  # the tail validated, not trained
    losses = [row["valid_loss"] for row in best.history]
    final = _refit_on_every_row(best, data.X, data.y)
    assert len(final.history) == int(np.argmin(losses)) + 1  # the epochs early stopping chose
    assert sum(b.get("train_batch_size", 0) for b in final.history[-1]["batches"]) == len(data)
    assert final.train_split is None and "valid_loss" not in final.history[-1]
