"""The real `slaops consume` on the real broker, SIGKILLed and started again: every warning
is raised under the same id as in one uninterrupted pass, and a repeat is the same message.

The model is real and published to a file store as the retrainer would (one version
per tenant, announced on the models topic), so each start loads it before ingesting.
The oracle is the same core, run once over the records as the broker stored them. The
windows hold each tenant's whole stream, so a restart replays every event the warning
saw and must rebuild it exactly: replayed events send nothing, and the edges after a
restart carry the ids of the raises before it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from consumer.core import IngestCore
from consumer.main import core_config, topic_specs
from consumer.settings import ConsumerSettings
from kernel.artifacts import sha256_hex
from kernel.kafka import ensure_topics
from kernel.store import ModelStore
from kernel.tenant_hash import tenant_hash
from schemas import ModelPublished
from testkit.factories import consumer_names
from testkit.kafka_helpers import committed as kafka_committed
from testkit.kafka_helpers import produce_all, read_topic, wait_for
from testkit.processes import ServiceProcess, env_for, services
from testkit.streams import interleave
from testkit.tiny_models import load_live_model
from testkit.warning_models import p99_artifacts, telemetry

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

KEY = SecretStr("warnings-integration-tenant-key-0123")
PARTITIONS = 3
TENANTS = ("acme", "globex", "initech")
EVENTS = 900
SEED = 20261202
KILLS = 2


def scripted(seed: int, n: int = EVENTS) -> tuple[np.ndarray, np.ndarray]:
    """Hot spells of p99 every 30-60 events; about half run into a breach. The stream
    ends in one, so the warning is on when the consumer stops."""
    rng = np.random.default_rng(seed)
    p99, breached = np.full(n, 100.0), np.zeros(n, bool)
    t = 40
    while t < n - 20:
        length = int(rng.integers(2, 6))
        p99[t : t + length] = 300.0
        if rng.random() < 0.5:
            p99[t + length : t + length + 3] = 300.0
            breached[t + length : t + length + 3] = True
        t += int(rng.integers(30, 60))
    p99[-5:] = 3_000.0
    return p99, breached


def publish(store: ModelStore, uri: str, tenant: str) -> ModelPublished:
    """Publish the scripted model for `tenant` as its first version, and its announcement."""
    artifacts = p99_artifacts()
    files = {"safetensors": artifacts.safetensors, "pt": artifacts.pt, "card": artifacts.card}
    hashed = tenant_hash(tenant, KEY)
    published = store.publish(hashed, files, message=f"scripted {tenant}", parent=None)
    return ModelPublished.model_validate(
        {
            "tenant": tenant,
            "tenant_hash": hashed,
            "store_uri": uri,
            "revision": published.revision,
            "paths": dict(published.paths),
            "sha256": {kind: sha256_hex(data) for kind, data in files.items()},
            "metrics": {"log_loss": 0.2},
            "decision": artifacts.card_model.lineage["decision"],
            "request_event_id": "0" * 32,
            "reason": "cold_start",
            "model_version": 1,
            "published_at": datetime.now(UTC),
        },
        strict=False,
    )


def test_a_killed_consumer_raises_every_warning_under_its_one_id(
    bootstrap: str,
    unique_name: Callable[[str], str],
    file_store: tuple[str, ModelStore],
    tmp_path: Path,
) -> None:
    uri, store = file_store
    names = consumer_names(unique_name, models=True)
    tuning = {
        "telemetry_partitions": PARTITIONS,
        "session_timeout_ms": 6_000,
        "poll_timeout_s": 0.05,
        "batch_size": 25,  # many small commits: kills land between and inside them
        "window_max_events": 2_000,  # the whole stream: a restart replays all it saw
        "window_span_s": 30 * 86_400.0,
        "cold_start": False,
        "data_drift": False,
        "store": uri,
        "tenant_key": KEY.get_secret_value(),
    }
    settings = ConsumerSettings(bootstrap_servers=bootstrap, **names, **tuning)  # type: ignore[arg-type]
    ensure_topics(settings, topic_specs(settings))
    events = [publish(store, uri, tenant) for tenant in TENANTS]
    produce_all(
        bootstrap,
        settings.models_topic,
        [(e.tenant.encode(), e.model_dump_json().encode()) for e in events],
    )
    streams = {t: telemetry(t, *scripted(SEED + i)) for i, t in enumerate(TENANTS)}
    records = [(t.encode(), v) for t, v in interleave(streams)]
    produce_all(bootstrap, settings.telemetry_topic, records)

    def committed() -> int:
        topic = settings.telemetry_topic
        return sum(kafka_committed(bootstrap, settings.group_id, topic, PARTITIONS).values())

    env = env_for({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **names, **tuning})
    consumer = ServiceProcess("consume", env, tmp_path)
    rng = random.Random(SEED)
    kill_points = []
    with services(consumer):
        for share in sorted(rng.uniform(0.2, 0.8) for _ in range(KILLS)):
            consumer.start()
            wait_for(
                lambda s=share: committed() >= s * len(records),  # type: ignore[misc]
                timeout_s=120,
                what=f"{share:.0%} of the stream committed",
            )
            consumer.kill()
            kill_points.append(committed())
        consumer.start()
        wait_for(lambda: committed() == len(records), timeout_s=180, what="the whole stream")
        assert consumer.stop() == 0  # leaves the group: warnings still on move with it

    # The oracle: one uninterrupted pass of the same core, with the same live models.
    stored = read_topic(
        bootstrap, settings.telemetry_topic, expect=len(records), partitions=PARTITIONS
    )
    oracle = IngestCore(core_config(settings))
    for event in events:
        oracle.apply_model(load_live_model(event, store=store, store_uri=uri, tenant_key=KEY))
    expected = oracle.process(sorted(stored, key=lambda m: (m.partition(), m.offset())))
    oracle_raises = {
        json.loads(v)["warning_id"]: v for _k, v in expected.warnings if b'"raised"' in v
    }
    assert len(oracle_raises) >= 30, "the script raises warnings for every tenant"
    still_on = {s.warning.warning_id for s in oracle.tenants() if s.warning.on}
    assert len(still_on) == len(TENANTS)

    sent = read_topic(
        bootstrap, settings.warnings_topic, expect=len(expected.warnings), partitions=PARTITIONS
    )
    edges = [(m.key(), m.value() or b"") for m in sent]
    raises = [v for _k, v in edges if json.loads(v)["kind"] == "raised"]
    # Every warning raised under the uninterrupted run's id, none under another; a
    # repeat (a batch produced again after a kill) is the same message, byte for byte.
    assert {json.loads(v)["warning_id"] for v in raises} == set(oracle_raises)
    for value in raises:
        assert value == oracle_raises[json.loads(value)["warning_id"]]
    clears = [json.loads(v) for _k, v in edges if json.loads(v)["kind"] == "cleared"]
    seen = {(c["warning_id"], c["reason"], c["ts"]) for c in clears}
    oracle_clears = {
        (c["warning_id"], c["reason"], c["ts"])
        for c in (json.loads(v) for _k, v in expected.warnings)
        if c["kind"] == "cleared"
    }
    # Exactly the clears of the uninterrupted run: a revoke or a stop clears nothing (the
    # warnings still on move with their partitions to the next owner).
    assert seen == oracle_clears
    cleared_ids = {c["warning_id"] for c in clears}
    assert not still_on & cleared_ids
    assert all(key in {t.encode() for t in TENANTS} for key, _v in edges)
    print(
        f"kills at committed={kill_points} of {len(records)}; raises={len(oracle_raises)} "
        f"sent={len(raises)} clears={len(clears)} still on={len(still_on)}"
    )
