"""Small, bounded helpers for integration tests against the real broker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition


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


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
