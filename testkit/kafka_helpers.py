"""Small, bounded helpers for integration tests against the real broker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from schemas import ChampionKept, ModelPublished, RetrainFailed


def produce_all(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
    assert producer.flush(30) == 0, "producer did not drain"
    return count


def message_headers(message: Message) -> list[tuple[str, bytes | None]]:
    """A consumed message's headers as `(name, bytes)` pairs, as `DeadLetter.from_headers` reads.

    confluent-kafka hands a consumer a list of pairs (or None); its type also allows the
    dict and str values a producer may pass, which a consumed message never holds.
    """
    found = message.headers() or []
    assert isinstance(found, list), f"consumed headers are a list of pairs, not {found!r}"
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in found]


def read_topic(
    bootstrap: str, topic: str, *, expect: int, partitions: int, timeout_s: float = 30.0
) -> list[Message]:
    """Read `topic` from the beginning until `expect` records arrive or time runs out."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    found: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expect and time.monotonic() < deadline:
            found.extend(m for m in consumer.consume(1_000, 0.2) if m.error() is None)
        # Linger briefly so that extra (unexpected) records are seen too.
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            found.extend(m for m in consumer.consume(1_000, 0.1) if m.error() is None)
    finally:
        consumer.close()
    return found


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The offsets `group` has committed on partitions 0..`partitions`-1 of `topic` (0 if none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in offsets}


def read_all(bootstrap: str, topic: str, partitions: int = 6) -> list[Message]:
    """Everything on `topic` now (short: the caller polls)."""
    return read_topic(bootstrap, topic, expect=10**9, partitions=partitions, timeout_s=0.5)


#: The header of the records `read_to_end` appends to mark where a topic ends.
END_MARK = "slaops-test.end"


def read_to_end(
    bootstrap: str, topic: str, partitions: int = 6, timeout_s: float = 60.0
) -> list[Message]:
    """Every record on `topic` now, all of them: for a topic no one writes to any more.

    `read_all` reads for about a second, and librdkafka spends the first half of it
    waiting to ask where a freshly assigned partition begins: a broker or test process
    stalled for half a second under load returns part of the topic, or none of it. So
    the end is marked instead (tansu's high watermark lags behind the last batch): one
    record is appended to each partition and the topic is read until each partition's
    mark; marks are left out. Raises `AssertionError` if a mark is not reached in time.
    """
    ends: dict[int, int] = {}
    errors: list[object] = []

    def delivered(err: object, message: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            ends[message.partition() or 0] = message.offset() or 0

    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in range(partitions):
        producer.produce(
            topic, value=None, partition=partition, headers=[(END_MARK, b"")], on_delivery=delivered
        )
    assert producer.flush(timeout_s) == 0, f"end marks of {topic} not acknowledged"
    assert not errors and set(ends) == set(range(partitions)), (topic, ends, errors)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    found: list[Message] = []
    reached: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while reached != set(ends):
            assert time.monotonic() < deadline, f"{topic} not read to its end marks {ends}"
            for m in consumer.consume(1_000, 0.2):
                if m.error() is not None:
                    continue
                partition, offset = m.partition() or 0, m.offset() or 0
                if offset >= ends[partition]:
                    reached.add(partition)
                elif all(name != END_MARK for name, _v in message_headers(m)):
                    found.append(m)  # (an earlier read's mark is no record of the topic's)
    finally:
        consumer.close()
    return found


def end_offsets(messages: list[Message], partitions: int) -> dict[int, int]:
    """Per partition, the offset after the last record read (0 for an empty one). tansu's
    high watermark lags behind the last batch, so the ends are read, not asked for."""
    ends = dict.fromkeys(range(partitions), 0)
    for m in messages:
        partition, offset = m.partition() or 0, m.offset() or 0
        ends[partition] = max(ends[partition], offset + 1)
    return ends


def answers_by_request(
    bootstrap: str, topics: dict[str, str], partitions: int = 6
) -> dict[str, list[str]]:
    """Request `event_id` -> the kinds of answer it got, from the models, decisions and
    failures topics named in `topics` (`models_topic`, `decisions_topic`, `failures_topic`)."""
    out: dict[str, list[str]] = {}
    for topic, kind in (
        ("models_topic", ModelPublished),
        ("decisions_topic", ChampionKept),
        ("failures_topic", RetrainFailed),
    ):
        for m in read_all(bootstrap, topics[topic], partitions):
            event = kind.model_validate_json(m.value() or b"")
            if event.request_event_id is not None:
                out.setdefault(event.request_event_id, []).append(kind.__name__)
    return out


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
