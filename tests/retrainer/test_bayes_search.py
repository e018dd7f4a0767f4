"""`strategy = "bayes"` (`retrainer.strategies.bayes`): Optuna TPE with median pruning.

On tiny data (600 rows), 3 folds and at most 5 epochs a fit: each search is a second
or two in-process.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import replace
from typing import Any

import matplotlib.image
import numpy as np
import pytest
from pydantic import SecretStr

from kernel.artifacts import ModelCard
from kernel.errors import ConfigError
from kernel.model_report import build_report
from kernel.model_report.plots import param_importances
from kernel.settings import load_settings
from kernel.store import open_store
from retrainer.dataset import SupervisedSet
from retrainer.main import training_config
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.search import SearchConfig, SearchResult, run_search
from retrainer.settings import RetrainerSettings
from retrainer.strategies import STRATEGIES
from schemas import ModelPublished
from testkit.retrain_data import request_for, tenant_rows

#: 3 learning rates (one that learns nothing in 5 epochs) x depth 0/1 x 2 widths: 9
#: distinct candidates (depth 0 has one width).
SPACE: dict[str, list[Any]] = {
    "lr": [5e-2, 1e-2, 1e-5],
    "module__hidden_layers": [0, 1],
    "module__width": [8, 16],
}
N_FOLDS = 3


@pytest.fixture(scope="module")
def bayes() -> SearchConfig:
    return SearchConfig(
        strategy="bayes",
        grid=SPACE,
        n_trials=8,
        n_splits=N_FOLDS,
        n_jobs=1,
        max_epochs=5,
        batch_size=64,
    )


@pytest.fixture(scope="module")
def searched(data: SupervisedSet, bayes: SearchConfig) -> SearchResult:
    return run_search(data, bayes)


def _trials(result: SearchResult) -> list[tuple[Any, ...]]:
    return [
        (t["number"], sorted(t["params"].items()), t["loss"], t["pruned"], t["fits"])
        for t in result.trials
    ]


def test_the_registry_lists_bayes_and_the_setting_accepts_it() -> None:
    assert "bayes" in STRATEGIES
    field = RetrainerSettings.model_fields["strategy"]
    assert field.description is not None and "bayes" in field.description
    settings = load_settings(RetrainerSettings, {"strategy": "bayes", "n_trials": "7"})
    config = training_config(settings).search
    assert config.strategy == "bayes" and config.n_trials == 7


def test_a_seeded_bayes_search_is_reproducible(
    data: SupervisedSet, bayes: SearchConfig, searched: SearchResult
) -> None:
    again = run_search(data, bayes)
    assert _trials(again) == _trials(searched)
    assert again.best_params == searched.best_params
    assert [r["mean_val_score"] for r in again.cv_table] == [
        r["mean_val_score"] for r in searched.cv_table
    ]
    # at most n_trials distinct candidates, each a point of the grid
    keys = [tuple(sorted(t["params"].items())) for t in searched.trials]
    assert len(keys) == len(set(keys)) <= bayes.n_trials
    for t in searched.trials:
        assert {k: [v] for k, v in t["params"].items()}.keys() == SPACE.keys()
        assert all(v in SPACE[k] for k, v in t["params"].items())
    # the winner is the finished trial with the lowest CV loss, refit as usual
    finished = [t for t in searched.trials if not t["pruned"]]
    best = min(finished, key=lambda t: t["loss"])
    assert searched.best_params == best["params"]
    assert searched.cv_table[0]["mean_val_log_loss"] == pytest.approx(best["loss"])


def test_pruning_happens_and_pruned_fits_are_counted(searched: SearchResult) -> None:
    pruned = [t for t in searched.trials if t["pruned"]]
    finished = [t for t in searched.trials if not t["pruned"]]
    assert pruned, "the median pruner stopped no trial"
    assert all(t["loss"] is None and 1 <= t["fits"] <= N_FOLDS for t in pruned)
    assert all(t["fits"] == N_FOLDS and t["loss"] is not None for t in finished)
    # every fold fit begun counts, a pruned trial's included; fewer than a full CV each
    assert searched.n_fits == sum(t["fits"] for t in searched.trials)
    assert searched.n_fits < N_FOLDS * len(searched.trials)
    # pruned trials have no CV score, so only finished ones are ranked
    assert len(searched.cv_table) == len(finished)
    # what learns nothing in 5 epochs never wins
    assert searched.best_params["lr"] != 1e-5


def _bayes_card() -> bytes:
    search = SearchConfig(
        strategy="bayes",
        grid={"lr": [1e-2, 3e-3, 1e-3], "module__hidden_layers": [0, 1], "module__width": [16]},
        n_trials=5,
        n_splits=N_FOLDS,
        n_jobs=1,
        max_epochs=5,
    )
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"file://{tmp}"
        store = open_store(uri)
        handler = RequestHandler(
            store=store,
            store_uri=uri,
            tenant_key=SecretStr("bayes-tenant-key-0123456789abcdef"),
            training=TrainingConfig(search=search, min_rows=100),
            replay=lambda request: tenant_rows(900, seed=5),
            topics=OutcomeTopics(models="m", failures="f", decisions="d"),
        )
        event = handler.handle(request_for("acme-bayes")).events[0][2]
        assert isinstance(event, ModelPublished)
        return store.read(event.paths["card"], revision=event.revision)


@pytest.mark.slow
def test_trials_land_in_the_card_and_its_report() -> None:
    card_bytes = _bayes_card()
    card = ModelCard.model_validate_json(card_bytes)
    assert card.lineage["strategy"] == "bayes"
    assert 1 <= len(card.trials) <= 5
    numbers = [t.number for t in card.trials]
    assert numbers == sorted(numbers)
    for t in card.trials:
        assert set(t.params) == {"lr", "module__hidden_layers", "module__width"}
        assert (t.loss is None) == t.pruned and t.fits >= 1
    finished = [t for t in card.trials if not t.pruned]
    assert len([r for r in card.cv_table if "mean_val_log_loss" in r]) == len(finished)
    # the report's search plot is the optimisation history beside parameter importance
    shares = param_importances(card)
    assert set(shares) <= {"lr", "module__hidden_layers"} and shares
    assert sum(shares.values()) == pytest.approx(1.0)
    files = build_report(card_bytes, "a" * 64)
    assert files == build_report(card_bytes, "a" * 64)  # deterministic
    pixels = matplotlib.image.imread(io.BytesIO(files["plot_search"]), format="png")
    assert pixels.shape[1] > 500 and float(np.asarray(pixels[..., :3]).std()) > 0.05
    # a card without trials still gets the grid's landscape, a different picture
    landscape = ModelCard.model_validate({**card.model_dump(), "trials": []})
    from kernel.model_report.plots import search_landscape, search_trials

    assert search_landscape(landscape, "0" * 64) != search_trials(card, "0" * 64)


def test_a_card_bounds_and_checks_its_trials() -> None:
    card = ModelCard.model_validate_json(_minimal_card_bytes())
    row = {"number": 0, "params": {"lr": 0.01}, "loss": 0.5, "pruned": False, "fits": 3}
    ok = {**card.model_dump(), "trials": [row]}
    assert ModelCard.model_validate(ok).trials[0].loss == 0.5
    for bad in (
        {**row, "loss": None},  # finished without a loss
        {**row, "pruned": True},  # pruned with one
        {**row, "params": {"lr": [0.01]}},
        {**row, "fits": -1},
    ):
        with pytest.raises(ValueError):
            ModelCard.model_validate({**ok, "trials": [bad]})
    with pytest.raises(ValueError, match="trials"):
        ModelCard.model_validate({**ok, "trials": [row] * 501})


def _minimal_card_bytes() -> bytes:
    from kernel.features import FeatureSpec

    spec = FeatureSpec()
    return (
        ModelCard(
            architecture={"n_features": len(spec.names())},
            features=spec,
            feature_order=list(spec.names()),
            horizon=1,
            threshold=0.5,
            metrics={},
            cv_table=[],
            lineage={},
            files={},
        )
        .model_dump_json()
        .encode()
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "bayes", "grid": {"lr": [[0.01], 0.001]}}, "categorical choices"),
        ({"strategy": "bayes", "grid": {"lr": [0.01, 0.01]}}, "lists a value twice"),
        ({"strategy": "bayes", "n_trials": "0"}, "n_trials"),
        ({"strategy": "bayesian"}, "grid, random, halving, bayes"),
    ],
)
def test_a_bad_setting_fails_at_start_up_saying_what_is_wrong(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(RetrainerSettings, overrides)


def test_the_config_checks_the_choices_too(bayes: SearchConfig) -> None:
    with pytest.raises(ValueError, match="categorical choices"):
        replace(bayes, grid={"lr": [{"a": 1}]})
    with pytest.raises(ValueError, match="n_trials"):
        replace(bayes, n_trials=0)


@pytest.mark.slow
def test_on_dask_the_trials_run_on_the_workers_with_the_same_result(
    data: SupervisedSet, bayes: SearchConfig
) -> None:
    distributed = pytest.importorskip("distributed")
    from retrainer.dask_fits import DaskFits

    config = replace(bayes, n_trials=3)
    local = run_search(data, config)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            workers = set(client.run(os.getpid))
            with distributed.get_task_stream(client) as stream:
                remote = run_search(data, replace(config, fits=DaskFits(cluster.scheduler_address)))
            tasks = list(stream.data)
    finally:
        cluster.close()
    assert _trials(remote) == _trials(local)
    assert remote.best_params == local.best_params
    # one task a fitted trial (its folds one after the other), each on a worker
    trial_tasks = [t for t in tasks if "run_trial" in t["key"]]
    assert len(trial_tasks) == len(local.trials) == 3
    assert {t["worker"] for t in trial_tasks} <= workers
