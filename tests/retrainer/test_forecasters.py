"""The candidates, their warning policies and the gate (`retrainer.forecasters`,
`retrainer.warning_policy`, `retrainer.selection`, `retrainer.pipeline`), on seeded
streams whose breaches a rising metric announces, judged against the baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernel.artifacts import load_model, predict_proba
from kernel.early_warning import score_warnings, warning_on
from retrainer.pipeline import Champion, TrainingConfig, train, train_and_decide
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from retrainer.warning_policy import _carried
from schemas.telemetry import FEATURES

SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [0], "module__width": [16]},
    n_jobs=1,
    max_epochs=15,
    n_splits=4,
)
CONFIG = TrainingConfig(search=SEARCH, min_rows=100)
CPU = FEATURES.index("cpu_util")


def ramps(
    n: int, episodes: int, seed: int, start_ts: float = 1.77e9, idle_cpu: float = 0.3
) -> TenantRows:
    """Five-minute telemetry whose CPU climbs for 8 intervals before each breach."""
    rng = np.random.default_rng(seed)
    cpu = np.clip(idle_cpu + rng.normal(0, 0.03, n), 0, 1)
    starts = np.sort(rng.choice(np.arange(100, n - 30), episodes, replace=False))
    for s in starts:
        cpu[s : s + 8] = np.linspace(0.35, 0.95, 8)
        cpu[s + 8 : s + 12] = 0.95
    labels = cpu > 0.8
    p50 = 30 + 40 * cpu + rng.normal(0, 2, n)
    metrics = np.column_stack(
        [p50, p50 * 1.8, p50 * 2.4, np.full(n, 0.01), cpu, 200 + 50 * rng.random(n)]
    ).astype(np.float32)
    return TenantRows(start_ts + 300.0 * np.arange(n), metrics, labels, 0, 0)


def request(tenant: str = "acme"):  # type: ignore[no-untyped-def]
    from testkit.retrain_data import request_for

    return request_for(tenant)


def test_a_learned_rule_warns_ahead_of_breaches_out_of_fold_and_beats_the_prior() -> None:
    rows = ramps(2_000, 40, seed=1)
    trained = train(rows, CONFIG)
    best = trained.choice.best
    assert best.kind != "prior"
    record = best.policy.record
    assert record.fresh_onsets >= 8
    assert record.recall_1 is not None and record.recall_1 >= 0.7  # the climb announces them
    assert record.false_per_day <= 1.0
    assert best.log_loss < trained.choice.evidence.base_log_loss
    # Skill over the prior and persistence, on the same out-of-fold rows.
    assert trained.skill["log_loss_skill_vs_prior"] > 0


def test_the_published_forecaster_warns_ahead_on_data_it_never_saw() -> None:
    rows = ramps(1_500, 30, seed=2)
    outcome = train_and_decide(rows, request(), CONFIG, None)
    assert outcome.decision.published and outcome.artifacts is not None
    module, card = load_model(outcome.artifacts.card, outcome.artifacts.safetensors, "safetensors")
    assert card.format_version == 3 and card.target == "within" and card.horizon == 6
    assert card.forecaster == outcome.decision.forecaster
    fresh = ramps(1_500, 30, seed=3, start_ts=float(rows.ts[-1]) + 300.0)
    X = card.features.transform(fresh.ts, fresh.features, fresh.labels)
    quiet = X[:, card.feature_order.index("quiet")] >= 0.5
    p = predict_proba(module, X).astype(np.float64)
    record = score_warnings(warning_on(p, quiet, card.threshold), fresh.labels, fresh.ts)
    assert record.recall_1 is not None and record.recall_1 >= 0.6
    assert record.false_per_day <= 1.5


def test_below_the_minimum_evidence_only_a_rule_goes_live_and_no_champion_is_replaced() -> None:
    rows = ramps(700, 4, seed=4)  # four incidents: fewer fresh onsets than the minimum
    outcome = train_and_decide(rows, request(), CONFIG, None)
    assert outcome.decision.verdict == "insufficient_evidence"
    assert outcome.decision.published  # a cold start: the best rule goes live
    assert outcome.trained.result is None  # no network was searched
    assert outcome.artifacts is not None
    card = outcome.artifacts.card_model
    assert card.forecaster != "mlp" and card.evidence["sufficient"] is False
    module, _ = load_model(outcome.artifacts.card, outcome.artifacts.safetensors, "safetensors")
    champion = Champion(module=module, card=card, revision="r1")
    again = train_and_decide(rows, request(), CONFIG, champion)
    assert again.decision.verdict == "insufficient_evidence" and not again.decision.published
    assert again.artifacts is None


def _published(rows: TenantRows) -> Champion:
    outcome = train_and_decide(rows, request(), CONFIG, None)
    assert outcome.artifacts is not None
    module, card = load_model(outcome.artifacts.card, outcome.artifacts.safetensors, "safetensors")
    return Champion(module=module, card=card, revision="r1")


@pytest.mark.parametrize(("n", "episodes"), [(700, 4), (2_000, 40)])
def test_a_champion_with_no_skill_on_the_tenant_as_it_is_now_is_retired(
    n: int, episodes: int
) -> None:
    # Trained while the CPU idled at 0.3; the tenant now idles at 0.7, where the
    # champion saw only the climbs before breaches: it forecasts a breach on every row.
    champion = _published(ramps(2_000, 40, seed=7))
    now = ramps(n, episodes, seed=8, idle_cpu=0.7)
    outcome = train_and_decide(now, request(), CONFIG, champion)
    decision = outcome.decision
    assert decision.published and outcome.artifacts is not None
    assert "champion has no skill" in decision.detail
    assert decision.champion_score is not None
    assert decision.champion_score > decision.evidence["base_log_loss"]
    if episodes < CONFIG.evidence.min_fresh_onsets:
        # Below the minimum evidence only a rule may replace it, as at a cold start.
        assert decision.verdict == "insufficient_evidence"
        assert outcome.artifacts.card_model.forecaster != "mlp"
    else:
        assert decision.verdict == "published"


def test_a_challenger_replaces_a_champion_only_with_a_confident_gain() -> None:
    rows = ramps(2_000, 40, seed=5)
    first = train_and_decide(rows, request(), CONFIG, None)
    assert first.artifacts is not None
    module, card = load_model(first.artifacts.card, first.artifacts.safetensors, "safetensors")
    same = train_and_decide(rows, request(), CONFIG, Champion(module, card, "r1"))
    # The same forecaster again gains nothing: the champion stays.
    assert not same.decision.published and same.decision.verdict == "champion_better"
    assert same.decision.evidence["confidence"] < CONFIG.evidence.confidence
    # A champion that never warns loses to a challenger that warns of most incidents.
    silent = card.model_copy(update={"threshold": 1.0})
    better = train_and_decide(rows, request(), CONFIG, Champion(module, silent, "r0"))
    assert better.decision.published and better.decision.verdict == "published"
    assert better.decision.evidence["gain"] > 0
    assert better.decision.evidence["confidence"] >= CONFIG.evidence.confidence


def test_the_refit_threshold_leaves_the_tuned_share_of_quiet_rows_silent() -> None:
    fitted = np.arange(100) / 100.0
    assert _carried(fitted, 0.9, 0.5) == pytest.approx(0.9)
    assert _carried(np.full(50, 0.2), 0.6, 0.2) == math.inf  # a constant cannot warn on 40%
    assert _carried(np.full(50, 0.2), 0.1, 0.2) == pytest.approx(0.2)
    assert _carried(fitted, 1.0, 0.5) == math.inf


def test_a_tenant_with_no_quiet_rows_to_hold_back_still_gets_a_rule() -> None:
    rng = np.random.default_rng(6)
    n = 600
    labels = rng.random(n) < 0.5  # a breach every other interval: never quiet for long
    metrics = np.column_stack(
        [
            np.full(n, 50.0),
            np.full(n, 90.0),
            np.full(n, 120.0),
            np.full(n, 0.01),
            rng.random(n),
            np.full(n, 100.0),
        ]
    ).astype(np.float32)
    rows = TenantRows(1.77e9 + 60.0 * np.arange(n), metrics, labels, 0, 0)
    outcome = train_and_decide(rows, request(), CONFIG, None)
    assert outcome.decision.verdict == "insufficient_evidence" and outcome.decision.published
