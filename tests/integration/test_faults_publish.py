"""The real `slaops retrain` publishing to the tests' Hub through `huggingface_hub`, under
faults: SIGKILL mid-search, SIGKILL between the Hub commit and the announcement, and a
Hub that fails (503, 429), then hangs past the client timeout, then recovers. Each
request ends as exactly one complete model version in the store, announced."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from consumer.main import topic_specs as consumer_topics
from consumer.settings import ConsumerSettings
from kernel.kafka import TopicSpec, ensure_topics
from kernel.tenant_hash import request_ref, tenant_hash
from retrainer.main import topic_specs
from retrainer.settings import RetrainerSettings
from schemas import ModelPublished
from testkit.consumer_runs import committed_by_partition
from testkit.factories import consumer_names, retrainer_names
from testkit.hub_server import HubServer
from testkit.kafka_helpers import produce_all, read_topic, wait_for
from testkit.processes import ServiceProcess, env_for, services
from testkit.retrain_data import telemetry_messages, tenant_rows
from testkit.retrainer_runs import request

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

REPO = "acme-org/sla-models"
KEY = "faults-tenant-key-0123456789abcdef"
ROWS = 1_200
SMALL_GRID: dict[str, list[object]] = {
    "lr": [0.01],
    "module__hidden_layers": [1],
    "module__width": [16],
}
#: Twelve candidates: a search of several seconds, long enough to be killed in.
LONG_GRID: dict[str, list[object]] = {
    "lr": [0.01, 0.003, 0.001],
    "module__hidden_layers": [1, 2],
    "module__width": [32, 64],
}


@dataclass
class Setup:
    hub: HubServer
    settings: RetrainerSettings
    env: dict[str, str]
    request: bytes
    event_id: str


def setup_for(
    bootstrap: str, unique_name: Callable[[str], str], hub: HubServer, grid: dict[str, list[object]]
) -> Setup:
    names = retrainer_names(unique_name)
    tuning = {
        "session_timeout_ms": 6_000,
        "max_poll_interval_ms": 10_000,
        "grid": json.dumps(grid),
        "n_jobs": 1,
        "n_splits": 3,
        "max_epochs": 30,
        "min_rows": 100,
        "hub_timeout_s": 2.0,
    }
    settings = RetrainerSettings(bootstrap_servers=bootstrap, **names)
    ensure_topics(settings, [*topic_specs(settings), TopicSpec(settings.telemetry_topic, 1)])
    produce_all(
        bootstrap, settings.telemetry_topic, telemetry_messages("acme", tenant_rows(ROWS, seed=1))
    )
    env = env_for(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HF_ENDPOINT": hub.endpoint,
            "HF_TOKEN": hub.token,
            "store": f"hf://{REPO}",
            "tenant_key": KEY,
            **names,
            **tuning,
        }
    )
    body = request(settings, end=ROWS, offset=ROWS - 1)
    return Setup(hub, settings, env, body, json.loads(body)["event_id"])


def versions_of(setup: Setup) -> list[str]:
    """Commits in the Hub that published this request (its keyed ref is in the title)."""
    ref = request_ref(setup.event_id, SecretStr(KEY))
    return [c.oid for c in setup.hub.user_commits(REPO) if ref in c.title]


def announcements(setup: Setup, expect: int = 1) -> list[ModelPublished]:
    return [
        ModelPublished.model_validate_json(m.value() or b"")
        for m in read_topic(
            setup.settings.bootstrap_servers or "",
            setup.settings.models_topic,
            expect=expect,
            partitions=6,
            timeout_s=120,
        )
    ]


def assert_one_complete_version(setup: Setup) -> ModelPublished:
    (oid,) = versions_of(setup)
    (commit,) = [c for c in setup.hub.user_commits(REPO) if c.oid == oid]
    hashed = tenant_hash("acme", SecretStr(KEY))
    for suffix in ("safetensors", "pt", "json"):
        assert f"sla_models/{hashed}_sla_model.{suffix}" in commit.files
    models = announcements(setup)
    assert models, "the model was never announced"
    assert {(m.revision, m.request_event_id) for m in models} == {(oid, setup.event_id)}
    return models[0]


def test_a_retrainer_killed_mid_search_serves_the_request_once_after_restart(
    bootstrap: str, unique_name: Callable[[str], str], hub: HubServer, tmp_path: Path
) -> None:
    setup = setup_for(bootstrap, unique_name, hub, LONG_GRID)
    retrainer = ServiceProcess("retrain", setup.env, tmp_path)
    with services(retrainer):
        retrainer.start()
        produce_all(bootstrap, setup.settings.retrain_topic, [(b"acme", setup.request)])
        retrainer.wait_log(r"search strategy=grid candidates=12", timeout_s=90)
        retrainer.kill()
        assert versions_of(setup) == []  # killed before anything was published
        retrainer.start()
        wait_for(lambda: len(versions_of(setup)) == 1, timeout_s=120, what="the publish")
        assert_one_complete_version(setup)
        assert retrainer.stop() == 0


def test_a_retrainer_killed_between_hub_commit_and_announcement_announces_once(
    bootstrap: str, unique_name: Callable[[str], str], hub: HubServer, tmp_path: Path
) -> None:
    setup = setup_for(bootstrap, unique_name, hub, SMALL_GRID)
    # The commit lands, but its answer never comes back to the retrainer.
    hub.hang_next(1, 60.0, path_contains="/commit/", after=True)
    retrainer = ServiceProcess("retrain", setup.env, tmp_path)
    with services(retrainer):
        retrainer.start()
        produce_all(bootstrap, setup.settings.retrain_topic, [(b"acme", setup.request)])
        wait_for(lambda: len(versions_of(setup)) == 1, timeout_s=90, what="the Hub commit")
        retrainer.kill()
        assert (
            read_topic(bootstrap, setup.settings.models_topic, expect=1, partitions=6, timeout_s=1)
            == []
        )
        hub.clear_faults()
        retrainer.start()
        retrainer.wait_log(r"already published as \w+: announcing it again", timeout_s=90)
        model = assert_one_complete_version(setup)
        assert retrainer.stop() == 0
    assert "search strategy" not in retrainer.log(), "the served request was trained again"
    assert model.model_version == 1


def test_a_hub_outage_delays_the_publish_but_loses_and_duplicates_nothing(
    bootstrap: str, unique_name: Callable[[str], str], hub: HubServer, tmp_path: Path
) -> None:
    setup = setup_for(bootstrap, unique_name, hub, SMALL_GRID)
    hub.fail_next(6, 503)
    hub.fail_next(4, 429, retry_after=1)
    hub.hang_next(2, 5.0)  # past the client's 2 s timeout
    # Ingest is another process on another topic: it must not notice the outage.
    names = consumer_names(unique_name, group="consumer")
    ingest = ConsumerSettings(bootstrap_servers=bootstrap, telemetry_partitions=3, **names)
    ensure_topics(ingest, consumer_topics(ingest))
    stream = telemetry_messages("globex", tenant_rows(20_000, seed=4))
    consumer_env = env_for(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "session_timeout_ms": 6_000,
            "telemetry_partitions": 3,
            "follow_models": False,
            **names,
        }
    )
    retrainer = ServiceProcess("retrain", setup.env, tmp_path)
    consumer = ServiceProcess("consume", consumer_env, tmp_path)
    with services(retrainer, consumer):
        retrainer.start()
        consumer.start()
        produce_all(bootstrap, setup.settings.retrain_topic, [(b"acme", setup.request)])
        produce_all(bootstrap, ingest.telemetry_topic, stream)
        wait_for(
            lambda: sum(committed_by_partition(ingest).values()) == len(stream),
            timeout_s=90,
            what="ingest to commit everything during the outage",
        )
        wait_for(lambda: len(versions_of(setup)) == 1, timeout_s=150, what="the publish")
        assert_one_complete_version(setup)
        assert retrainer.stop() == 0
        assert consumer.stop() == 0
    logs = retrainer.all_logs()
    store_retries = logs.count("failed, retrying store=")
    request_retries = logs.count("; retrying in ")
    # huggingface_hub retries some calls itself; every injected fault was served.
    assert hub.pending_faults() == 0
    assert store_retries + request_retries >= 1, "the outage was not retried with backoff"
    assert hub.token not in logs
    print(
        f"hub outage: 6 x 503, 4 x 429, 2 hangs past the timeout; store retries="
        f"{store_retries}, request retries={request_retries}, versions=1"
    )
