"""Wires `slaops retrain`: settings → store, tenant key, clients → handler → service."""

from __future__ import annotations

import logging
import threading

from pydantic import SecretStr

from consumer.main import stop_on_signals
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import RequestHandler
from retrainer.replay import TenantRows, replay_ranges
from retrainer.search import SearchConfig, default_grid
from retrainer.service import RetrainerService
from retrainer.settings import RetrainerSettings
from retrainer.store import ModelStore, open_store
from retrainer.tenant_hash import load_or_create_local_key
from schemas import RetrainRequested
from slaops.embedded import embedded_broker
from slaops.errors import ConfigError
from slaops.kafka import (
    DeliveryTracker,
    TopicSpec,
    base_config,
    ensure_topics,
    make_consumer,
    make_producer,
)

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
        n_iter=settings.n_iter,
        holdout_fraction=settings.holdout_fraction,
        grid=grid if grid is not None else default_grid(),
    )
    return TrainingConfig(
        search=search,
        horizon=settings.horizon,
        lags=settings.lags,
        min_rows=settings.min_rows,
        champion_margin=settings.champion_margin,
    )


def store_uri(settings: RetrainerSettings) -> str:
    if settings.store is not None:
        return settings.store
    if settings.local_mode:
        return f"file://{(settings.data_dir / 'models').resolve()}"
    raise ConfigError(
        "no model store: set SLAOPS_STORE (or --store) to file://DIR or hf://OWNER/REPO, "
        "or pass --local-mode for a store in the local data directory"
    )


def open_model_store(settings: RetrainerSettings) -> ModelStore:
    try:
        return open_store(
            store_uri(settings),
            token=settings.hf_token,
            endpoint=settings.hf_endpoint,
            private=settings.hf_private,
            http_timeout_s=settings.hub_timeout_s,
        )
    except ValueError as exc:
        raise ConfigError(f"store (SLAOPS_STORE or --store): {exc}") from exc


def tenant_key(settings: RetrainerSettings) -> SecretStr:
    if settings.tenant_key is not None:
        if len(settings.tenant_key.get_secret_value()) < 16:
            raise ConfigError("tenant_key (SLAOPS_TENANT_KEY): use at least 16 characters")
        return settings.tenant_key
    if settings.local_mode:
        return load_or_create_local_key(settings.data_dir)
    raise ConfigError(
        "no tenant key: set SLAOPS_TENANT_KEY (a long random secret; it hashes tenant slugs "
        "in store paths), or pass --local-mode to generate one in the local data directory"
    )


def build_service(settings: RetrainerSettings) -> RetrainerService:
    training = training_config(settings)
    store = open_model_store(settings)
    key = tenant_key(settings)
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
        store_uri=store_uri(settings),
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
    tenant_key(settings)
    open_model_store(settings)
    ensure_topics(settings, topic_specs(settings))
    service = build_service(settings)
    if stop is None:
        stop = threading.Event()
        stop_on_signals(stop)
    log.info(
        "retraining topic=%s group=%s store=%s strategy=%s",
        settings.retrain_topic,
        settings.group_id,
        store_uri(settings),
        settings.strategy,
    )
    stats = service.run(stop)
    log.info("stopped: %s", stats)
    return 0
