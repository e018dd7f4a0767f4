"""The retrainer service run by the tests: in a thread, its requests made and commits read.

`running` drives a built `RetrainerService` in a thread and stops it on the way out;
`request` is acme's cold-start `RetrainRequested` over `[0, end)` of partition 0, and
`shared_partition_telemetry` puts two tenants on that one partition.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from retrainer.service import RetrainerService
from retrainer.settings import RetrainerSettings
from schemas import RetrainRequested, retrain_event_id
from testkit.kafka_helpers import committed as kafka_committed
from testkit.kafka_helpers import produce_all
from testkit.retrain_data import telemetry_messages, tenant_rows

KEY = "integration-tenant-key-0123456789"


@contextmanager
def running(service: RetrainerService) -> Iterator[RetrainerService]:
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "retrainer did not stop"


def shared_partition_telemetry(settings: RetrainerSettings) -> int:
    """acme and noisy interleaved on ONE partition; returns the number of messages."""
    acme = telemetry_messages("acme", tenant_rows(600, seed=1))
    noisy = telemetry_messages("noisy", tenant_rows(600, seed=2, threshold_ms=90.0))
    mixed = [m for pair in zip(acme, noisy, strict=True) for m in pair]
    return produce_all(settings.bootstrap_servers or "", settings.telemetry_topic, mixed)


def request(settings: RetrainerSettings, end: int, offset: int) -> bytes:
    return (
        RetrainRequested.model_validate(
            {
                "event_id": retrain_event_id(
                    "acme", "cold_start", settings.telemetry_topic, 0, offset
                ),
                "tenant": "acme",
                "reason": "cold_start",
                "detector": "cold_start",
                "detected_at": "2026-11-02T00:00:00+00:00",
                "source": [
                    {
                        "topic": settings.telemetry_topic,
                        "partition": 0,
                        "start_offset": 0,
                        "end_offset": end,
                    }
                ],
                "n_events": end // 2,
            },
            strict=False,
        )
        .model_dump_json()
        .encode()
    )


def committed(settings: RetrainerSettings) -> int:
    return sum(
        kafka_committed(
            settings.bootstrap_servers or "", settings.group_id, settings.retrain_topic, 6
        ).values()
    )
