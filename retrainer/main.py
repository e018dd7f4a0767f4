"""Wires `slaops retrain`: settings → store, tenant key, clients → handler → service."""

from __future__ import annotations

import logging
import threading

from kernel.embedded import embedded_broker
from kernel.features import FeatureSpec
from kernel.kafka import (
    DeliveryTracker,
    TopicSpec,
    base_config,
    ensure_topics,
    make_consumer,
    make_producer,
)
from kernel.signals import stop_on_signals
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import RequestHandler
from retrainer.replay import TenantRows, replay_ranges
from retrainer.search import SearchConfig, default_grid
from retrainer.service import RetrainerService
from retrainer.settings import RetrainerSettings
from schemas import RetrainRequested

log = logging.getLogger(__name__)


def training_config(settings: RetrainerSettings) -> TrainingConfig:
    grid = settings.search_grid()
    search = SearchConfig(
        strategy=settings.strategy,
        n_splits=settings.n_splits,
        n_jobs=settings.n_jobs,
        seed=settings.seed,
        max_epochs=settings.max_epochs,
        batch_size=settings.batch_size,
        patience=settings.patience,
        n_iter=settings.n_iter,
        holdout_fraction=settings.holdout_fraction,
        grid=grid if grid is not None else default_grid(),
    )
    return TrainingConfig(
        search=search,
        horizon=settings.horizon,
        features=FeatureSpec(lags=settings.lags, rolling_window=settings.rolling_window),
        min_rows=settings.min_rows,
        champion_margin=settings.champion_margin,
    )


def build_service(settings: RetrainerSettings) -> RetrainerService:
    training = training_config(settings)
    store = settings.open_model_store()
    key = settings.tenant_secret()
    client = base_config(settings)

    def replay(request: RetrainRequested) -> TenantRows:
        return replay_ranges(
            client,
            request.source,
            tenant=request.tenant,
            max_bytes=settings.max_message_bytes,
            timeout_s=settings.replay_timeout_s,
        )

    handler = RequestHandler(
        store=store,
        store_uri=settings.store_uri(),
        tenant_key=key,
        training=training,
        replay=replay,
        models_topic=settings.models_topic,
        failures_topic=settings.failures_topic,
        decisions_topic=settings.decisions_topic,
    )
    consumer = make_consumer(
        settings, settings.group_id, **{"max.poll.interval.ms": settings.max_poll_interval_ms}
    )
    return RetrainerService(
        handler=handler,
        consumer=consumer,
        tracker=DeliveryTracker(make_producer(settings)),
        retrain_topic=settings.retrain_topic,
        failures_topic=settings.failures_topic,
    )


def topic_specs(settings: RetrainerSettings) -> list[TopicSpec]:
    return [
        TopicSpec(settings.retrain_topic, 6),
        TopicSpec(settings.models_topic, 6),
        TopicSpec(settings.failures_topic, 6),
        TopicSpec(settings.decisions_topic, 6),
    ]


def run_retrainer(settings: RetrainerSettings, stop: threading.Event | None = None) -> int:
    if settings.bootstrap_servers is None and settings.embedded_broker:
        with embedded_broker() as (bootstrap, _pid):
            log.info("no KAFKA_BOOTSTRAP_SERVERS: using the embedded broker at %s", bootstrap)
            updated = settings.model_copy(update={"bootstrap_servers": bootstrap})
            return run_retrainer(updated, stop)
    settings.require_bootstrap()
    training_config(settings)  # every check that needs no network, before the broker
    settings.tenant_secret()
    settings.open_model_store()
    ensure_topics(settings, topic_specs(settings))
    service = build_service(settings)
    if stop is None:
        stop = threading.Event()
        stop_on_signals(stop)
    log.info(
        "retraining topic=%s group=%s store=%s strategy=%s",
        settings.retrain_topic,
        settings.group_id,
        settings.store_uri(),
        settings.strategy,
    )
    stats = service.run(stop)
    log.info("stopped: %s", stats)
    return 0
