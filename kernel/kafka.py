"""The one home of Kafka client configuration and topic administration.

Services get their consumers and producers here, so delivery guarantees (idempotent
producer, manual commits) and user passthrough (SASL/SSL) are set in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kernel.errors import BrokerError
from kernel.settings import ServiceSettings

log = logging.getLogger(__name__)


class KafkaRecord(Protocol):
    """What the core needs of a consumed message; `confluent_kafka.Message` satisfies it."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Any: ...
    def error(self) -> Any: ...


def base_config(settings: ServiceSettings) -> dict[str, Any]:
    config: dict[str, Any] = {k: v.get_secret_value() for k, v in settings.kafka_properties.items()}
    config["bootstrap.servers"] = settings.require_bootstrap()
    return config


def make_consumer(settings: ServiceSettings, group_id: str, **overrides: Any) -> Consumer:
    config = base_config(settings)
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 6),
        }
    )
    config.update(overrides)
    return Consumer(config)


def make_producer(settings: ServiceSettings, **overrides: Any) -> Producer:
    """An idempotent producer: retries never duplicate or reorder a partition's records."""
    config = base_config(settings)
    config.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    config.update(overrides)
    return Producer(config)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def ensure_topics(
    settings: ServiceSettings, specs: Iterable[TopicSpec], *, timeout_s: float = 15.0
) -> None:
    """Create the topics that do not exist yet; an existing topic is left as it is."""
    admin = AdminClient(base_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach the Kafka broker: {exc}") from exc
    wanted = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=dict(s.config))
        for s in specs
        if s.name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name}: {exc}") from exc


class DeliveryTracker:
    """Counts a producer's outstanding deliveries and remembers the first failure.

    Commit a source offset only when `wait` returns: every record the batch caused
    has been acknowledged by the broker.
    """

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.pending = 0
        self.error: str | None = None

    def on_delivery(self, err: Any, _msg: Any) -> None:
        self.pending -= 1
        if err is not None and self.error is None:
            self.error = str(err)

    def produce(self, topic: str, **kwargs: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, on_delivery=self.on_delivery, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.pending += 1

    def wait(self, timeout_s: float = 60.0) -> None:
        remaining = self.producer.flush(timeout_s)
        if remaining or self.pending:
            raise BrokerError(f"{max(remaining, self.pending)} records not acknowledged in time")
        if self.error is not None:
            error, self.error = self.error, None
            raise BrokerError(f"a record was not delivered: {error}")
