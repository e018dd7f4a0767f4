"""`slaops retrain` against a real broker on loopback, with a real file store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from kernel.artifacts import ModelCard
from kernel.features import FeatureSpec
from kernel.kafka import TopicSpec, ensure_topics
from kernel.tenant_hash import tenant_hash
from retrainer.cancel import CancelToken
from retrainer.dataset import build_pairs
from retrainer.errors import RequestRefused
from retrainer.main import build_service, replay_limits, topic_specs
from retrainer.publisher import RequestOutcome
from retrainer.replay import plan_replay
from retrainer.settings import RetrainerSettings
from schemas import ModelPublished, OffsetRange, RetrainFailed, RetrainRequested
from testkit.kafka_helpers import produce_all, read_topic, wait_for
from testkit.retrain_data import telemetry_messages, tenant_rows
from testkit.retrainer_runs import KEY, committed, request, running, shared_partition_telemetry

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(
    retrainer_settings: Callable[..., RetrainerSettings], tmp_path: Path
) -> RetrainerSettings:
    settings = retrainer_settings(
        session_timeout_ms=6_000,
        max_poll_interval_ms=7_000,
        store=f"file://{tmp_path / 'models'}",
        tenant_key=SecretStr(KEY),
        grid={"lr": [0.01], "module__hidden_layers": [1], "module__width": [16]},
        n_jobs=1,
        n_splits=3,
        max_epochs=10,
        min_rows=100,
    )
    ensure_topics(settings, [*topic_specs(settings), TopicSpec(settings.telemetry_topic, 1)])
    return settings


def test_requests_are_coalesced_trained_on_their_tenant_only_and_announced(
    settings: RetrainerSettings,
) -> None:
    bootstrap = settings.bootstrap_servers or ""
    total = shared_partition_telemetry(settings)
    # Three requests for acme (coalesced into one run on the newest), plus garbage.
    requests = [
        (b"acme", request(settings, total - 4, total - 5)),
        (b"acme", request(settings, total - 2, total - 3)),
        (b"acme", request(settings, total, total - 1)),
    ]
    produce_all(bootstrap, settings.retrain_topic, [*requests, (b"acme", b"{not a request")])
    service = build_service(settings)
    with running(service):
        wait_for(lambda: committed(settings) == 4, timeout_s=120, what="all requests committed")
    assert service.stats.published == 1 and service.stats.coalesced == 2
    (message,) = read_topic(bootstrap, settings.models_topic, expect=1, partitions=6)
    event = ModelPublished.model_validate_json(message.value() or b"")
    newest = RetrainRequested.model_validate_json(requests[-1][1])
    assert event.request_event_id == newest.event_id and event.tenant == "acme"
    assert event.tenant_hash == tenant_hash("acme", SecretStr(KEY))

    # Trained on acme's 600 events only, although noisy shares the partition.
    card = ModelCard.model_validate_json(
        service.handler.store.read(event.paths["card"], revision=event.revision)
    )
    acme = tenant_rows(600, seed=1)
    spec, horizon = FeatureSpec(), settings.horizon
    expected = build_pairs(
        acme.ts, acme.features, acme.labels, spec=spec, horizon=horizon, min_rows=100
    )
    assert card.lineage["data_sha256"] == expected.sha256
    # Full windows of history, and the `horizon` intervals after each row to label it.
    assert card.lineage["n_rows"] == len(expected) == 600 - (spec.history - 1) - horizon

    (failure,) = read_topic(bootstrap, settings.failures_topic, expect=1, partitions=6)
    assert RetrainFailed.model_validate_json(failure.value() or b"").reason == "invalid_request"


def test_a_search_longer_than_max_poll_interval_costs_no_rebalance(
    settings: RetrainerSettings,
) -> None:
    total = shared_partition_telemetry(settings)
    produce_all(
        settings.bootstrap_servers or "",
        settings.retrain_topic,
        [(b"acme", request(settings, total, total - 1))],
    )
    service = build_service(settings)
    handle = service.handler.handle

    def slow_handle(job: RetrainRequested, cancel: CancelToken | None = None) -> RequestOutcome:
        time.sleep(settings.max_poll_interval_ms / 1000 + 3)  # a search this long
        return handle(job, cancel)

    service.handler.handle = slow_handle  # type: ignore[method-assign, assignment]
    with running(service):
        wait_for(lambda: committed(settings) == 1, timeout_s=120, what="the slow request")
        # Counted before the service stops: leaving the group revokes too.
        assert service.stats.revocations == 0, "the search cost the group its membership"
    assert service.stats.published == 1


def test_a_request_naming_another_topic_trains_nothing(settings: RetrainerSettings) -> None:
    bootstrap = settings.bootstrap_servers or ""
    attacker_topic = settings.telemetry_topic + ".attacker"
    ensure_topics(settings, [TopicSpec(attacker_topic, 1)])
    forged = telemetry_messages("acme", tenant_rows(700, seed=9, threshold_ms=60.0))
    produce_all(bootstrap, attacker_topic, forged)
    hostile = RetrainRequested.model_validate_json(request(settings, 700, 699))
    source = [hostile.source[0].model_copy(update={"topic": attacker_topic})]
    produce_all(
        bootstrap,
        settings.retrain_topic,
        [(b"acme", hostile.model_copy(update={"source": source}).model_dump_json().encode())],
    )
    service = build_service(settings)
    with running(service):
        wait_for(lambda: committed(settings) == 1, timeout_s=60, what="the request answered")
    (failure,) = read_topic(bootstrap, settings.failures_topic, expect=1, partitions=6)
    refused = RetrainFailed.model_validate_json(failure.value() or b"")
    assert refused.reason == "invalid_request" and attacker_topic in refused.detail
    assert service.stats.published == 0
    assert service.handler.store.latest(tenant_hash("acme", SecretStr(KEY))) is None


def test_other_tenants_flooding_the_partition_cannot_deny_a_tenants_retrain(
    settings: RetrainerSettings,
) -> None:
    """20 records of another tenant between each of acme's: the range spans 12,600
    offsets, over max_request_offsets; the request names acme's own 600 and is served."""
    bootstrap = settings.bootstrap_servers or ""
    settings = settings.model_copy(update={"max_request_offsets": 5_000})
    acme = telemetry_messages("acme", tenant_rows(600, seed=1))
    flood = telemetry_messages("flood", tenant_rows(20, seed=2))
    stream = [m for own in acme for m in (*flood, own)]
    total = produce_all(bootstrap, settings.telemetry_topic, stream)
    own = [i for i in range(total) if i % 21 == 20]
    whole = RetrainRequested.model_validate_json(request(settings, total, total - 1))
    named = whole.model_copy(
        update={"source": [OffsetRange.of_offsets(settings.telemetry_topic, 0, own)]}
    )
    assert named.source[0].size() == 600 and whole.source[0].size() == total
    with pytest.raises(RequestRefused, match="12600 offsets"):
        plan_replay(whole.source, replay_limits(settings))
    produce_all(bootstrap, settings.retrain_topic, [(b"acme", named.model_dump_json().encode())])
    service = build_service(settings)
    with running(service):
        wait_for(lambda: committed(settings) == 1, timeout_s=120, what="the request answered")
    assert service.stats.published == 1
    (message,) = read_topic(bootstrap, settings.models_topic, expect=1, partitions=6)
    event = ModelPublished.model_validate_json(message.value() or b"")
    card = ModelCard.model_validate_json(
        service.handler.store.read(event.paths["card"], revision=event.revision)
    )
    rows = tenant_rows(600, seed=1)
    expected = build_pairs(
        rows.ts,
        rows.features,
        rows.labels,
        spec=FeatureSpec(),
        horizon=settings.horizon,
        min_rows=100,
    )
    assert card.lineage["data_sha256"] == expected.sha256  # acme's 600 events, no other
