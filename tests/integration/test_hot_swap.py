"""Hot swap through the real broker: a model announced while events flow takes over the
forecasts from one event on, and every event is forecast by exactly one model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from consumer.main import topic_specs
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from kernel.store import ModelStore
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.selection import EvidenceRule
from schemas import ModelPublished
from testkit.consumer_runs import running
from testkit.factories import consumer_names
from testkit.kafka_helpers import produce_all, read_topic, wait_for
from testkit.live_models import KEY, SEARCH
from testkit.retrain_data import request_for, telemetry_messages, tenant_rows

pytestmark = pytest.mark.integration
PARTITIONS = 2
EVENTS = 1_200


def publish(handler: RequestHandler, offset: int) -> ModelPublished:
    event = handler.handle(request_for("acme", offset=offset)).events[0][2]
    assert isinstance(event, ModelPublished)
    return event


def test_a_model_announced_mid_stream_takes_over_with_no_gap(
    bootstrap: str,
    unique_name: Callable[[str], str],
    consumer_settings: Callable[..., ConsumerSettings],
    file_store: tuple[str, ModelStore],
) -> None:
    uri, store = file_store
    settings = consumer_settings(
        consumer_names(unique_name, models=True),
        telemetry_partitions=PARTITIONS,
        session_timeout_ms=6_000,
        poll_timeout_s=0.05,
        batch_size=50,
        cold_start=False,
        data_drift=False,
        store=uri,
        tenant_key=KEY,
        publish_forecasts=True,
    )
    ensure_topics(settings, topic_specs(settings))
    # Confidence 0 publishes any challenger: the second model always replaces the first.
    handler = RequestHandler(
        store=store,
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SEARCH, min_rows=100, evidence=EvidenceRule(confidence=0.0)),
        replay=lambda request: tenant_rows(1_500, seed=request.source[0].end_offset % 97),
        topics=OutcomeTopics(models=settings.models_topic, failures="f", decisions="d"),
    )
    first = publish(handler, 599)
    assert first.model_version == 1

    def announce(event: ModelPublished) -> None:
        produce_all(bootstrap, settings.models_topic, [(b"acme", event.model_dump_json().encode())])

    stream = telemetry_messages("acme", tenant_rows(EVENTS, seed=11))
    announce(first)
    with running(settings) as service:
        wait_for(lambda: service.stats.models == 1, timeout_s=60, what="the first model")

        swapped = threading.Event()

        def flow() -> None:
            """Small paced slices; the last sixth waits for the swap, so it lands mid-stream."""
            for start in range(0, EVENTS, 40):
                if start >= EVENTS * 5 // 6:
                    swapped.wait(timeout=60)
                produce_all(bootstrap, settings.telemetry_topic, stream[start : start + 40])
                time.sleep(0.05)

        sender = threading.Thread(target=flow)
        sender.start()
        wait_for(lambda: service.stats.valid >= EVENTS // 3, timeout_s=60, what="a third")
        # The store decides what is newest, so the second version is published (to the
        # store) only now, mid-stream, and then announced.
        second = publish(handler, 700)
        assert second.model_version == 2
        announce(second)
        wait_for(lambda: service.stats.models == 2, timeout_s=30, what="the second model")
        swapped.set()
        sender.join(timeout=60)
        wait_for(lambda: service.stats.valid == EVENTS, timeout_s=60, what="every event")

    forecasts = [
        json.loads(m.value() or b"")
        for m in read_topic(
            bootstrap, settings.forecasts_topic, expect=EVENTS, partitions=PARTITIONS
        )
    ]
    # No gap and no double: one forecast per event, in event order (one tenant, one partition).
    sent = [datetime.fromisoformat(json.loads(v)["ts"]) for _k, v in stream]
    assert [datetime.fromisoformat(f["ts"]) for f in forecasts] == sent
    revisions = [f["model_revision"] for f in forecasts]
    switch = revisions.index(second.revision)
    assert 0 < switch < EVENTS, "the swap did not land mid-stream"
    assert set(revisions[:switch]) == {first.revision}
    assert set(revisions[switch:]) == {second.revision}, "forecasts went back to the old model"
    assert [f["model_version"] for f in forecasts[switch - 1 : switch + 1]] == [1, 2]
