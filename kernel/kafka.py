"""The one home of Kafka client configuration and topic administration.

Services get their consumers and producers here, so delivery guarantees (idempotent
producer, manual commits) and user passthrough (SASL/SSL) are set in one place. There
are two kinds of consumer: a group member (`make_group_consumer`: subscribes, commits)
and a reader outside any group (`make_reader`: assigns partitions itself, never
commits). Every topic slaops creates, and its partition count, is named in `_TOPICS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from kernel.errors import BrokerError, ConfigError
from kernel.settings import ServiceSettings

log = logging.getLogger(__name__)

_C = TypeVar("_C")
#: The property librdkafka names when it refuses a configuration (its value is NOT kept).
_REFUSED_PROPERTY = re.compile(r'configuration property:? "([A-Za-z0-9._-]{1,100})"')


#: librdkafka's own log lines (connection failures, broker errors), served through
#: Python logging rather than written to stderr, so JSON logs stay JSON. The client
#: hands them over when it is polled (`consume`, `poll`, `flush`).
LIBRDKAFKA_LOG = logging.getLogger("kernel.kafka.librdkafka")


def _client(factory: Callable[[dict[str, Any]], _C], config: dict[str, Any]) -> _C:
    """Build a client; a configuration librdkafka refuses becomes a `ConfigError`.

    Every client logs through `LIBRDKAFKA_LOG` (the `logger` option of confluent-kafka).

    librdkafka's message quotes the refused value, and `kafka_properties` hold secrets
    (a password pasted into the wrong key would be printed), so the error names only the
    property, and the original exception is not chained.
    """
    try:
        return factory({**config, "logger": LIBRDKAFKA_LOG})
    except (KafkaException, TypeError, ValueError) as exc:
        text = str(exc)
        match = _REFUSED_PROPERTY.search(text)
        name = match.group(1) if match else "?"
        problem = "unknown property" if "No such configuration property" in text else "refused"
        message = (
            f"kafka_properties (SLAOPS_KAFKA_PROPERTIES): librdkafka {problem}: {name!r} "
            "(the value is not shown: these properties may hold secrets); check the name "
            "and value against librdkafka's CONFIGURATION.md"
        )
    raise ConfigError(message) from None


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


def make_group_consumer(settings: ServiceSettings, group_id: str, **overrides: Any) -> Consumer:
    """A member of consumer group `group_id`: it subscribes, and commits only by hand.

    New partitions start at the earliest offset; the session timeout is the settings'.
    """
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
    return _client(Consumer, config)


def make_reader(config: Mapping[str, Any], name: str, **overrides: Any) -> Consumer:
    """A consumer outside any group: it assigns partitions itself and never commits.

    `config` is a `base_config`. `name` fills librdkafka's mandatory `group.id`; the
    reader never joins that group or commits to it. Partition ends raise no events, and
    an offset that has left the topic restarts at the earliest one (override
    `auto.offset.reset` to make it an error instead).
    """
    reader = {
        **config,
        "group.id": name,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
    }
    reader.update(overrides)
    return _client(Consumer, reader)


def assign_all(
    reader: Consumer, topics: Iterable[str], *, timeout_s: float
) -> list[TopicPartition]:
    """Assign `reader` every partition of `topics`, each from its beginning.

    For readers that read whole topics (followers, reports, the checkpoint log). A
    topic the broker does not know yet is skipped, not created. Returns the assignment;
    when it is empty nothing is assigned. Raises `KafkaException` when the broker does
    not answer the metadata request within `timeout_s`.
    """
    metadata = reader.list_topics(timeout=timeout_s)
    return assign_from_start(
        reader,
        (
            (topic, partition)
            for topic in topics
            if topic in metadata.topics
            for partition in metadata.topics[topic].partitions
        ),
    )


def assign_from_start(
    reader: Consumer, partitions: Iterable[tuple[str, int]]
) -> list[TopicPartition]:
    """Assign `reader` the (topic, partition) pairs given, each from its beginning.

    Without a metadata request, for a reader that knows its partitions (the
    checkpoint log has one). Returns the assignment; when it is empty nothing is
    assigned.
    """
    assignment = [TopicPartition(topic, p, OFFSET_BEGINNING) for topic, p in partitions]
    if assignment:
        reader.assign(assignment)
    return assignment


def position(record: KafkaRecord) -> tuple[int, int]:
    """A consumed record's (partition, offset).

    librdkafka leaves them unset only on error events, which callers drop first
    (`is_record`); 0 stands in for them there.
    """
    return record.partition() or 0, record.offset() or 0


def is_record(message: KafkaRecord) -> bool:
    """True for a record; False for an event (partition end, or an error, logged).

    Raises `KafkaException` on a fatal error: the client cannot go on.
    """
    error = message.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("consume error: %s", error)
        if error.fatal():
            raise KafkaException(error)
    return False


def make_producer(settings: ServiceSettings, **overrides: Any) -> Producer:
    """An idempotent producer: retries never duplicate or reorder a partition's records."""
    config = base_config(settings)
    config.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    config.update(overrides)
    return _client(Producer, config)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


