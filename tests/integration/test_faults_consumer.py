"""The real `slaops consume`, SIGKILLed at seeded points of a drifting, partly malformed
stream and started again each time: nothing is lost, requests keep their `event_id`.

The oracle is the same core run once, uninterrupted, over the records as the broker
stored them (partition and offset included). The windows hold each tenant's whole
stream, so a restart replays every event a detector has seen and the killed run must
reach exactly the oracle's decisions.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer.core import IngestCore
from consumer.main import core_config, topic_specs
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from schemas import DeadLetter, RetrainRequested
from simulator.model import DriftPlan, TelemetrySimulator
from testkit.consumer_runs import committed_by_partition
from testkit.factories import consumer_names
from testkit.kafka_helpers import message_headers, produce_all, read_topic, wait_for
from testkit.processes import ServiceProcess, env_for, services

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

PARTITIONS = 3
TENANTS = 4
EVENTS_PER_TENANT = 1_500
SEED = 20261122
KILLS = 3


def test_sigkilled_consumer_loses_nothing_and_repeats_requests_with_their_event_id(
    bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    names = consumer_names(unique_name)
    tuning = {
        "telemetry_partitions": PARTITIONS,
        "session_timeout_ms": 6_000,
        "poll_timeout_s": 0.05,
        "batch_size": 25,  # many small commits: kills land between and inside them
        "follow_models": False,
        "window_max_events": 2_000,  # the whole stream: restarts replay all a detector saw
        "window_span_s": 30 * 86_400.0,
        # Without a retrainer a request stays in flight (until the wall-clock timeout) and
        # holds the tenant's next drift back as a follow-up: no cold starts, and no
        # request held in flight, so every drift past the cooldown is a request.
        "cold_start": False,
        "request_timeout_s": 0.0,
        # The drifts come before a day is covered, and the stream is sent at speed: one
        # data-drift reference, cooldowns on event time (oracle and service alike).
        "drift_seasonal": False,
        "wall_cooldown": False,
    }
    settings = ConsumerSettings(bootstrap_servers=bootstrap, **names, **tuning)  # type: ignore[arg-type]
    ensure_topics(settings, topic_specs(settings))
    simulator = TelemetrySimulator(
        TENANTS,
        SEED,
        drifts=[DriftPlan(1, 700, "data", 1.5), DriftPlan(3, 900, "data", 2.0)],
        malformed_rate=0.02,
    )
    stream = list(simulator.events(EVENTS_PER_TENANT))
    records = [(key, value) for key, value, _meta in stream]
    malformed = sum(meta.malformed is not None for _k, _v, meta in stream)
    assert malformed > 50

    env = env_for({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **names, **tuning})
    consumer = ServiceProcess("consume", env, tmp_path)
    rng = random.Random(SEED)
    produce_all(bootstrap, settings.telemetry_topic, records)
    # Seeded kill points: after the group has committed a seeded share of the stream
    # (mid-batch work in flight), and right after a request was produced but before
    # the offset that caused it was committed (so the restart must emit it again).
    thresholds = sorted(rng.uniform(0.1, 0.9) * len(records) for _ in range(KILLS - 1))
    plan: list[float | None] = [None, *thresholds]  # the first request comes early
    kill_points = []
    with services(consumer):
        for threshold in plan:
            consumer.start()
            if threshold is None:
                consumer.wait_log(r"retrain requested", timeout_s=90)
            else:
                wait_for(
                    lambda t=threshold: sum(committed_by_partition(settings).values()) >= t,  # type: ignore[misc]
                    timeout_s=90,
                    what=f"{threshold:.0f} records committed",
                )
            consumer.kill()
            kill_points.append(sum(committed_by_partition(settings).values()))
        consumer.start()
        consumer.wait_log(r"assigned partition", timeout_s=60)
        wait_for(
            lambda: sum(committed_by_partition(settings).values()) == len(records),
            timeout_s=120,
            what="the restarted consumer to commit the whole stream",
        )
        assert consumer.stop() == 0

    # The oracle: one uninterrupted pass of the same core over the records as stored.
    stored = read_topic(
        bootstrap, settings.telemetry_topic, expect=len(records), partitions=PARTITIONS
    )
    assert len(stored) == len(records)
    oracle = IngestCore(core_config(settings))
    expected = oracle.process(sorted(stored, key=lambda m: (m.partition(), m.offset())))
    assert expected.invalid == malformed and expected.valid == len(records) - malformed
    expected_requests = {r.event_id: r for r in expected.requests}
    drifted = {(r.tenant) for r in expected.requests if r.detected_at >= simulator.event_time(700)}
    assert {"tenant-001", "tenant-003"} <= drifted

    letters = read_topic(bootstrap, settings.dlq_topic, expect=malformed, partitions=PARTITIONS)
    lettered = Counter(
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(message_headers(m)) for m in letters)
    )
    # Every malformed record is dead-lettered; one killed after producing may repeat.
    assert set(lettered) == {
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(x.headers) for x in expected.dead_letters)
    }

    requests = [
        RetrainRequested.model_validate_json(m.value() or b"")
        for m in read_topic(
            bootstrap, settings.retrain_topic, expect=len(expected_requests), partitions=PARTITIONS
        )
    ]

    def show(rs):  # type: ignore[no-untyped-def]
        return sorted(
            (r.tenant, r.reason, r.source[0].partition, r.source[0].end_offset) for r in rs
        )

    assert {r.event_id for r in requests} == set(expected_requests), (
        show(requests),
        show(expected_requests.values()),
    )
    for request in requests:  # a repeat is the same request, not a new one
        assert request == expected_requests[request.event_id]
    repeats = len(requests) - len(expected_requests)
    print(
        f"kills={KILLS} at committed={kill_points} records={len(records)} "
        f"malformed={malformed} dead-lettered={sum(lettered.values())} "
        f"requests={len(expected_requests)} repeated={repeats}"
    )
