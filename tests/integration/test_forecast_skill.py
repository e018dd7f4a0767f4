"""What a downstream service sees: the forecasts on `sla.forecasts`, scored against the
labels that follow, carry skill over the tenant's breach rate.

The model is trained by the retrainer's own handler on the first part of a stream, and
announced; the consumer (the real service, through the real broker) then forecasts
every later event with `--publish-forecasts`. Each forecast at event t is for a breach
within t + 1 ... t + horizon.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from consumer.main import topic_specs
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from kernel.store import ModelStore
from retrainer.dataset import within_horizon
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from schemas import ModelPublished
from testkit.consumer_runs import running
from testkit.factories import consumer_names
from testkit.kafka_helpers import produce_all, read_topic, wait_for
from testkit.live_models import KEY, SEARCH
from testkit.retrain_data import request_for, telemetry_messages, tenant_rows

pytestmark = pytest.mark.integration
TRAIN = 1_500
LIVE = 1_000


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_published_forecasts_after_the_training_window_beat_the_prior(
    bootstrap: str,
    unique_name: Callable[[str], str],
    consumer_settings: Callable[..., ConsumerSettings],
    file_store: tuple[str, ModelStore],
) -> None:
    uri, store = file_store
    settings = consumer_settings(
        consumer_names(unique_name, models=True),
        telemetry_partitions=1,
        session_timeout_ms=6_000,
        poll_timeout_s=0.05,
        cold_start=False,
        data_drift=False,
        store=uri,
        tenant_key=KEY,
        publish_forecasts=True,
    )
    ensure_topics(settings, topic_specs(settings))
    rows = tenant_rows(TRAIN + LIVE, seed=5)
    training = replace(
        rows,
        ts=rows.ts[:TRAIN],
        features=rows.features[:TRAIN],
        labels=rows.labels[:TRAIN],
    )
    handler = RequestHandler(
        store=store,
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SEARCH),
        replay=lambda _request: training,
        topics=OutcomeTopics(models=settings.models_topic, failures="f", decisions="d"),
    )
    event = handler.handle(request_for("acme", offset=TRAIN - 1)).events[0][2]
    assert isinstance(event, ModelPublished), "the model did not pass the skill gate"
    produce_all(bootstrap, settings.models_topic, [(b"acme", event.model_dump_json().encode())])

    messages = telemetry_messages("acme", rows)
    with running(settings) as service:
        produce_all(bootstrap, settings.telemetry_topic, messages[:TRAIN])
        wait_for(lambda: service.stats.valid == TRAIN, timeout_s=60, what="the history")
        wait_for(lambda: service.stats.models == 1, timeout_s=60, what="the model")
        produce_all(bootstrap, settings.telemetry_topic, messages[TRAIN:])
        wait_for(lambda: service.stats.valid == TRAIN + LIVE, timeout_s=60, what="every event")

    forecasts = [
        json.loads(m.value() or b"")
        for m in read_topic(bootstrap, settings.forecasts_topic, expect=LIVE, partitions=1)
    ]
    live_ts = rows.ts[TRAIN:]
    stamps = [np.datetime64(f["ts"].replace("Z", "")).astype("datetime64[s]") for f in forecasts]
    assert [s.astype(np.int64) for s in stamps][-LIVE:] == [int(t) for t in live_ts]
    horizon = TrainingConfig(search=SEARCH).horizon
    # The last forecasts' horizons run past the stream: only fully labelled ones count.
    proba = np.array([f["probability"] for f in forecasts[-LIVE:]])[:-horizon]
    outcome = within_horizon(rows.labels[TRAIN:], horizon)[:-horizon].astype(np.float64)
    rate = within_horizon(rows.labels[:TRAIN], horizon)[:-horizon].mean()
    model_loss = _log_loss(outcome, proba)
    prior_loss = _log_loss(outcome, np.full_like(proba, rate))
    assert model_loss < 0.8 * prior_loss, (model_loss, prior_loss)
    brier_model = float(np.mean((proba - outcome) ** 2))
    brier_prior = float(np.mean((rate - outcome) ** 2))
    assert brier_model < brier_prior
