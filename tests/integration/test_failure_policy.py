"""The retrainer's failure policy against a real broker and the loopback Hub: an error
that may pass is retried in place until the request is served; one that will not (the
Hub answering 403) ends the request with one `RetrainFailed` after `max_attempts`, and
the partition's later requests are committed behind it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from kernel.kafka import TopicSpec, ensure_topics
from kernel.store import StoreOptions, open_store
from retrainer.main import build_service, prepare, topic_specs
from retrainer.service import RetrainerService
from retrainer.settings import RetrainerSettings
from schemas import ModelPublished, RetrainFailed
from testkit.hub_server import HubServer
from testkit.kafka_helpers import produce_all, read_topic, wait_for
from testkit.retrain_data import telemetry_messages, tenant_rows
from testkit.retrainer_runs import committed, request, running

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REPO = "acme-org/policy-models"
KEY = "policy-tenant-key-0123456789abcdef"
ROWS = 600


def hub_settings(
    retrainer_settings: Callable[..., RetrainerSettings], hub: HubServer, **tuning: object
) -> RetrainerSettings:
    settings = retrainer_settings(
        session_timeout_ms=6_000,
        store=f"hf://{REPO}",
        hf_endpoint=hub.endpoint,
        hf_token=SecretStr(hub.token),
        hub_timeout_s=5.0,
        tenant_key=SecretStr(KEY),
        grid={"lr": [0.01], "module__hidden_layers": [1], "module__width": [16]},
        n_jobs=1,
        n_splits=3,
        max_epochs=10,
        min_rows=100,
        retry_backoff_s=0.05,
        retry_max_backoff_s=0.2,
        **tuning,
    )
    ensure_topics(settings, [*topic_specs(settings), TopicSpec(settings.telemetry_topic, 1)])
    produce_all(
        settings.bootstrap_servers or "",
        settings.telemetry_topic,
        telemetry_messages("acme", tenant_rows(ROWS, seed=1)),
    )
    return settings


def service_for(settings: RetrainerSettings, hub: HubServer) -> RetrainerService:
    """The real service; its store tries each Hub call once, so faults reach the policy."""
    store = open_store(
        settings.store_uri(),
        StoreOptions(
            token=SecretStr(hub.token), endpoint=hub.endpoint, max_attempts=1, http_timeout_s=5.0
        ),
    )
    return build_service(settings, dataclasses.replace(prepare(settings), store=store))


def outcomes(settings: RetrainerSettings, topic: str, kind: type[BaseModel], expect: int) -> list:
    return [
        kind.model_validate_json(m.value() or b"")
        for m in read_topic(
            settings.bootstrap_servers or "", topic, expect=expect, partitions=6, timeout_s=5
        )
    ]


def test_a_hub_that_refuses_ends_the_request_once_and_later_requests_are_committed(
    retrainer_settings: Callable[..., RetrainerSettings], hub: HubServer, tmp_path: Path
) -> None:
    settings = hub_settings(retrainer_settings, hub, max_attempts=3)
    bootstrap = settings.bootstrap_servers or ""
    refused = request(settings, end=ROWS - 100, offset=ROWS - 101)
    hub.fail_next(1_000, 403)  # the token may not read or write the repo
    produce_all(bootstrap, settings.retrain_topic, [(b"acme", refused)])
    service = service_for(settings, hub)
    with running(service):
        wait_for(lambda: committed(settings) == 1, timeout_s=60, what="the refused request ended")
        hub.clear_faults()  # access granted: the next request is served
        later = request(settings, end=ROWS, offset=ROWS - 1)
        produce_all(bootstrap, settings.retrain_topic, [(b"acme", later)])
        wait_for(lambda: committed(settings) == 2, timeout_s=120, what="the later request")
    (failure,) = outcomes(settings, settings.failures_topic, RetrainFailed, 1)
    assert failure.request_event_id == json.loads(refused)["event_id"]
    assert failure.reason == "store_refused" and "403" in failure.detail
    assert "after 3 attempts" in failure.detail
    assert service.stats.retries == 2 and service.stats.failed == 1
    (model,) = outcomes(settings, settings.models_topic, ModelPublished, 1)
    assert model.request_event_id == json.loads(later)["event_id"]


def test_a_transient_hub_outage_is_retried_past_max_attempts_and_the_request_served(
    retrainer_settings: Callable[..., RetrainerSettings], hub: HubServer
) -> None:
    # One try for an error that will not pass, yet a 503 is tried until it passes.
    settings = hub_settings(retrainer_settings, hub, max_attempts=1)
    hub.fail_next(8, 503)
    body = request(settings, end=ROWS, offset=ROWS - 1)
    produce_all(settings.bootstrap_servers or "", settings.retrain_topic, [(b"acme", body)])
    service = service_for(settings, hub)
    with running(service):
        wait_for(lambda: committed(settings) == 1, timeout_s=120, what="the request served")
    assert hub.pending_faults() == 0
    assert service.stats.retries >= 1 and service.stats.failed == 0
    assert service.stats.published == 1
    (model,) = outcomes(settings, settings.models_topic, ModelPublished, 1)
    assert model.request_event_id == json.loads(body)["event_id"]
    assert outcomes(settings, settings.failures_topic, RetrainFailed, 0) == []
