"""The broker stalls mid-work: SIGSTOP of a dedicated tansu broker, for longer than the
session timeout, while `slaops retrain` is in the middle of a search, a producer is
still sending telemetry and `slaops consume` is working through it; then SIGCONT.

Both lose their group membership and rejoin by themselves; neither is restarted by the
test. After the freeze, the rest of the stream (with a concept drift) makes one tenant's
live model ask again, against a champion. Afterwards the consumer has committed the
whole stream, every malformed record is in the DLQ (the same set an uninterrupted
pass of the core dead-letters), every request on the retrain topic is answered
(`ModelPublished`, `ChampionKept` or `RetrainFailed`), and no request became a second
model: at most one stored version, and one announced revision, per `event_id`.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from consumer.core import IngestCore
from consumer.main import core_config
from consumer.main import topic_specs as consumer_topics
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from kernel.store import open_store
from kernel.tenant_hash import request_ref, tenant_hash
from retrainer.main import topic_specs as retrainer_topics
from retrainer.settings import RetrainerSettings
from schemas import DeadLetter, ModelPublished, RetrainRequested
from simulator.model import DriftPlan, TelemetrySimulator
from testkit.broker import dedicated_broker
from testkit.kafka_helpers import (
    answers_by_request,
    committed,
    end_offsets,
    message_headers,
    produce_all,
    read_all,
    read_topic,
    wait_for,
)
from testkit.processes import ServiceProcess, env_for, frozen, services

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

KEY = "broker-fault-tenant-key-0123456789abcdef"
PARTITIONS = 3
TENANTS = 4
EVENTS_PER_TENANT = 900
SEED = 20261123
SESSION_TIMEOUT_MS = 6_000
FREEZE_S = 11.0  # nearly twice the session timeout
#: The middle of the stream goes out in slices, so the consumer is working through it
#: (fetching, committing) when the broker stops; part of it is sent during the freeze.
SLICE, SLICE_PAUSE_S = 10, 0.05

#: Retrainer log lines: a search starts after the replay; each outcome ends one.
SEARCH_STARTED = r"replayed rows="
SEARCH_ENDED = r"published version=|not published \(|event_id=\S+ failed: "


@pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="freezes an embedded broker of its own; an external broker cannot be SIGSTOPped",
)
def test_broker_frozen_mid_search_and_mid_ingest_both_services_recover(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'models'}"
    names = {
        "telemetry_topic": "broker.telemetry",
        "dlq_topic": "broker.dlq",
        "retrain_topic": "broker.retrain",
        "checkpoint_topic": "broker.checkpoints",
        "models_topic": "broker.models",
        "failures_topic": "broker.failures",
        "decisions_topic": "broker.decisions",
    }
    common = {"session_timeout_ms": SESSION_TIMEOUT_MS, "store": store, "tenant_key": KEY}
    consumer_tuning = {
        "group_id": "broker-consumer",
        "telemetry_partitions": PARTITIONS,
        "batch_size": 50,  # many small batches and commits: some straddle the freeze
        "poll_timeout_s": 0.05,
        "follow_models": True,
        "window_max_events": 2_000,  # the whole stream: a replay rebuilds all a detector saw
        "window_span_s": 60 * 86_400.0,
        "catch_up_lag_s": 0.0,  # simulated history: its old stamps are no backlog
        "cold_start_min_events": 250,
        "request_timeout_s": 1e9,  # a request blocks the next until it is answered
        "data_drift": False,  # the diurnal cycle reads as data drift at this interval
        "performance_warmup": 50,
        "performance_settle_events": 60,
    }
    retrainer_tuning = {
        "group_id": "broker-retrainer",
        "grid": json.dumps(
            {"lr": [0.01, 0.003], "module__hidden_layers": [1], "module__width": [16]}
        ),
        "n_jobs": 1,
        "n_splits": 3,
        "max_epochs": 30,  # searches of about a second: a freeze lands inside one
        "min_rows": 100,
    }
    simulator = TelemetrySimulator(
        TENANTS,
        SEED,
        interval_s=600.0,
        # A concept drift after the freeze: the live model's errors may ask again.
        drifts=[DriftPlan(1, 520, "concept", 2.0)],
        malformed_rate=0.01,
    )
    stream = list(simulator.events(EVENTS_PER_TENANT))
    records = [(k, v) for k, v, _m in stream]
    malformed = sum(m.malformed is not None for _k, _v, m in stream)
    assert malformed > 10
    first = 300 * TENANTS  # past cold_start_min_events: cold starts go out
    middle = 450 * TENANTS  # sent across the start of the freeze

    with dedicated_broker() as (bootstrap, broker_pid):
        consumer_settings = ConsumerSettings.model_validate(
            {"bootstrap_servers": bootstrap, **names, **consumer_tuning, **common}
        )
        ensure_topics(consumer_settings, consumer_topics(consumer_settings))
        retrainer_settings = RetrainerSettings.model_validate(
            {
                "bootstrap_servers": bootstrap,
                **{k: v for k, v in names.items() if k in RetrainerSettings.model_fields},
            }
        )
        ensure_topics(retrainer_settings, retrainer_topics(retrainer_settings))
        base = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **names, **common}
        consumer = ServiceProcess("consume", env_for({**base, **consumer_tuning}), tmp_path)
        retrainer = ServiceProcess("retrain", env_for({**base, **retrainer_tuning}), tmp_path)

        def consumer_offsets() -> dict[int, int]:
            return committed(bootstrap, "broker-consumer", names["telemetry_topic"], PARTITIONS)

        def retrainer_offsets() -> dict[int, int]:
            return committed(bootstrap, "broker-retrainer", names["retrain_topic"], 6)

        def searching() -> bool:
            log = retrainer.log()
            ended = len(re.findall(SEARCH_ENDED, log))
            return ended >= 1 and len(re.findall(SEARCH_STARTED, log)) > ended

        started = time.monotonic()
        with services(consumer, retrainer):
            consumer.start()
            retrainer.start()
            produce_all(bootstrap, names["telemetry_topic"], records[:first])
            # Cold-start models are being published; the others wait for their search.
            retrainer.wait_log(r"published version=", timeout_s=60)
            sent = threading.Event()

            def paced() -> None:  # still sending when the broker stops, then stalled
                producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
                for i in range(first, middle, SLICE):
                    for key, value in records[i : i + SLICE]:
                        producer.produce(names["telemetry_topic"], key=key, value=value)
                    producer.poll(0)
                    time.sleep(SLICE_PAUSE_S)
                if producer.flush(60) == 0:
                    sent.set()

            sender = threading.Thread(target=paced, daemon=True)
            sender.start()
            time.sleep(0.3)  # the consumer is working through the slices
            frozen_at = sum(consumer_offsets().values())
            wait_for(searching, timeout_s=10, what="a search in flight after the first model")
            # Frozen mid-work: a search running, telemetry still being sent and consumed.
            assert sender.is_alive() and frozen_at < middle, "the middle was already in"
            with frozen(broker_pid):
                time.sleep(FREEZE_S)
            resumed = time.monotonic()
            # Both lost the group to the freeze; each rejoins by itself.
            consumer.wait_log(r"assigned partition=\d+ committed offset", timeout_s=45)
            retrainer.wait_log(r"assigned partitions=", timeout_s=45, count=2)
            rejoined_s = time.monotonic() - resumed
            sender.join(timeout=90)
            assert sent.is_set(), "the telemetry sent across the freeze was not acknowledged"
            # Every cold start answered and its model live: the rest is forecast, and
            # the drifted tenant's errors may ask for a model against a champion.
            # (A tenant whose challenger lost to a baseline keeps no model: count those
            # the retrainer published.)
            retrainer.wait_log(SEARCH_ENDED, timeout_s=60, count=TENANTS)
            live = len(set(re.findall(r"tenant=(\S+) event_id=\S+ published", retrainer.log())))
            assert live >= 1, retrainer.log()[-3000:]  # small windows: the gate may refuse some
            consumer.wait_log(r"loaded model", timeout_s=60, count=live)
            produce_all(bootstrap, names["telemetry_topic"], records[middle:])

            stored = read_topic(
                bootstrap, names["telemetry_topic"], expect=len(records), partitions=PARTITIONS
            )
            assert len(stored) == len(records)
            ends = end_offsets(stored, PARTITIONS)
            assert sum(ends.values()) == len(records)
            wait_for(
                lambda: consumer_offsets() == ends,
                timeout_s=60,
                what="the consumer to commit the whole telemetry topic after the freeze",
            )
            requests = [
                RetrainRequested.model_validate_json(m.value() or b"")
                for m in read_all(bootstrap, names["retrain_topic"])
            ]
            asked = {r.event_id for r in requests}

            def answers() -> dict[str, list[str]]:
                return answers_by_request(bootstrap, names)

            wait_for(
                lambda: asked <= set(answers()),
                timeout_s=60,
                what="every retrain request to be answered",
            )
            # The topic's ends read again at every poll: one read of about a second can
            # come back short while the broker or this process stalls.
            wait_for(
                lambda: (
                    retrainer_offsets()
                    == end_offsets(read_all(bootstrap, names["retrain_topic"]), 6)
                ),
                timeout_s=30,
                what="the retrainer to commit every request",
            )
            # They recovered by themselves: still the first process of each, which lost
            # its group membership to the freeze and was given its partitions again.
            assert consumer.alive() and retrainer.alive(), "a service died of the freeze"
            assert consumer.starts == retrainer.starts == 1
            consumer_log, retrainer_log = consumer.log(), retrainer.log()
            assert consumer.stop() == 0 and retrainer.stop() == 0
            elapsed = time.monotonic() - started

            published = [
                ModelPublished.model_validate_json(m.value() or b"")
                for m in read_all(bootstrap, names["models_topic"])
            ]
            answered = answers()
            letters = read_topic(
                bootstrap, names["dlq_topic"], expect=malformed, partitions=PARTITIONS
            )

    # The oracle: one uninterrupted pass of the same core (no models) over the records
    # as the broker stored them. Dead letters do not depend on models; cold starts do
    # not either (a tenant has none yet).
    oracle = IngestCore(core_config(consumer_settings))
    expected = oracle.process(sorted(stored, key=lambda m: (m.partition(), m.offset())))
    assert expected.invalid == malformed and expected.valid == len(records) - malformed
    lettered = Counter(
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(message_headers(m)) for m in letters)
    )
    assert set(lettered) == {
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(x.headers) for x in expected.dead_letters)
    }
    cold_starts = {r.event_id for r in expected.requests if r.reason == "cold_start"}
    assert len(cold_starts) == TENANTS and cold_starts <= asked

    # Every request answered; served exactly once in effect.
    assert asked <= set(answered)
    versions: Counter[str] = Counter()
    file_store = open_store(store)
    for tenant in simulator.tenants:
        for message in file_store.revision_messages(tenant_hash(tenant, SecretStr(KEY))):
            # the store names a request by its keyed ref, never by its event_id
            versions.update(e for e in asked if request_ref(e, SecretStr(KEY)) in message)
    stored_versions = sum(
        len(file_store.revision_messages(tenant_hash(t, SecretStr(KEY)))) for t in simulator.tenants
    )
    assert set(versions) <= asked and max(versions.values()) == 1, versions
    assert stored_versions == sum(versions.values()), "a stored version serves no request"
    revisions: dict[str, set[str]] = {}
    for event in published:
        revisions.setdefault(event.request_event_id, set()).add(event.revision)
    duplicates = sum(len(r) - 1 for r in revisions.values())
    assert duplicates == 0, f"a request became more than one model: {revisions}"
    assert set(revisions) == set(versions), "announced and stored models differ"
    # A request is answered one way: never a model and also a kept champion or failure.
    mixed = {e: kinds for e, kinds in answered.items() if len(set(kinds)) > 1}
    assert not mixed, mixed

    kinds = Counter(kind for ks in answered.values() for kind in set(ks))
    rebalances = len(re.findall(r"revoked partitions", consumer_log + retrainer_log))
    answers_on_topics = sum(len(ks) for ks in answered.values())
    print(
        f"freeze={FREEZE_S:.0f}s (session timeout {SESSION_TIMEOUT_MS / 1000:.0f}s) at "
        f"committed={frozen_at}/{len(records)}, mid-search, telemetry still arriving; "
        f"records={len(records)} malformed={malformed} dead-lettered={sum(lettered.values())} "
        f"requests={len(requests)} (distinct {len(asked)}: {Counter(r.reason for r in requests)}) "
        f"answers={dict(kinds)} (records {answers_on_topics}) models={len(versions)} "
        f"stored versions={stored_versions} announcements={len(published)} "
        f"duplicates={duplicates} revocations={rebalances} rejoined={rejoined_s:.0f}s "
        f"after the resume; elapsed={elapsed:.0f}s"
    )


@pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="freezes an embedded broker of its own; an external broker cannot be SIGSTOPped",
)
def test_a_consumer_outlives_a_broker_away_longer_than_its_delivery_timeout(
    tmp_path: Path,
) -> None:
    """The broker frozen mid-stream for 4 s against a delivery timeout of 1 s (a stand-in
    for the 60 s default, after which `slaops consume` used to exit): the consumer waits,
    keeps its state and commits the rest of the stream when the broker returns, as the
    same process. (Shorter than the session timeout: the group survives, and what is
    tested is the wait for deliveries, not the rejoin the other freeze test covers.)"""
    names = {
        "telemetry_topic": "outage.telemetry",
        "dlq_topic": "outage.dlq",
        "retrain_topic": "outage.retrain",
        "checkpoint_topic": "outage.checkpoints",
        "group_id": "outage-consumer",
    }
    tuning = {
        "telemetry_partitions": PARTITIONS,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "batch_size": 10,  # many batches, each with records to deliver: one meets the freeze
        "poll_timeout_s": 0.05,
        "follow_models": False,
        "cold_start": False,
        "data_drift": False,
        "delivery_timeout_s": 1.0,
    }
    simulator = TelemetrySimulator(3, SEED, interval_s=600.0, malformed_rate=0.03)
    stream = list(simulator.events(2_000))
    records = [(k, v) for k, v, _m in stream]
    malformed = sum(m.malformed is not None for _k, _v, m in stream)
    with dedicated_broker() as (bootstrap, broker_pid):
        settings = ConsumerSettings.model_validate(
            {"bootstrap_servers": bootstrap, **names, **tuning}
        )
        ensure_topics(settings, consumer_topics(settings))
        produce_all(bootstrap, names["telemetry_topic"], records)
        consumer = ServiceProcess(
            "consume", env_for({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **names, **tuning}), tmp_path
        )

        def progress() -> int:
            offsets = committed(bootstrap, names["group_id"], names["telemetry_topic"], PARTITIONS)
            return sum(offsets.values())

        with services(consumer):
            consumer.start()
            # A freeze meets a delivery or a commit, at random: freeze again (at most
            # eight times) until one met a delivery.
            freezes = 0
            while freezes < 8:
                freezes += 1
                mark = progress()
                wait_for(lambda m=mark: progress() >= m + 150, timeout_s=90, what="progress")  # type: ignore[misc]
                with frozen(broker_pid):
                    time.sleep(4.0)
                if "broker did not acknowledge the batch" in consumer.log():
                    break
            wait_for(
                lambda: progress() == len(records),
                timeout_s=90,
                what="the whole stream committed after the broker returned",
            )
            log = consumer.log()
            assert consumer.alive() and consumer.starts == 1, "the outage ended the consumer"
            assert "broker did not acknowledge the batch" in log, "the freeze missed a delivery"
            assert consumer.stop() == 0
        letters = read_topic(bootstrap, names["dlq_topic"], expect=malformed, partitions=PARTITIONS)
    lettered = {
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(message_headers(m)) for m in letters)
    }
    assert len(lettered) == malformed  # every malformed record, some perhaps twice
    print(
        f"broker frozen 4 s x{freezes} (delivery timeout 1 s): "
        f"waits logged={log.count('still waiting')}, batches produced again="
        f"{log.count('producing it again')}, records={len(records)}, "
        f"dead letters={len(letters)} (distinct {len(lettered)})"
    )
