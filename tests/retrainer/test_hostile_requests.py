"""Hostile writers of `sla.retrain` (issue 23, items 6 and 7).

Anyone who can produce to `sla.retrain` may be hostile. Each test performs the attack
and asserts the outcome: free text in a request's enum-like fields is refused by the
contract, and whatever free text a stored card carries renders as text, never as
Markdown or HTML; an oversized request is refused unread (a `RetrainFailed`, committed),
its lists are bounded, and a flood of requests waits in a bounded queue with the
partitions paused, losing none.
"""

from __future__ import annotations

import json
import re
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr, ValidationError

from consumer.detectors import DETECTORS
from consumer.ood import DETECTOR as OOD_DETECTOR
from kernel.artifacts import ModelCard
from kernel.kafka import (
    DeliveryTracker,
    TopicSpec,
    ensure_topics,
    make_group_consumer,
    make_producer,
)
from kernel.model_report import build_report
from kernel.store import FileStore, open_store
from retrainer.main import topic_specs
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from retrainer.service import RetrainerService
from retrainer.settings import RetrainerSettings
from schemas import ModelPublished, RetrainFailed, RetrainRequested, retrain_event_id
from schemas.retrain import (
    DRIFT_DETECTORS,
    MAX_REQUEST_BYTES,
    DetectorName,
    RequestTooLarge,
    SignalFeature,
    parse_retrain_request,
)
from schemas.telemetry import FEATURES
from testkit.kafka_helpers import produce_all, read_topic, wait_for
from testkit.retrain_data import request_for, tenant_rows
from testkit.retrainer_runs import committed, running

KEY = SecretStr("hostile-requests-key-0123456789ab")
SMALL_SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [8]},
    n_jobs=1,
    max_epochs=5,
    n_splits=3,
)
IMG = "<img src=x onerror=alert(1)>"


def request_json(**changes: object) -> dict[str, object]:
    """A valid request as JSON, with `changes` made to it (None deletes a key)."""
    data = json.loads(request_for("acme").model_dump_json())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


# --- item 6: free text in a request's enum-like fields -------------------------------
HOSTILE_FIELDS: dict[str, dict[str, object]] = {
    "markup as the detector": {"detector": IMG},
    "a line break out of the detector's code span": {"detector": "x`\n" + IMG},
    "an unknown detector name": {"detector": "adwin2"},
    "markup as a feature": {"details": {"features": [IMG], "statistic": {}}},
    "a feature named twice": {"details": {"features": ["rps", "rps"], "statistic": {}}},
    "markup as a statistic's name": {"details": {"features": [], "statistic": {IMG: 1.0}}},
}


@pytest.mark.parametrize("attack", list(HOSTILE_FIELDS))
def test_free_text_in_an_enum_like_field_of_a_request_is_refused(attack: str) -> None:
    raw = json.dumps(request_json(**HOSTILE_FIELDS[attack])).encode()
    with pytest.raises(ValidationError):
        parse_retrain_request(raw)
    with pytest.raises(ValidationError):  # the contract itself, whoever reads it
        RetrainRequested.model_validate_json(raw)


def test_every_name_the_consumer_sends_is_in_the_contract() -> None:
    """The registries and the contract agree: no real request is refused by them."""
    assert set(DETECTORS) == set(DRIFT_DETECTORS)
    names = set(get_args(DetectorName))
    assert {*DETECTORS, OOD_DETECTOR, "cold_start", "retry", "more_history"} <= names
    assert {*FEATURES, "calibration", "log_loss", "ood_score"} == set(get_args(SignalFeature))
    statistic = {f"{name}.{what}": 1.0 for name in FEATURES for what in ("reference_mean",)}
    statistic |= {"change_events_ago": 3.0, "card_log_loss": 0.2, "n_events": 600.0}
    good = request_json(
        reason="data_drift",
        detector="page_hinkley",
        details={"features": list(FEATURES), "statistic": statistic},
    )
    assert parse_retrain_request(json.dumps(good).encode()).detector == "page_hinkley"