#: Every topic slaops creates, by role: its fixed partition count and config. None
#: means the deployment's count (`telemetry_partitions`): these topics are keyed by
#: tenant, and whichever service creates one first gives it the same count. The
#: checkpoint log is read whole by one reader, so it is one compacted partition.
_TOPICS: dict[str, tuple[int | None, Mapping[str, str]]] = {
    "telemetry": (None, {}),
    "dlq": (None, {}),
    "retrain": (None, {}),
    "failures": (None, {}),
    "decisions": (None, {}),
    "models": (None, {}),
    "forecasts": (None, {}),
    "warnings": (None, {}),
    "checkpoints": (1, {"cleanup.policy": "compact"}),
}


def slaops_topics(partitions: int, **names: str) -> list[TopicSpec]:
    """The specs of slaops topics, given by role (a key of `_TOPICS`) and name.

    >>> slaops_topics(3, telemetry="t", checkpoints="c")  # doctest: +NORMALIZE_WHITESPACE
    [TopicSpec(name='t', partitions=3, config={}),
     TopicSpec(name='c', partitions=1, config={'cleanup.policy': 'compact'})]
    """
    specs = []
    for role, name in names.items():
        if role not in _TOPICS:
            raise ValueError(f"no slaops topic has the role {role!r}; known: {sorted(_TOPICS)}")
        fixed, config = _TOPICS[role]
        specs.append(TopicSpec(name, partitions if fixed is None else fixed, dict(config)))
    return specs


def ensure_topics(
    settings: ServiceSettings, specs: Iterable[TopicSpec], *, timeout_s: float = 15.0
) -> None:
    """Create the topics that do not exist yet; an existing topic is left as it is."""
    admin = _client(AdminClient, base_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach the Kafka broker: {exc}; check that it is up and that "
            "KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers) names it"
        ) from exc
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
                raise BrokerError(
                    f"cannot create topic {name}: {exc}; create it yourself, or let this "
                    "client create topics on the broker"
                ) from exc


#: librdkafka's default `queue.buffering.max.messages`: records a producer holds unsent.
QUEUE_CAPACITY = 100_000
#: Records `DeliveryTracker.produce_many` hands librdkafka in one call.
PRODUCE_CHUNK = 10_000


class DeliveryTracker:
    """Counts a producer's outstanding deliveries and remembers the first failure.

    Commit a source offset only when `wait` returns: every record the batch caused
    has been acknowledged by the broker.
    """

    def __init__(self, producer: Producer, queue_capacity: int = QUEUE_CAPACITY) -> None:
        self.producer = producer
        self.queue_capacity = queue_capacity
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

    def produce_many(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce keyed records (no headers), in order, a chunk per librdkafka call.

        A batch's forecasts are tens of thousands of records: one `produce` call each
        cost more than making them. Each chunk (`PRODUCE_CHUNK` at most) waits for room
        in the producer's queue (`queue_capacity`, librdkafka's default
        `queue.buffering.max.messages`, unless the producer was given another), so no
        record of a chunk is refused while a later one is taken, which would reorder
        them; one refused all the same is produced again after the rest of its chunk.
        """
        size = max(1, min(PRODUCE_CHUNK, self.queue_capacity))
        for start in range(0, len(records), size):
            chunk: list[dict[str, Any]] = [
                {"key": k, "value": v} for k, v in records[start : start + size]
            ]
            while len(self.producer) and len(self.producer) + len(chunk) > self.queue_capacity:
                self.producer.poll(0.1)
            while chunk:
                queued = self.producer.produce_batch(topic, chunk, on_delivery=self.on_delivery)
                self.pending += queued
                if queued == len(chunk):
                    break
                refused = [message for message in chunk if "_error" in message]
                error = refused[0]["_error"]
                if error.code() != KafkaError._QUEUE_FULL:
                    raise KafkaException(error)
                for message in refused:
                    del message["_error"]
                chunk = refused
                self.producer.poll(0.1)

    def wait(self, timeout_s: float = 60.0) -> None:
        remaining = self.producer.flush(timeout_s)
        if remaining or self.pending:
            raise BrokerError(
                f"{max(remaining, self.pending)} records not acknowledged in time: "
                "the broker is slow or unreachable"
            )
        if self.error is not None:
            error, self.error = self.error, None
            raise BrokerError(f"a record was not delivered: {error}")
