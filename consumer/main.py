"""Wires `slaops consume`: settings → configs, store → clients → core → service loop.

What is the consumer's own: its configs (`prepare`, no network), its topics and its
service object. Start-up itself (broker, topics, signals) is the application's runner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import torch
from confluent_kafka import Consumer, TopicPartition

from consumer.checkpoint import CheckpointLog
from consumer.core import CoreConfig, IngestCore
from consumer.detectors import DriftConfig
from consumer.follower import AnswerFollower, AnswerTopics
from consumer.observability import ConsumerHooks, ConsumerMetrics
from consumer.performance import PerformanceConfig
from consumer.service import ConsumerService, ServiceClients, ServiceConfig
from consumer.settings import ConsumerSettings
from kernel.kafka import (
    DeliveryTracker,
    TopicSpec,
    base_config,
    make_group_consumer,
    make_producer,
    slaops_topics,
)
from kernel.model_follower import ModelAuthority

C = TypeVar("C", CoreConfig, DriftConfig, PerformanceConfig, ServiceConfig, AnswerTopics)


#: Config fields that are not settings: the nested configs, and fixed choices.
_NOT_SETTINGS: Final = frozenset(
    {"drift", "performance", "features", "clip", "follower_catch_up_s", "redelivery"}
)


def core_config(settings: ConsumerSettings) -> CoreConfig:
    """The core's config, each field from the setting of the same name.

    The configs validate their fields here (before any connection): a bad value raises
    ValueError naming its setting.
    """
    return _by_name(
        CoreConfig,
        settings,
        drift=_by_name(DriftConfig, settings),
        performance=_by_name(PerformanceConfig, settings),
    )


def _by_name(kind: type[C], settings: ConsumerSettings, **nested: Any) -> C:
    """A `kind` whose every field is the setting of the same name (or given in `nested`)."""
    values = dict(nested)
    for name in (f.name for f in dataclasses.fields(kind)):
        if name in type(settings).model_fields:
            values[name] = getattr(settings, name)
        elif name not in _NOT_SETTINGS:  # a field renamed on one side only
            raise TypeError(f"{kind.__name__}.{name} has no setting of the same name")
    return kind(**values)


@dataclass(frozen=True)
class ConsumerParts:
    """What start-up builds from the settings once, before any connection."""

    core: CoreConfig
    #: The store (opened once) that decides each tenant's newest model; None: not followed.
    models: ModelAuthority | None


def prepare(settings: ConsumerSettings) -> ConsumerParts:
    """Build the configs and open the store; bad settings raise `SlaopsError` here."""
    core = core_config(settings)
    if not settings.follow_models:
        return ConsumerParts(core, None)
    key = settings.tenant_secret()
    store = settings.open_model_store()
    return ConsumerParts(core, ModelAuthority(store, settings.store_uri(), key))


def build_core(parts: ConsumerParts) -> IngestCore:
    """The pure core on `parts`' config: the service drives it, and so does `slaops backtest`."""
    return IngestCore(parts.core)


def topic_specs(settings: ConsumerSettings) -> list[TopicSpec]:
    return slaops_topics(
        settings.telemetry_partitions,
        telemetry=settings.telemetry_topic,
        dlq=settings.dlq_topic,
        retrain=settings.retrain_topic,
        checkpoints=settings.checkpoint_topic,
        models=settings.models_topic,
        forecasts=settings.forecasts_topic,
        warnings=settings.warnings_topic,
    )


def describe(settings: ConsumerSettings) -> str:
    return (
        f"consuming topic={settings.telemetry_topic} group={settings.group_id} "
        f"detector={settings.detector}"
    )


def build_service(
    settings: ConsumerSettings, parts: ConsumerParts | None = None
) -> ConsumerService:
    """The service with its Kafka clients (`parts` from `prepare`, built if not given)."""
    parts = prepare(settings) if parts is None else parts
    # Forecasts are many tiny forward calls: one intra-op thread is fastest, and idle
    # OpenMP workers spinning beside the poll loop cost more than they ever give back.
    torch.set_num_threads(1)
    # Records never time out in the producer: through a broker outage of any length
    # they wait there, in order, and the service waits for them (a timed-out record of
    # an idempotent producer would have to be produced again, out of order). Batches
    # are lz4-compressed: a batch's forecasts are tens of thousands of similar JSON
    # records, and the broker then takes in a fraction of the bytes.
    tracker = DeliveryTracker(
        make_producer(settings, **{"message.timeout.ms": 0, "compression.type": "lz4"})
    )
    follower = None
    if parts.models is not None:
        follower = AnswerFollower(
            client_config=base_config(settings),
            topics=_by_name(AnswerTopics, settings),
            authority=parts.models,
        )
    core = build_core(parts)
    hooks: ConsumerHooks = ConsumerHooks()
    extra: dict[str, Any] = {"max.poll.interval.ms": settings.max_poll_interval_ms}
    if settings.metrics_port:
        metrics = ConsumerMetrics(
            core=core,
            liveness_timeout_s=settings.liveness_timeout_s,
            follower=follower,
            positions=lambda numbers: _positions(consumer, settings.telemetry_topic, numbers),
        )
        extra |= {
            "statistics.interval.ms": round(settings.lag_interval_s * 1000),
            "stats_cb": metrics.on_stats,
        }
        hooks = metrics
    consumer = make_group_consumer(settings, settings.group_id, **extra)
    checkpoints = CheckpointLog(
        topic=settings.checkpoint_topic,
        group_id=settings.group_id,
        tracker=tracker,
        reader_config=base_config(settings),
    )
    return ConsumerService(
        core=core,
        clients=ServiceClients(consumer, tracker, checkpoints),
        config=_by_name(ServiceConfig, settings),
        follower=follower,
        hooks=hooks,
    )


def _positions(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, int]:
    """The consumer's next offset of each partition (a local call, no network)."""
    found = consumer.position([TopicPartition(topic, p) for p in partitions])
    return {tp.partition: tp.offset for tp in found}