@pytest.fixture(scope="module")
def card_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One real published card (a small search on the file store)."""
    store = FileStore(tmp_path_factory.mktemp("store"))
    handler = RequestHandler(
        store=store,
        store_uri=store.uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SMALL_SEARCH),
        replay=lambda request: tenant_rows(),
        topics=OutcomeTopics(models="m", failures="f", decisions="d"),
    )
    event = handler.handle(request_for("acme")).events[0][2]
    assert isinstance(event, ModelPublished)
    return store.read(event.paths["card"], revision=event.revision)


def test_free_text_in_a_stored_card_renders_as_text_in_the_markdown_card(
    card_bytes: bytes,
) -> None:
    """A store writer's card, or a request read before the contract refused such words."""
    card = json.loads(card_bytes)
    card["lineage"] |= {
        "detector": "x`\n" + IMG,
        "reason": "<script>alert(1)</script>",
        "strategy": "[click](javascript:alert(1))",
        "best_params": "![pixel](http://attacker.example/p.png)",
        "n_rows": "\n\n<iframe src=//attacker.example>",
    }
    card["baselines"] |= {"<b>bold</b> | x | y": {"log_loss": 0.5}}
    card["evidence"] |= {"n": "*emphasis* | cell"}
    card["metrics"] |= {"x\n---\n<img src=y>": 0.5}
    hostile = json.dumps(card).encode()
    ModelCard.model_validate_json(hostile)  # a card the loader takes
    markdown = build_report(hostile, "e" * 64)["report"].decode()
    for markup in ("<img", "<script", "<iframe", "<b>", "](javascript", "![pixel]", "*emphasis*"):
        assert markup not in markdown, markup
    assert "<" not in markdown  # no HTML at all: the page's own words use none
    assert re.search(r"(?<!\\)\| cell", markdown) is None  # a pipe is shown, escaped
    table = [line for line in markdown.splitlines() if "lt;b&gt;bold" in line]
    assert len(table) == 1 and len(re.findall(r"(?<!\\)\|", table[0])) == 8  # 7 cells
    assert "x\\` &lt;img src=x onerror=alert\\(1\\)&gt;" in markdown  # shown, escaped
    assert "&lt;script&gt;alert\\(1\\)&lt;/script&gt;" in markdown
    images = [line for line in markdown.splitlines() if line.startswith("![")]
    assert images and all(line.endswith(".png)") and "attacker" not in line for line in images)


# --- item 7: oversized requests and a flood of them ----------------------------------
def oversized_request() -> bytes:
    """The probe's request: 150,000 feature names and 30,000 statistics, about 1.2 MB."""
    details = {
        "features": [f"{i:x}" for i in range(150_000)],
        "statistic": {f"{i:x}": 0.5 for i in range(30_000)},
    }
    return json.dumps(request_json(details=details), separators=(",", ":")).encode()


def test_an_oversized_request_is_refused_by_its_size_before_it_is_parsed() -> None:
    raw = oversized_request()
    assert len(raw) > 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(RequestTooLarge, match=rf"{len(raw)} bytes, over the limit of 65536"):
            parse_retrain_request(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # before: the whole request parsed and held, ~4.5 MB


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("features", [name for name in get_args(SignalFeature)] * 2),
        ("statistic", {f"s{i}": 1.0 for i in range(65)}),
    ],
)
def test_a_request_under_the_size_limit_still_has_bounded_lists(field: str, value: object) -> None:
    details = {"features": [], "statistic": {}, field: value}
    raw = json.dumps(request_json(details=details)).encode()
    assert len(raw) < MAX_REQUEST_BYTES
    with pytest.raises(ValidationError, match="at most|unique"):
        parse_retrain_request(raw)


def test_more_offset_ranges_than_the_contract_allows_are_refused() -> None:
    source = request_json()["source"]
    assert isinstance(source, list)
    raw = json.dumps(request_json(source=source * 65)).encode()
    with pytest.raises(ValidationError, match="at most 64"):
        parse_retrain_request(raw)


