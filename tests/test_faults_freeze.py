"""A broker that stalls: SIGSTOP for longer than the session timeout while the real
consumer and retrainer work, then SIGCONT. Both recover by themselves; the whole stream
is committed, every malformed record is dead-lettered, every request is answered, and no
request becomes a second model."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import SecretStr

from consumer.main import topic_specs as consumer_topics
from consumer.settings import ConsumerSettings
from retrainer.main import topic_specs as retrainer_topics
from retrainer.settings import RetrainerSettings
from schemas import DeadLetter, ModelPublished, RetrainRequested
from simulator.model import TelemetrySimulator
from slaops.embedded import embedded_broker
from slaops.kafka import ensure_topics
from slaops.store import open_store
from slaops.tenant_hash import tenant_hash
from tests.kafka_helpers import produce_all, read_topic, wait_for
from tests.processes import ServiceProcess, env_for, frozen, services
from tests.test_faults_consumer import committed

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

KEY = "freeze-tenant-key-0123456789abcdef"
TENANTS = 3
EVENTS_PER_TENANT = 900
FREEZE_S = 12.0  # the session timeout is 6 s


@pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="freezes a broker of its own; an external broker cannot be stopped",
)
def test_both_services_ride_out_a_frozen_broker(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'models'}"
    names = {
        "telemetry_topic": "freeze.telemetry",
        "dlq_topic": "freeze.dlq",
        "retrain_topic": "freeze.retrain",
        "checkpoint_topic": "freeze.checkpoints",
        "models_topic": "freeze.models",
        "failures_topic": "freeze.failures",
        "decisions_topic": "freeze.decisions",
    }
    common = {"session_timeout_ms": 6_000, "store": store, "tenant_key": KEY, **names}
    consumer_tuning = {
        "group_id": "freeze-consumer",
        "telemetry_partitions": 3,
        "batch_size": 100,
        "poll_timeout_s": 0.05,
        "window_max_events": 2_000,
        "window_span_s": 60 * 86_400.0,
        "cold_start_min_events": 300,
        "request_timeout_s": 1e9,
        "data_drift": False,
    }
    retrainer_tuning = {
        "group_id": "freeze-retrainer",
        "grid": json.dumps({"lr": [0.01], "module__hidden_layers": [1], "module__width": [16]}),
        "n_jobs": 1,
        "n_splits": 3,
        "max_epochs": 10,
        "min_rows": 100,
    }
    simulator = TelemetrySimulator(TENANTS, 11, interval_s=600.0, malformed_rate=0.02)
    stream = list(simulator.events(EVENTS_PER_TENANT))
    records = [(k, v) for k, v, _m in stream]
    malformed = sum(m.malformed is not None for _k, _v, m in stream)
    half = len(records) // 2

    with embedded_broker() as (bootstrap, broker_pid):
        consumer_settings = ConsumerSettings(
            bootstrap_servers=bootstrap,
            **names,  # type: ignore[arg-type]
            telemetry_partitions=3,
            group_id="freeze-consumer",
        )
        ensure_topics(consumer_settings, consumer_topics(consumer_settings))
        retrainer_settings = RetrainerSettings(
            bootstrap_servers=bootstrap,
            **{k: v for k, v in names.items() if k in RetrainerSettings.model_fields},  # type: ignore[arg-type]
        )
        ensure_topics(retrainer_settings, retrainer_topics(retrainer_settings))
        base = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **common}
        consumer = ServiceProcess("consume", env_for({**base, **consumer_tuning}), tmp_path)
        retrainer = ServiceProcess("retrain", env_for({**base, **retrainer_tuning}), tmp_path)

        def models() -> list[ModelPublished]:
            return [
                ModelPublished.model_validate_json(m.value() or b"")
                for m in read_topic(
                    bootstrap, names["models_topic"], expect=10**6, partitions=6, timeout_s=0.5
                )
            ]

        with services(consumer, retrainer):
            consumer.start()
            retrainer.start()
            produce_all(bootstrap, names["telemetry_topic"], records[:half])
            wait_for(lambda: len(models()) >= 1, timeout_s=120, what="a first model")
            with frozen(broker_pid):
                time.sleep(FREEZE_S)
            produce_all(bootstrap, names["telemetry_topic"], records[half:])
            wait_for(
                lambda: sum(committed(consumer_settings).values()) == len(records),
                timeout_s=120,
                what="the consumer to commit the whole stream after the freeze",
            )
            requests = [
                RetrainRequested.model_validate_json(m.value() or b"")
                for m in read_topic(bootstrap, names["retrain_topic"], expect=TENANTS, partitions=6)
            ]
            asked = {r.event_id for r in requests}
            wait_for(
                lambda: asked <= {m.request_event_id for m in models()},
                timeout_s=120,
                what="every request to be answered with a model",
            )
            assert consumer.alive() and retrainer.alive(), "a service died of the freeze"
            assert consumer.starts == retrainer.starts == 1
            assert consumer.stop() == 0 and retrainer.stop() == 0
            published = models()
            letters = read_topic(
                bootstrap, names["dlq_topic"], expect=malformed, partitions=3, timeout_s=30
            )

    lettered = {
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(m.headers()) for m in letters)
    }
    assert len(lettered) == malformed
    assert {r.tenant for r in requests} == set(simulator.tenants)
    # Served exactly once in effect: one stored version, one revision, per request.
    versions: Counter[str] = Counter()
    file_store = open_store(store)
    for tenant in simulator.tenants:
        for message in file_store.revision_messages(tenant_hash(tenant, SecretStr(KEY))):
            versions.update(e for e in asked if e in message)
    assert set(versions) == asked and max(versions.values()) == 1, versions
    revisions = {(m.request_event_id, m.revision) for m in published}
    assert len(revisions) == len(asked), "a request was published twice"
    print(
        f"freeze: {FREEZE_S:.0f} s; records={len(records)} malformed={malformed} "
        f"requests={len(requests)} (distinct {len(asked)}) models={len(revisions)} "
        f"announcements={len(published)} duplicated models=0"
    )
