"""Wires `slaops consume`: settings → clients → core → service loop."""

from __future__ import annotations

import logging
import threading
from functools import partial

import torch

from consumer.checkpoint import CheckpointLog
from consumer.core import CoreConfig, IngestCore
from consumer.detectors import DriftConfig
from consumer.follower import ModelFollower
from consumer.live_model import load_live_model
from consumer.performance import PerformanceConfig
from consumer.service import ConsumerService
from consumer.settings import ConsumerSettings
from kernel.embedded import embedded_broker
from kernel.kafka import (
    DeliveryTracker,
    TopicSpec,
    base_config,
    ensure_topics,
    make_consumer,
    make_producer,
)
from kernel.signals import stop_on_signals

log = logging.getLogger(__name__)


def core_config(settings: ConsumerSettings) -> CoreConfig:
    drift_kwargs: dict[str, object] = {}
    if settings.detector_stride is not None:
        drift_kwargs["stride"] = settings.detector_stride
    return CoreConfig(
        topic=settings.telemetry_topic,
        window_max_events=settings.window_max_events,
        window_span_s=settings.window_span_s,
        max_tenants=settings.max_tenants,
        max_message_bytes=settings.max_message_bytes,
        drift=DriftConfig(
            detector=settings.detector,
            params=dict(settings.detector_params),
            min_agreeing_features=settings.drift_min_features,
            agreement_window=settings.drift_agreement_events,
            warmup=settings.drift_warmup_events,
            **drift_kwargs,  # type: ignore[arg-type]
        ),
        data_drift=settings.data_drift,
        cold_start=settings.cold_start,
        cold_start_min_events=settings.cold_start_min_events,
        cold_start_min_per_class=settings.cold_start_min_per_class,
        cooldown_s=settings.cooldown_s,
        request_timeout_s=settings.request_timeout_s,
        performance=PerformanceConfig(
            detector=settings.performance_detector,
            params=dict(settings.performance_params),
            stride=settings.performance_stride,
            warmup=settings.performance_warmup,
            settle_events=settings.performance_settle_events,
        ),
        publish_forecasts=settings.publish_forecasts,
    )


def topic_specs(settings: ConsumerSettings) -> list[TopicSpec]:
    return [
        TopicSpec(settings.telemetry_topic, settings.telemetry_partitions),
        TopicSpec(settings.dlq_topic, settings.telemetry_partitions),
        TopicSpec(settings.retrain_topic, settings.telemetry_partitions),
        TopicSpec(settings.checkpoint_topic, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.models_topic, settings.telemetry_partitions),
        TopicSpec(settings.forecasts_topic, settings.telemetry_partitions),
    ]


def build_follower(settings: ConsumerSettings) -> ModelFollower | None:
    if not settings.follow_models:
        return None
    load = partial(
        load_live_model,
        store=settings.open_model_store(),
        store_uri=settings.store_uri(),
        tenant_key=settings.tenant_secret(),
    )
    return ModelFollower(
        client_config=base_config(settings),
        models_topic=settings.models_topic,
        failures_topic=settings.failures_topic,
        decisions_topic=settings.decisions_topic,
        load=load,
    )


def build_service(settings: ConsumerSettings) -> ConsumerService:
    # Forecasts are many tiny forward calls: one intra-op thread is fastest, and idle
    # OpenMP workers spinning beside the poll loop cost more than they ever give back.
    torch.set_num_threads(1)
    core = IngestCore(core_config(settings))
    tracker = DeliveryTracker(make_producer(settings))
    consumer = make_consumer(
        settings, settings.group_id, **{"max.poll.interval.ms": settings.max_poll_interval_ms}
    )
    checkpoints = CheckpointLog(
        topic=settings.checkpoint_topic,
        group_id=settings.group_id,
        tracker=tracker,
        reader_config=base_config(settings),
    )
    return ConsumerService(
        core=core,
        consumer=consumer,
        tracker=tracker,
        checkpoints=checkpoints,
        telemetry_topic=settings.telemetry_topic,
        dlq_topic=settings.dlq_topic,
        retrain_topic=settings.retrain_topic,
        forecasts_topic=settings.forecasts_topic,
        follower=build_follower(settings),
        batch_size=settings.batch_size,
        poll_timeout_s=settings.poll_timeout_s,
    )


def run_consumer(settings: ConsumerSettings, stop: threading.Event | None = None) -> int:
    if settings.bootstrap_servers is None and settings.embedded_broker:
        with embedded_broker() as (bootstrap, _pid):
            log.info("no KAFKA_BOOTSTRAP_SERVERS: using the embedded broker at %s", bootstrap)
            return run_consumer(settings.model_copy(update={"bootstrap_servers": bootstrap}), stop)
    settings.require_bootstrap()
    core_config(settings)  # invalid settings fail here, before any connection
    if settings.follow_models:
        settings.tenant_secret()
        settings.open_model_store()
    ensure_topics(settings, topic_specs(settings))
    service = build_service(settings)
    if stop is None:
        stop = threading.Event()
        stop_on_signals(stop)
    log.info(
        "consuming topic=%s group=%s detector=%s",
        settings.telemetry_topic,
        settings.group_id,
        settings.detector,
    )
    stats = service.run(stop)
    log.info("stopped: %s", stats)
    return 0