@pytest.fixture
def settings(
    retrainer_settings: Callable[..., RetrainerSettings], tmp_path: Path
) -> RetrainerSettings:
    settings = retrainer_settings(
        session_timeout_ms=6_000,
        max_poll_interval_ms=20_000,
        store=f"file://{tmp_path / 'models'}",
        tenant_key=KEY,
        min_rows=100,
    )
    ensure_topics(settings, [*topic_specs(settings), TopicSpec(settings.telemetry_topic, 1)])
    return settings


def gated_service(
    settings: RetrainerSettings, gate: threading.Event, served: list[str], max_queued: int
) -> RetrainerService:
    """The real service and handler; each replay waits for `gate` (a long search)."""

    def replay(request: RetrainRequested) -> TenantRows:
        served.append(request.tenant)
        gate.wait(timeout=60)
        return tenant_rows(20)  # too few rows: the request ends in a RetrainFailed

    store = open_store(settings.store_uri())
    handler = RequestHandler(
        store=store,
        store_uri=store.uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SMALL_SEARCH, min_rows=100),
        replay=replay,
        topics=OutcomeTopics(
            models=settings.models_topic,
            failures=settings.failures_topic,
            decisions=settings.decisions_topic,
        ),
    )
    return RetrainerService(
        handler=handler,
        consumer=make_group_consumer(settings, settings.group_id),
        tracker=DeliveryTracker(make_producer(settings)),
        retrain_topic=settings.retrain_topic,
        max_queued=max_queued,
    )


def tenant_request(settings: RetrainerSettings, tenant: str) -> tuple[bytes, bytes]:
    request = request_for(tenant).model_copy(
        update={
            "event_id": retrain_event_id(tenant, "cold_start", settings.telemetry_topic, 0, 599)
        }
    )
    return tenant.encode(), request.model_dump_json().encode()


@pytest.mark.integration
def test_an_oversized_request_is_dead_lettered_unread_and_committed(
    settings: RetrainerSettings,
) -> None:
    bootstrap = settings.bootstrap_servers or ""
    gate, served = threading.Event(), list[str]()
    gate.set()
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    producer.produce(settings.retrain_topic, key=b"acme", value=oversized_request())
    assert producer.flush(30) == 0
    service = gated_service(settings, gate, served, max_queued=8)
    with running(service):
        wait_for(lambda: committed(settings) == 1, timeout_s=60, what="the request committed")
    assert served == [] and service.stats.oversized == 1  # never queued, never replayed
    (failure,) = read_topic(bootstrap, settings.failures_topic, expect=1, partitions=6)
    refused = RetrainFailed.model_validate_json(failure.value() or b"")
    assert refused.reason == "invalid_request" and refused.request_event_id is None
    assert refused.detail.startswith("request_too_large: request of ")


@pytest.mark.integration
def test_a_flood_of_requests_waits_in_a_bounded_queue_and_none_is_lost(
    settings: RetrainerSettings,
) -> None:
    bootstrap = settings.bootstrap_servers or ""
    tenants = [f"flood-{i:02d}" for i in range(40)]
    produce_all(bootstrap, settings.retrain_topic, [tenant_request(settings, t) for t in tenants])
    gate, served = threading.Event(), list[str]()
    service = gated_service(settings, gate, served, max_queued=8)
    with running(service):
        wait_for(lambda: service.stats.pauses >= 1, timeout_s=60, what="the queue full")
        time.sleep(1.0)  # polling goes on while the first search waits
        assert service.queued() <= 8 and service.stats.peak_queued <= 8
        assert len(served) == 1  # one search at a time, the rest wait or stay in Kafka
        gate.set()
        wait_for(lambda: committed(settings) == 40, timeout_s=120, what="every request")
    assert sorted(served) == tenants  # each served once: none lost, none twice
    assert service.stats.failed == 40 and service.stats.peak_queued <= 8
    failures = read_topic(bootstrap, settings.failures_topic, expect=40, partitions=6)
    assert len(failures) == 40
