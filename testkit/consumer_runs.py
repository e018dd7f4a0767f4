"""The consumer service run by the tests: in a thread, on a mixed stream, its commits read back.

`running` drives `consumer.main.build_service` in a thread and stops it on the way
out; `telemetry` is three tenants interleaved (`drifty` shifts at event 1,200) and
`BAD_RECORDS` one record of each kind the consumer must dead-letter, with the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from consumer.main import build_service
from consumer.service import ConsumerService
from consumer.settings import ConsumerSettings
from schemas import RejectReason
from testkit.kafka_helpers import committed as kafka_committed
from testkit.streams import interleave, telemetry_values

BAD_RECORDS: list[tuple[bytes | None, bytes | None, RejectReason]] = [
    (b"stable-a", b"{not json", RejectReason.NOT_JSON),
    (b"stable-a", b"\xc3\x28", RejectReason.NOT_UTF8),
    (b"stable-b", b"", RejectReason.EMPTY),
    (b"stable-b", b"x" * 70_000, RejectReason.OVERSIZE),
    (b"someone-else", telemetry_values("drifty", 1, seed=9)[0], RejectReason.KEY_MISMATCH),
    (
        b"drifty",
        telemetry_values("drifty", 1, seed=9)[0].replace(b'"rps": ', b'"rps": -'),
        RejectReason.OUT_OF_RANGE,
    ),
]


@contextmanager
def running(settings: ConsumerSettings) -> Iterator[ConsumerService]:
    service = build_service(settings)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "consumer did not stop"


def telemetry(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    streams = {
        "stable-a": telemetry_values("stable-a", n, seed=1, start_index=start),
        "drifty": telemetry_values("drifty", n, seed=2, shift_at=1_200, start_index=start),
        "stable-b": telemetry_values("stable-b", n, seed=3, start_index=start),
    }
    return [(t.encode(), v) for t, v in interleave(streams)]


def committed_by_partition(settings: ConsumerSettings, partitions: int = 3) -> dict[int, int]:
    """Committed offset per partition of the consumer's telemetry topic."""
    return kafka_committed(
        settings.bootstrap_servers or "", settings.group_id, settings.telemetry_topic, partitions
    )
