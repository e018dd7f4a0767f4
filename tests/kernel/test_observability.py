"""Metrics, health and logs without a broker: the server, `Health`, the counting hooks."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from consumer.core import BatchResult as BatchResultForTest
from consumer.core import CoreConfig, IngestCore
from consumer.detectors import DriftConfig
from consumer.observability import ConsumerMetrics
from consumer.settings import ConsumerSettings
from kernel.errors import ConfigError, StoreConflict, StoreUnavailable
from kernel.logs import JsonFormatter
from kernel.observability import Health, ObservabilityServer, consumer_lags, series_names
from kernel.settings import load_settings
from retrainer.observability import RetrainerMetrics
from retrainer.publisher import RequestOutcome
from retrainer.settings import RetrainerSettings
from schemas import RejectReason, RetrainFailed
from testkit.ports import free_port
from testkit.scrape import get, samples, value
from testkit.streams import RawRecord, interleave, telemetry_values


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# -- health -----------------------------------------------------------------------
def test_live_until_a_loop_makes_no_progress_for_the_timeout() -> None:
    clock = FakeClock()
    health = Health(30.0, clock=clock)
    follower_progress = clock.now
    health.beat("poll_loop")
    health.watch("model_follower", lambda: follower_progress)
    clock.now += 29
    assert health.liveness()[0]
    health.beat("poll_loop")
    clock.now += 2  # the follower is 31 s behind, the poll loop 2 s
    live, detail = health.liveness()
    assert not live and detail["stalled"] == ["model_follower"]
    follower_progress = clock.now
    assert health.liveness()[0]
    health.stop()
    assert health.liveness() == (False, {**health.liveness()[1], "live": False})
    assert health.liveness()[1]["stopped"] is True


def test_ready_only_when_live_and_every_check_passes() -> None:
    clock = FakeClock()
    health = Health(10.0, clock=clock)
    health.beat("poll_loop")
    joined = {"value": False}
    health.require("group_joined", lambda: joined["value"])
    health.require("broken_check", lambda: 1 / 0 > 0)  # a raising check is "not ready"
    assert health.readiness()[1]["checks"] == {"group_joined": False, "broken_check": False}
    health._checks.pop("broken_check")
    joined["value"] = True
    assert health.readiness()[0]
    clock.now += 11
    assert health.readiness() == (
        False,
        {"ready": False, "live": False, "checks": {"group_joined": True}},
    )


# -- the server -------------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[tuple[str, CollectorRegistry, Health, dict[str, bool]]]:
    registry = CollectorRegistry()
    Counter("slaops_test_things", "Things.", registry=registry).inc(3)
    health = Health(60.0)
    health.beat("poll_loop")
    state = {"ready": False}
    health.require("group_joined", lambda: state["ready"])
    server = ObservabilityServer(registry, health, host="127.0.0.1", port=free_port())
    try:
        yield f"http://127.0.0.1:{server.port}", registry, health, state
    finally:
        server.close()


def test_one_port_serves_metrics_liveness_and_readiness(served: Any) -> None:
    base, _registry, health, state = served
    status, body = get(base + "/metrics")
    assert status == 200 and value(samples(body), "slaops_test_things_total") == 3
    assert get(base + "/healthz")[0] == 200
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["checks"] == {"group_joined": False}
    state["ready"] = True
    assert get(base + "/readyz")[0] == 200
    health.stop()
    assert get(base + "/healthz")[0] == 503 and get(base + "/readyz")[0] == 503
    assert get(base + "/nothing")[0] == 404


def test_a_taken_port_fails_at_start_up_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"metrics_port \(SLAOPS_METRICS_PORT"):
            ObservabilityServer(CollectorRegistry(), Health(1.0), host="127.0.0.1", port=port)


def test_the_server_uses_its_own_registry_not_the_global_one(served: Any) -> None:
    base, registry, _health, _state = served
    _status, body = get(base + "/metrics")
    names = {family.name for family in text_string_to_metric_families(body)}
    # Only ours: none of the global registry's process_ and python_ series.
    assert names and all(name.startswith("slaops_test_things") for name in names), names
    assert series_names(registry) >= {"slaops_test_things_total"}


def test_consumer_lag_counts_uncommitted_records_per_partition() -> None:
    stats = {
        "topics": {
            "t": {
                "partitions": {
                    "0": {"consumer_lag": 0, "hi_offset": 50, "committed_offset": 50},
                    "1": {"consumer_lag": 7, "hi_offset": 9, "committed_offset": 2},
                    "2": {"consumer_lag": -1, "hi_offset": 0, "lo_offset": 0},
                    "3": {"consumer_lag": -1, "hi_offset": -1001},
                    "-1": {"consumer_lag": -1, "hi_offset": -1001},
                }
            },
            "other": {"partitions": {"0": {"consumer_lag": 99, "hi_offset": 99}}},
        }
    }
    assert consumer_lags(json.dumps(stats), "t") == {0: 0, 1: 7, 2: 0}


# -- the consumer's counts ---------------------------------------------------------
BAD = [
    (b"{nope", RejectReason.NOT_JSON),
    (b"", RejectReason.EMPTY),
    (b"\xc3\x28", RejectReason.NOT_UTF8),
    (b"{nope either", RejectReason.NOT_JSON),
]


def test_consumer_metrics_equal_what_the_core_did_and_name_no_tenant() -> None:
    core = IngestCore(
        CoreConfig(
            window_max_events=1_000,
            cold_start=True,
            cold_start_min_events=200,
            cold_start_min_per_class=5,
            request_timeout_s=1e9,
            drift=DriftConfig(detector="adwin"),
        )
    )
    metrics = ConsumerMetrics(core=core, refresh_s=0.0)
    streams = {
        f"tenant-{i:03d}": telemetry_values(f"tenant-{i:03d}", 400, seed=i, shift_at=250)
        for i in range(6)
    }
    recs = [RawRecord(t.encode(), v, 0, i) for i, (t, v) in enumerate(interleave(streams))]
    for i, (raw, _reason) in enumerate(BAD):
        recs.insert(100 + 300 * i, RawRecord(b"tenant-000", raw, 0, 10_000 + i))
    requests: list[tuple[str, str]] = []
    letters = held = 0
    for start in range(0, len(recs), 500):
        batch = recs[start : start + 500]
        result = core.process(batch)
        requests += [(r.reason, r.detector) for r in result.requests]
        letters += len(result.dead_letters)
        held += len(result.held_back)
        metrics.batch(batch, result, 0.01)
    found = samples(metrics_text(metrics.registry))
    assert value(found, "slaops_consumer_records_consumed_total") == len(recs)
    assert value(found, "slaops_consumer_records_valid_total") == len(recs) - len(BAD)
    for reason in RejectReason:
        sent = sum(1 for _raw, r in BAD if r == reason)
        assert value(found, "slaops_consumer_dead_letters_total", reason=reason.value) == sent
    assert letters == len(BAD)
    assert requests, "the stream should raise requests"
    for reason, detector in set(requests):  # type: ignore[assignment]
        assert value(
            found, "slaops_consumer_retrain_requests_total", reason=reason, detector=detector
        ) == requests.count((reason, detector))
    held_total = sum(
        v
        for (name, _labels), v in found.items()
        if name == "slaops_consumer_requests_held_back_total"
    )
    assert held_total == held
    assert value(found, "slaops_consumer_tenants") == 6
    assert value(found, "slaops_consumer_window_bytes") == sum(
        s.window.nbytes for s in core.tenants()
    )
    assert value(found, "slaops_consumer_batch_duration_seconds_count") == -(-len(recs) // 500)
    exposition = metrics_text(metrics.registry)
    assert "tenant-00" not in exposition  # no per-tenant label, whatever the tenants


def metrics_text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_lag_is_kept_for_assigned_partitions_only() -> None:
    metrics = ConsumerMetrics(core=IngestCore(CoreConfig(telemetry_topic="t")))
    stats = json.dumps(
        {
            "topics": {
                "t": {"partitions": {str(p): {"consumer_lag": p, "hi_offset": 9} for p in (0, 1)}}
            }
        }
    )
    from confluent_kafka import TopicPartition

    metrics.assigned([TopicPartition("t", 1, 0)], {})
    metrics.on_stats(stats)
    found = samples(metrics_text(metrics.registry))
    assert value(found, "slaops_consumer_lag_records", partition="1") == 1
    assert ("slaops_consumer_lag_records", (("partition", "0"),)) not in found
    metrics.revoked([1])
    assert "slaops_consumer_lag_records{" not in metrics_text(metrics.registry)


# -- the retrainer's counts --------------------------------------------------------
def test_retrainer_metrics_count_outcomes_failures_and_store_errors() -> None:
    clock = FakeClock()
    metrics = RetrainerMetrics(wall_clock=clock)
    failed = RetrainFailed.model_validate(
        {
            "request_event_id": None,
            "tenant": None,
            "reason": "too_few_rows",
            "detail": "",
            "failed_at": "2026-01-01T00:00:00+00:00",
        },
        strict=False,
    )
    metrics.received(0, 1, 1_000_000)  # record time 1,000 s
    metrics.received(0, 2, 1_000_000)
    metrics.coalesced(1)
    clock.now = 1_012.5
    metrics.finished(RequestOutcome("published", []), [(0, 1), (0, 2)])
    metrics.received(0, 3, None)
    metrics.finished(RequestOutcome("failed", [("f", b"k", failed)]), [(0, 3)])
    metrics.received(0, 4, None)
    metrics.invalid(0, 4)
    metrics.finished(RequestOutcome("duplicates", []), [])

    class Flaky:
        def publish(self, tenant_hash: str, files: Any, *, message: str) -> Any:
            raise StoreConflict("moved")

        def latest(self, tenant_hash: str) -> Any:
            raise StoreUnavailable("down")

    store: Any = metrics.observed_store(Flaky())  # type: ignore[arg-type]
    with pytest.raises(StoreConflict):
        store.publish("h", {}, message="m")
    with pytest.raises(StoreUnavailable):
        store.latest("h")
    metrics.store_sleep(0.0)
    found = samples(metrics_text(metrics.registry))
    requests = {
        labels[0][1]: v
        for (name, labels), v in found.items()
        if name == "slaops_retrainer_requests_total"
    }
    assert requests == {
        "published": 1,
        "champion_kept": 0,
        "failed": 2,
        "deduplicated": 1,
        "coalesced": 1,
    }
    assert value(found, "slaops_retrainer_requests_failed_total", reason="too_few_rows") == 1
    assert value(found, "slaops_retrainer_requests_failed_total", reason="invalid_request") == 1
    assert value(found, "slaops_retrainer_requests_received_total") == 4
    assert value(found, "slaops_retrainer_request_to_announcement_seconds_sum") == 12.5
    assert value(found, "slaops_retrainer_store_errors_total", kind="conflict") == 1
    assert value(found, "slaops_retrainer_store_errors_total", kind="unavailable") == 1
    assert value(found, "slaops_retrainer_publish_duration_seconds_count") == 1
    assert value(found, "slaops_retrainer_store_retries_total") == 1


# -- settings and logs -------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("metrics_port", 70_000),
        ("metrics_port", -1),
        ("metrics_host", "not a host"),
        ("liveness_timeout_s", 0),
        ("log_format", "xml"),
        ("lag_interval_s", 0),
    ],
)
def test_bad_observability_settings_fail_at_start_up_naming_them(name: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=rf"{name} \(SLAOPS_{name.upper()} or --"):
        load_settings(ConsumerSettings, {name: bad})


def test_ports_default_apart_and_zero_turns_them_off() -> None:
    assert ConsumerSettings().metrics_port == 9464
    assert RetrainerSettings().metrics_port == 9465
    assert ConsumerSettings().metrics_host == "127.0.0.1"
    assert load_settings(ConsumerSettings, {"metrics_port": 0}).metrics_port == 0


def test_json_log_lines_carry_the_context_fields_given_as_extra() -> None:
    logger = logging.getLogger("retrainer.publisher")
    record = logger.makeRecord(
        logger.name,
        logging.INFO,
        __file__,
        1,
        "tenant=%s event_id=%s published version=%d revision=%s",
        ("acme", "e" * 32, 2, "abc123"),
        None,
        extra={"tenant": "acme", "event_id": "e" * 32, "revision": "abc123"},
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["tenant"] == "acme" and line["event_id"] == "e" * 32
    assert line["revision"] == "abc123" and line["level"] == "INFO"
    extra = logging.LogRecord("x", logging.WARNING, __file__, 1, "moved", (), None)
    extra.__dict__.update(tenant="t1", partition=4, offset=17)
    line = json.loads(JsonFormatter().format(extra))
    assert (line["tenant"], line["partition"], line["offset"]) == ("t1", 4, 17)
    # The message text alone sets no field: fields come from `extra=` only.
    text_only = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "refused model tenant=%r revision=%r", ("a", "b"), None
    )
    line = json.loads(JsonFormatter().format(text_only))
    assert "tenant" not in line and "revision" not in line
    assert line["message"] == "refused model tenant='a' revision='b'"


def test_json_logs_never_show_a_secret() -> None:
    password = "hunter2-very-secret"  # noqa: S105 - the secret under test
    settings = ConsumerSettings(
        kafka_properties={"sasl.password": SecretStr(password)},
        tenant_key=SecretStr("k" * 64),
    )
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "settings %s", (settings,), None)
    line = JsonFormatter().format(record)
    assert password not in line and "k" * 64 not in line
    json.loads(line)


def test_ready_once_joined_and_every_replayed_partition_caught_up() -> None:
    from confluent_kafka import TopicPartition

    positions = {0: -1001, 1: -1001}
    metrics = ConsumerMetrics(
        core=IngestCore(CoreConfig(telemetry_topic="t")),
        positions=lambda numbers: {p: positions[p] for p in numbers},
    )
    assert metrics.health.readiness()[1]["checks"]["group_joined"] is False
    # Partition 0 replays from 10 up to its committed 50; partition 1 has nothing to replay.
    metrics.assigned([TopicPartition("t", 0, 10), TopicPartition("t", 1, 7)], {0: 50, 1: 7})
    ready, detail = metrics.health.readiness()
    assert not ready and detail["checks"] == {"group_joined": True, "state_rebuilt": False}
    positions[0] = 40
    metrics.batch([], BatchResultForTest(), 0.0)
    assert not metrics.health.readiness()[0]
    positions[0] = 50
    metrics.batch([], BatchResultForTest(), 0.0)
    assert metrics.health.readiness()[0]


def test_counters_export_no_created_series() -> None:
    """A `_created` series per counter doubles the series count; nothing reads it."""
    metrics = ConsumerMetrics(core=IngestCore(CoreConfig(telemetry_topic="t")))
    text = generate_latest(metrics.registry).decode()
    assert "slaops_consumer_dead_letters_total" in text
    assert "_created" not in text
