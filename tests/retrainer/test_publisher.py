"""Serving one request end to end against real stores: file:// and the Hub over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping

import numpy as np
import pytest
from pydantic import SecretStr

import retrainer.publisher as publisher
from kernel.artifacts import load_model, predict_proba
from kernel.limits import MAX_ARTIFACT_BYTES
from kernel.store import (
    ANY_PARENT,
    AnyParent,
    ModelStore,
    PublishedFiles,
    StoreOptions,
    TenantHead,
    open_store,
)
from kernel.tenant_hash import request_ref, tenant_hash
from retrainer.cancel import CancelToken
from retrainer.dataset import pairs_for_model
from retrainer.pipeline import Trained, TrainingConfig
from retrainer.publisher import RequestOutcome, commit_message
from retrainer.replay import TenantRows
from schemas import ChampionKept, ModelPublished, RetrainFailed
from testkit.hub_server import running_hub_server
from testkit.request_handlers import KEY, StoreFixture, handler
from testkit.retrain_data import request_for, tenant_rows


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
    X = pairs_for_model(rows.ts, rows.features, rows.labels, spec=model_card.features).X[:50]
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


# The gate itself (evidence, rules against the network, champion against challenger) is
# tested in tests/retrainer/test_forecasters.py.


# -- many retrainers, one store ------------------------------------------------------------


class RacingStore:
    """The real store; another writer's work runs just before our first publish.

    Fault injection, not a mock: every call reaches the real store, and the other
    writer publishes through it too, so the conflict is the store's own answer.
    """

    def __init__(self, inner: ModelStore, before_publish: Callable[[], object]) -> None:
        self.inner = inner
        self.uri = inner.uri
        self._before: Callable[[], object] | None = before_publish

    def publish(
        self,
        tenant_hash: str,
        files: Mapping[str, bytes],
        *,
        message: str,
        parent: str | None | AnyParent = ANY_PARENT,
    ) -> PublishedFiles:
        before, self._before = self._before, None
        if before is not None:
            before()
        return self.inner.publish(tenant_hash, files, message=message, parent=parent)

    def read(self, path: str, *, revision: str, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        return self.inner.read(path, revision=revision, max_bytes=max_bytes)

    def head(self, tenant_hash: str) -> TenantHead | None:
        return self.inner.head(tenant_hash)

    def latest(self, tenant_hash: str) -> PublishedFiles | None:
        return self.inner.latest(tenant_hash)

    def revision_messages(self, tenant_hash: str) -> list[str]:
        return self.inner.revision_messages(tenant_hash)


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenant of every search the handlers run (the real search, counted)."""
    seen: list[str] = []
    lock = threading.Lock()
    real = publisher.train

    def counted(
        rows: TenantRows, config: TrainingConfig, *, cancel: CancelToken | None = None
    ) -> Trained:
        with lock:
            seen.append(threading.current_thread().name)
        return real(rows, config, cancel=cancel)

    monkeypatch.setattr(publisher, "train", counted)
    return seen


def test_a_request_another_member_published_meanwhile_is_deduped_not_searched_again(
    store: StoreFixture, searches: list[str]
) -> None:
    uri, model_store = store
    theirs: list[str] = []
    mine: list[str] = []
    other_member = handler(store, replays=theirs)  # e.g. the partition's previous owner
    result: dict[str, ModelPublished] = {}

    def other_member_serves_it() -> None:
        event = other_member.handle(request_for("acme")).events[0][2]
        assert isinstance(event, ModelPublished)
        result["theirs"] = event

    me = handler((uri, RacingStore(model_store, other_member_serves_it)), replays=mine)
    outcome = me.handle(request_for("acme"))

    assert outcome.kind == "duplicates"
    (event,) = [e for _t, _k, e in outcome.events]
    assert isinstance(event, ModelPublished)
    assert (event.revision, event.sha256) == (result["theirs"].revision, result["theirs"].sha256)
    assert event.model_version == 1
    assert (mine, theirs, len(searches)) == (["acme"], ["acme"], 2)  # one search each
    assert len(model_store.revision_messages(tenant_hash("acme", KEY))) == 1


def test_a_tenant_published_meanwhile_is_judged_again_against_the_new_champion(
    store: StoreFixture, searches: list[str]
) -> None:
    uri, model_store = store
    mine: list[str] = []
    other_member = handler(store)
    result: dict[str, ModelPublished] = {}

    def another_request_is_published() -> None:
        # Another request of the same tenant on the same window: an equal model.
        event = other_member.handle(request_for("acme", offset=598)).events[0][2]
        assert isinstance(event, ModelPublished)
        result["theirs"] = event

    me = handler((uri, RacingStore(model_store, another_request_is_published)), replays=mine)
    outcome = me.handle(request_for("acme"))

    # Judged again, without a new search, against the model that landed meanwhile: a
    # tie, so the champion stays.
    assert outcome.kind == "kept"
    (event,) = [e for _t, _k, e in outcome.events]
    assert isinstance(event, ChampionKept)
    assert event.champion_revision == result["theirs"].revision
    assert event.decision.champion_score is not None
    assert event.decision.challenger_score >= event.decision.champion_score
    assert (mine, len(searches)) == (["acme"], 2)  # one search each
    assert len(model_store.revision_messages(tenant_hash("acme", KEY))) == 1


def test_two_retrainers_publish_different_tenants_to_one_hub_repo_with_one_search_each(
    searches: list[str],
) -> None:
    with running_hub_server() as hub:
        uri = "hf://slaops-test/models"

        def member() -> tuple[StoreFixture, list[str]]:
            client = open_store(
                uri, StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint)
            )
            replays: list[str] = []
            return (uri, client), replays

        (store_a, replays_a), (store_b, replays_b) = member(), member()
        a = handler(store_a, replays=replays_a)
        b = handler(store_b, {"globex": tenant_rows(seed=2)}, replays=replays_b)
        a_at_commit, b_done = threading.Event(), threading.Event()
        outcomes: dict[str, RequestOutcome] = {}

        def hold_a_until_b_published() -> None:  # runs in the Hub, before A's commit
            a_at_commit.set()
            assert b_done.wait(120), "B never finished"

        def run_b() -> None:
            try:
                assert a_at_commit.wait(120), "A never reached its commit"
                outcomes["b"] = b.handle(request_for("globex"))
            finally:
                b_done.set()

        hub.before_next(hold_a_until_b_published, path_contains="/commit/")
        thread_b = threading.Thread(target=run_b, name="member-b")
        thread_b.start()
        outcomes["a"] = a.handle(request_for("acme"))
        thread_b.join(timeout=120)

        assert hub.statuses.count(412) == 1  # B's commit moved the head under A's
        assert (outcomes["a"].kind, outcomes["b"].kind) == ("published", "published")
        assert (replays_a, replays_b) == (["acme"], ["globex"])
        assert sorted(searches) == ["MainThread", "member-b"]  # exactly one search each
        titles = [c.title for c in hub.user_commits("slaops-test/models")]
        assert titles == [
            commit_message(request_for("acme"), KEY),
            commit_message(request_for("globex"), KEY),
        ]
        for tenant, outcome in outcomes.items():
            event = outcome.events[0][2]
            assert isinstance(event, ModelPublished) and event.model_version == 1
            head = store_a[1].head(event.tenant_hash)
            assert head is not None and head.revision == event.revision, tenant
