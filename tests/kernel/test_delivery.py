"""`DeliveryTracker.produce_many` on a real broker: every record once, in order, counted.

The consumer hands a batch's forecasts (tens of thousands) to librdkafka a chunk per
call; a chunk waits for room in the producer's queue, so a full queue reorders nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kernel.kafka import DeliveryTracker

PARTITIONS = 3


def read_back(bootstrap: str, topic: str, expected: int) -> dict[int, list[bytes]]:
    """Each partition's values, in offset order, until `expected` are read (60 s at most)."""
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: dict[int, list[bytes]] = {}
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, out.values())) < expected and time.monotonic() < deadline:
            for message in reader.consume(10_000, timeout=0.5):
                if message.error() is None:
                    out.setdefault(message.partition() or 0, []).append(message.value() or b"")
    finally:
        reader.close()
    return out


def produced(
    bootstrap: str, topic: str, count: int, queue: int, capacity: int
) -> tuple[DeliveryTracker, list[tuple[bytes, bytes]]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(topic, PARTITIONS, replication_factor=-1)]
    ).values():
        future.result(timeout=15)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "queue.buffering.max.messages": queue, "linger.ms": 5}
    )
    tracker = DeliveryTracker(producer, queue_capacity=capacity)
    records = [(f"tenant-{i % 7}".encode(), f"{i:06d}".encode()) for i in range(count)]
    tracker.produce_many(topic, records)
    tracker.wait(60)
    return tracker, records


def test_records_larger_than_the_queue_arrive_once_each_in_order(
    bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("bulk")
    tracker, records = produced(bootstrap, topic, 25_000, queue=3_000, capacity=3_000)
    assert tracker.pending == 0 and tracker.error is None
    got = read_back(bootstrap, topic, len(records))
    values = [v for part in got.values() for v in part]
    assert sorted(values) == sorted(v for _k, v in records)
    # Each key's records (value i has key i % 7) on one partition, in the order given:
    # the chunks waited for room in the queue.
    for part in got.values():
        for key in range(7):
            mine = [int(v) for v in part if int(v) % 7 == key]
            assert mine == sorted(mine)


def test_records_a_full_queue_refuses_are_produced_again(
    bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """A tracker told of more room than the producer has: librdkafka refuses part of a
    chunk, and those are produced again until taken; none is lost or doubled."""
    topic = unique_name("refused")
    tracker, records = produced(bootstrap, topic, 12_000, queue=1_000, capacity=100_000)
    assert tracker.pending == 0 and tracker.error is None
    got = read_back(bootstrap, topic, len(records))
    assert sorted(v for part in got.values() for v in part) == sorted(v for _k, v in records)
