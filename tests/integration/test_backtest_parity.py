"""`slaops backtest` publishes what `slaops consume` + `slaops retrain` publish on a broker.

The same recorded telemetry goes (a) through the backtest and (b) through the real
services on the session's broker, one partition, a file store each. The producer of
(b) holds a tenant's next event until the request its last event raised is answered
and the answer applied (the backtest's promise, made true on the broker), so both
runs see the same answers at the same events. Then forecast lines, requests and
warning edges must agree, ids included. Two stores name the same versions by
different (random) revisions, so a revision is compared as its tenant and version,
and a warning id as the event and version it was raised at.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from consumer.main import build_service as build_consumer
from consumer.main import topic_specs as consumer_topics
from consumer.service import ConsumerService
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from retrainer.main import build_service as build_retrainer
from retrainer.main import topic_specs as retrainer_topics
from retrainer.settings import RetrainerSettings
from schemas import RetrainRequested, warning_event_id
from slaops.backtest import Backtest, BacktestResult, BacktestSetup, offline_setup
from slaops.backtest_records import RecordedTelemetry, read_telemetry
from testkit.backtest_data import KEY, SMALL_TRAINING, differences, recorded, write_input
from testkit.factories import consumer_names
from testkit.kafka_helpers import read_to_end, read_topic, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EVENTS = 1_200  # per tenant: a cold start each at 500, drift at 720, requests for it


@contextmanager
def running(service: Any) -> Iterator[Any]:
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), f"{type(service).__name__} did not stop"


def backtest(
    path: Path, consumer: ConsumerSettings, retrainer: RetrainerSettings
) -> tuple[BacktestResult, list[bytes], list[bytes]]:
    offline = {"store": None, "bootstrap_servers": None}
    setup = BacktestSetup(consumer.model_copy(update=offline), retrainer.model_copy(update=offline))
    with offline_setup(setup) as ready:
        telemetry = read_telemetry(path, ready.consumer.telemetry_topic)
        with (
            path.with_suffix(".forecasts").open("wb") as forecasts,
            path.with_suffix(".warnings").open("wb") as warnings,
        ):
            result = Backtest(ready, telemetry, forecasts, warnings).run()
    lines = path.with_suffix(".forecasts").read_bytes().splitlines()
    return result, lines, path.with_suffix(".warnings").read_bytes().splitlines()


def produce_holding(
    settings: ConsumerSettings,
    service: ConsumerService,
    messages: list[tuple[bytes, bytes]],
    raised_at: dict[int, str],
) -> None:
    """Every message in order; after one that raises a request, wait for its answer.

    The request is known in advance (the backtest's), and the wait is for the live
    consumer itself: it has processed the event, and its gate for the tenant is open
    again (the answer was read and applied). A request the live loop does not raise
    there opens no gate: the wait ends at once and the comparison fails.
    """
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 2})
    for offset, (key, value) in enumerate(messages):
        producer.produce(settings.telemetry_topic, key=key, value=value)
        tenant = raised_at.get(offset)
        if tenant is None:
            continue
        assert producer.flush(30) == 0, "producer did not drain"

        def processed(at: int = offset) -> bool:
            return service.stats.valid > at

        wait_for(processed, timeout_s=60, what=f"offset {offset}")

        def answered(tenant: str = tenant) -> bool:
            state = service.core.tenant(tenant)
            return state is not None and not state.gate.in_flight

        wait_for(answered, timeout_s=180, what=f"the answer to {tenant}'s request at {offset}")
    assert producer.flush(30) == 0, "producer did not drain"


def per_tenant(lines: list[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for line in lines:
        out.setdefault(json.loads(line)["tenant"], []).append(line)
    return out


def versions(lines: list[bytes]) -> dict[str, int]:
    """revision -> version, from forecast lines."""
    return {d["model_revision"]: d["model_version"] for d in map(json.loads, lines)}


def warning_edges(
    lines: list[bytes], revisions: dict[str, int], telemetry: RecordedTelemetry
) -> list[dict[str, Any]]:
    """Warning edges with ids and revisions named by what they hash (checked here)."""
    raised: dict[str, str] = {}
    out = []
    for document in map(json.loads, lines):
        tenant, revision = document["tenant"], document["model_revision"]
        named = f"{tenant}@{revisions.get(revision, revision)}"
        if document.get("kind") == "raised":
            events = telemetry.tenants[tenant]
            stamp = datetime.fromisoformat(document["ts"]).timestamp()
            offset = int(events.at[events.by_micros[round(stamp * 1e6)][0]])
            topic = telemetry.topic
            assert document["warning_id"] == warning_event_id(tenant, revision, topic, 0, offset)
            raised[document["warning_id"]] = f"{named}:{offset}"
        document["warning_id"] = raised.get(document["warning_id"], "unknown raise")
        document["model_revision"] = named
        document.pop("probability", None)
        out.append(document)
    return out


def test_backtest_and_the_services_on_a_broker_publish_the_same(
    bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    messages = recorded(EVENTS)
    path = write_input(tmp_path / "events.jsonl", messages)
    names: dict[str, Any] = consumer_names(unique_name, models=True)
    shared: dict[str, Any] = {"tenant_key": KEY, "telemetry_partitions": 1, "metrics_port": 0}
    store: dict[str, Any] = {"store": f"file://{tmp_path / 'live-store'}"}
    consumer = ConsumerSettings(
        bootstrap_servers=bootstrap,
        **names,
        **shared,
        **store,
        publish_forecasts=True,
        catch_up_lag_s=0.0,  # recorded history: its old stamps are no backlog
        wall_cooldown=False,  # ... and replayed at speed: event time alone, as a backtest
        poll_timeout_s=0.05,
        session_timeout_ms=6_000,
    )
    retrainer = RetrainerSettings(
        bootstrap_servers=bootstrap,
        telemetry_topic=names["telemetry_topic"],
        retrain_topic=names["retrain_topic"],
        models_topic=names["models_topic"],
        failures_topic=names["failures_topic"],
        decisions_topic=names["decisions_topic"],
        group_id=unique_name("retrainer"),
        session_timeout_ms=6_000,
        **shared,
        **store,
        **SMALL_TRAINING,  # a 2-candidate grid
    )

    result, offline_lines, offline_warnings = backtest(path, consumer, retrainer)
    assert {r.reason for r in result.retrains} > {"cold_start"}, "no drift: too easy a test"
    raised_at = {r.offset: r.tenant for r in result.retrains}

    ensure_topics(consumer, consumer_topics(consumer))
    ensure_topics(retrainer, retrainer_topics(retrainer))
    started = time.monotonic()
    with running(build_retrainer(retrainer)), running(build_consumer(consumer)) as service:
        produce_holding(consumer, service, messages, raised_at)
        wait_for(lambda: service.stats.valid == len(messages), timeout_s=60, what="every event")
        assert time.monotonic() - started < 600

    live_lines = [
        m.value() or b""
        for m in read_topic(
            bootstrap, consumer.forecasts_topic, expect=result.forecasts, partitions=1
        )
    ]
    requests = [
        RetrainRequested.model_validate_json(m.value() or b"")
        for m in read_to_end(bootstrap, consumer.retrain_topic, partitions=1)
    ]
    assert [r.event_id for r in requests] == [r.event_id for r in result.retrains]

    live, offline = per_tenant(live_lines), per_tenant(offline_lines)
    assert set(live) == set(offline)
    for tenant in offline:
        assert differences(live[tenant], offline[tenant]) == [], tenant

    warnings_topic = getattr(consumer, "warnings_topic", None)
    live_warnings = (
        [m.value() or b"" for m in read_to_end(bootstrap, warnings_topic, partitions=1)]
        if warnings_topic is not None
        else []
    )
    assert warning_edges(live_warnings, versions(live_lines), result.telemetry) == warning_edges(
        offline_warnings, versions(offline_lines), result.telemetry
    )
