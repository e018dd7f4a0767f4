"""Serving one request end to end against real stores: file:// and the Hub over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from kernel.artifacts import load_model, predict_proba
from kernel.store import ModelStore, open_store
from kernel.tenant_hash import request_ref, tenant_hash
from retrainer.dataset import build_pairs
from retrainer.pipeline import TrainingConfig, decide
from retrainer.publisher import RequestHandler, commit_message
from retrainer.replay import ReplayError, TenantRows
from retrainer.search import SearchConfig
from schemas import ChampionKept, ModelPublished, RetrainFailed, RetrainRequested
from tests.hub_server import running_hub_server
from tests.retrain_data import request_for, tenant_rows

StoreFixture = tuple[str, ModelStore]
KEY = SecretStr("test-tenant-key-0123456789abcdef")
SMALL_SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [16]},
    n_jobs=1,
    max_epochs=10,
    n_splits=3,
)


@pytest.fixture(params=["file", "hf"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFixture]:
    if request.param == "file":
        uri = f"file://{tmp_path / 'models'}"
        yield uri, open_store(uri)
        return
    with running_hub_server() as hub:
        uri = "hf://slaops-test/models"
        yield (
            uri,
            open_store(uri, token=SecretStr(hub.token), endpoint=hub.endpoint, backoff_s=0.01),
        )


def handler(
    store: StoreFixture, rows: dict[str, TenantRows] | None = None, **training: object
) -> RequestHandler:
    uri, model_store = store
    data = rows or {}

    def replay(request: RetrainRequested) -> TenantRows:
        if request.tenant == "gone":
            raise ReplayError("offsets 0..600 are no longer in the topic")
        return data.get(request.tenant) or tenant_rows()

    return RequestHandler(
        store=model_store,
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SMALL_SEARCH, min_rows=100, **training),  # type: ignore[arg-type]
        replay=replay,
        models_topic="sla.models",
        failures_topic="sla.retrain.failures",
        decisions_topic="sla.retrain.decisions",
    )


def test_publishes_one_atomic_version_whose_files_match_the_announcement(
    store: StoreFixture,
) -> None:
    serve = handler(store)
    outcome = serve.handle(request_for("acme"))
    assert outcome.kind == "published"
    ((topic, key, event),) = outcome.events
    assert (topic, key) == ("sla.models", b"acme") and isinstance(event, ModelPublished)
    hashed = tenant_hash("acme", KEY)
    assert event.tenant_hash == hashed and event.model_version == 1
    assert event.decision.published and event.decision.champion_score is None
    assert set(event.paths) == {"safetensors", "pt", "card"}
    for kind, path in event.paths.items():
        assert path == f"sla_models/{hashed}_sla_model.{ {'card': 'json'}.get(kind, kind) }"
    model_store = store[1]
    card = model_store.read(event.paths["card"], revision=event.revision)
    weights = model_store.read(event.paths["safetensors"], revision=event.revision)
    pt = model_store.read(event.paths["pt"], revision=event.revision)
    module, model_card = load_model(card, weights, "safetensors")
    module_pt, _ = load_model(card, pt, "pt")
    rows = tenant_rows()
    X = build_pairs(
        rows.ts, rows.features, rows.labels, spec=model_card.features, exact_spec=True
    ).X[:50]
    assert np.array_equal(predict_proba(module, X), predict_proba(module_pt, X))
    assert set(model_card.baselines) == {"prior", "persistence", "logistic"}
    assert model_card.skill["log_loss_skill_vs_prior"] > 0
    assert sum(b["n"] for b in model_card.calibration) == model_card.metrics["n_rows"]
    assert model_card.lineage["request_ref"] == request_ref(event.request_event_id, KEY)
    assert event.request_event_id not in card.decode()  # only its keyed form
    assert model_card.metrics["f1"] == event.metrics["f1"] > 0.5
    assert "acme" not in card.decode()  # the slug never reaches the store
    assert model_store.revision_messages(hashed) == [commit_message(request_for("acme"), KEY)]


def test_a_served_request_is_announced_again_never_retrained(store: StoreFixture) -> None:
    serve = handler(store)
    first = serve.handle(request_for("acme")).events[0][2]
    assert isinstance(first, ModelPublished)
    again = serve.handle(request_for("acme"))
    assert again.kind == "duplicates"
    (event,) = [e for _t, _k, e in again.events]
    assert isinstance(event, ModelPublished)
    assert (event.revision, event.sha256) == (first.revision, first.sha256)
    assert len(store[1].revision_messages(tenant_hash("acme", KEY))) == 1


def test_a_challenger_that_does_not_beat_the_champion_is_not_published(store: StoreFixture) -> None:
    serve = handler(store)
    serve.handle(request_for("acme"))
    # The same window again, under a new request: the challenger only ties.
    outcome = serve.handle(request_for("acme", offset=598, reason="data_drift"))
    assert outcome.kind == "kept"
    (event,) = [e for _t, _k, e in outcome.events]
    assert isinstance(event, ChampionKept)
    assert event.decision.published is False
    assert event.decision.champion_score is not None
    assert event.decision.challenger_score >= event.decision.champion_score
    assert len(store[1].revision_messages(tenant_hash("acme", KEY))) == 1


def test_unusable_data_ends_with_a_failure_record(store: StoreFixture) -> None:
    rows = tenant_rows(50)
    one_class = tenant_rows()
    one_class = TenantRows(one_class.ts, one_class.features, np.zeros(600, bool), 0, 0)
    serve = handler(store, {"tiny": rows, "calm": one_class})
    cases = {"tiny": "too_few_rows", "calm": "single_class", "gone": "range_unavailable"}
    for tenant, reason in cases.items():
        outcome = serve.handle(request_for(tenant))
        (event,) = [e for _t, _k, e in outcome.events]
        assert outcome.kind == "failed" and isinstance(event, RetrainFailed)
        assert (event.reason, event.tenant) == (reason, tenant)
        assert event.request_event_id == request_for(tenant).event_id
        assert store[1].latest(tenant_hash(tenant, KEY)) is None


def test_tenants_get_separate_hashed_models(store: StoreFixture) -> None:
    serve = handler(store, {"acme": tenant_rows(seed=1), "globex": tenant_rows(seed=2)})
    a = serve.handle(request_for("acme")).events[0][2]
    b = serve.handle(request_for("globex")).events[0][2]
    assert isinstance(a, ModelPublished) and isinstance(b, ModelPublished)
    assert a.tenant_hash != b.tenant_hash
    card_a = json.loads(store[1].read(a.paths["card"], revision=a.revision))
    card_b = json.loads(store[1].read(b.paths["card"], revision=b.revision))
    assert card_a["lineage"]["data_sha256"] != card_b["lineage"]["data_sha256"]


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "published"),
    [
        (0.30, None, 0.0, True),
        (0.30, 0.40, 0.0, True),
        (0.40, 0.40, 0.0, False),
        (0.45, 0.40, 0.0, False),
        (0.39, 0.40, 0.05, False),
        (0.37, 0.40, 0.05, True),
    ],
)
def test_champion_challenger_rule(
    challenger: float, champion: float | None, margin: float, published: bool
) -> None:
    decision = decide(
        {"log_loss": challenger},
        None if champion is None else {"log_loss": champion},
        margin,
        SKILLED,
    )
    assert decision.published is published
    assert decision.challenger_score == challenger and decision.champion_score == champion
    assert decision.verdict == ("published" if published else "champion_better")
    assert decision.baseline is None


#: A challenger with skill over every gated baseline.
SKILLED = {
    "log_loss_skill_vs_prior": 0.3,
    "brier_skill_vs_prior": 0.2,
    "log_loss_skill_vs_persistence": 0.1,
}


@pytest.mark.parametrize(
    ("skills", "baseline"),
    [
        ({**SKILLED, "log_loss_skill_vs_prior": -0.01}, "prior"),
        ({**SKILLED, "brier_skill_vs_prior": 0.0}, "prior"),
        ({**SKILLED, "log_loss_skill_vs_persistence": -0.2}, "persistence"),
        ({}, "prior"),
    ],
)
@pytest.mark.parametrize("champion", [None, {"log_loss": 0.9}])
def test_a_challenger_without_skill_over_a_baseline_is_never_published(
    skills: dict[str, float], baseline: str, champion: dict[str, float] | None
) -> None:
    decision = decide({"log_loss": 0.3}, champion, 0.0, skills)
    assert not decision.published
    assert (decision.verdict, decision.baseline) == ("baseline_better", baseline)
    assert baseline in decision.detail and "must be > 0" in decision.detail
