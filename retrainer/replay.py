"""Replays a request's offset ranges of `sla.telemetry`: the Kafka side of the dataset.

Only the request's tenant's valid events are kept, whoever else shares the partition.
The end of a range is found by message offsets and the consumer position, never by
watermarks (tansu's are wrong).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from kernel.columns import telemetry_columns
from kernel.kafka import KafkaRecord, make_reader, position
from kernel.time_rule import ACCEPTED, TimeRule
from retrainer.errors import ReplayError, RequestRefused
from schemas import InvalidTelemetry, OffsetRange, TelemetryEvent, parse_telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayLimits:
    """What a request may name; anyone who can write to `sla.retrain` may be hostile."""

    #: The only topic a request's ranges may point into (the retrainer's setting).
    topic: str
    #: Ranges a request may list (before overlaps are merged).
    max_ranges: int = 64
    #: Offsets the merged ranges may span in all: every tenant sharing the partitions
    #: counts, so this is the window's event bound times the tenants of a partition.
    max_offsets: int = 5_000_000


def plan_replay(ranges: Sequence[OffsetRange], limits: ReplayLimits) -> list[OffsetRange]:
    """The ranges to read: on the allowed topic only, overlaps merged, within the limits.

    Raises `RequestRefused` naming what is wrong; never reads anything.

    >>> r = lambda p, a, b: OffsetRange(topic="t", partition=p, start_offset=a, end_offset=b)
    >>> [(x.partition, x.start_offset, x.end_offset)
    ...  for x in plan_replay([r(0, 5, 9), r(0, 0, 6), r(1, 3, 4), r(0, 9, 12)], ReplayLimits("t"))]
    [(0, 0, 12), (1, 3, 4)]
    """
    if len(ranges) > limits.max_ranges:
        raise RequestRefused(
            f"{len(ranges)} offset ranges; at most {limits.max_ranges} (raise "
            "max_request_ranges, SLAOPS_MAX_REQUEST_RANGES, if such requests are genuine)"
        )
    foreign = sorted({span.topic for span in ranges if span.topic != limits.topic})
    if foreign:
        raise RequestRefused(
            f"ranges name {foreign!r}; only {limits.topic!r} is replayed (the retrainer's "
            "telemetry_topic: point both services at the same telemetry topic)"
        )
    merged: list[OffsetRange] = []
    for span in sorted(ranges, key=lambda x: (x.partition, x.start_offset)):
        if span.end_offset <= span.start_offset:
            continue
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.partition == span.partition
            and (span.start_offset <= last.end_offset)
            and last.own_gaps is None
            and span.own_gaps is None
        ):
            end = max(last.end_offset, span.end_offset)
            merged[-1] = last.model_copy(update={"end_offset": end})
        else:
            merged.append(span)
    # A range naming the tenant's own offsets costs those alone (`OffsetRange.size`).
    total = sum(span.size() for span in merged)
    if total > limits.max_offsets:
        raise RequestRefused(
            f"ranges span {total} offsets; at most {limits.max_offsets} (raise "
            "max_request_offsets, SLAOPS_MAX_REQUEST_OFFSETS, if windows are that long)"
        )
    return merged


@dataclass(frozen=True, eq=False)
class TenantRows:
    ts: np.ndarray  # float64 epoch seconds, in offset order
    features: np.ndarray  # float32 (n, len(FEATURES))
    labels: np.ndarray  # bool
    other_tenants: int
    invalid: int
    #: The tenant's events whose time the time rule refused (`kernel.time_rule`), skipped.
    out_of_time: int = 0

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def replay_ranges(
    config: dict[str, Any],
    ranges: Sequence[OffsetRange],
    *,
    tenant: str,
    max_bytes: int,
    timeout_s: float,
    rule: TimeRule | None = None,
) -> TenantRows:
    """The tenant's valid events in `ranges` of the telemetry topic, read from the broker.

    Their times are judged by `rule` on the wall clock (None: not judged).
    """

    def messages(consumer: Consumer) -> Iterator[KafkaRecord]:
        for span in ranges:
            for piece in reads(span):
                yield from _read_range(consumer, piece, timeout_s)

    # A range that has left the topic must fail the request, not read from elsewhere.
    consumer = make_reader(config, "slaops-retrainer-replay", **{"auto.offset.reset": "error"})
    try:
        return tenant_rows(
            messages(consumer), tenant=tenant, max_bytes=max_bytes, rule=rule, now=time.time()
        )
    finally:
        consumer.close()


def tenant_rows(
    records: Iterable[KafkaRecord],
    *,
    tenant: str,
    max_bytes: int,
    rule: TimeRule | None = None,
    now: float | None = None,
) -> TenantRows:
    """Columns of `tenant`'s valid events among `records` (only key and value are read).

    The one record-to-rows path: the broker replay and `slaops backtest` (which replays
    a request's ranges from its input file) both build their rows here. Invalid records
    and other tenants' are counted, not kept; so are the tenant's events whose time
    `rule` refuses on the clock `now` (the consumer dead-letters the same ones), so
    one event stamped 2999 or 0001 never reaches a training set.
    """
    other = invalid = 0

    def tenant_events() -> Iterator[TelemetryEvent]:
        nonlocal other, invalid
        for record in records:
            try:
                event = parse_telemetry(record.key(), record.value(), max_bytes=max_bytes)
            except InvalidTelemetry:
                invalid += 1
                continue
            if event.tenant != tenant:
                other += 1
                continue
            yield event

    columns = telemetry_columns(tenant_events())
    ts, features, labels = columns.ts, columns.features, columns.labels
    refused = 0
    if rule is not None:
        keep = rule.judge_all(ts, now) == ACCEPTED
        refused = int(ts.shape[0] - np.count_nonzero(keep))
        if refused:
            log.warning(
                "tenant=%s replay skipped %d events whose time the time rule refuses",
                tenant,
                refused,
                extra={"tenant": tenant},
            )
            ts, features, labels = ts[keep], features[keep], labels[keep]
    return TenantRows(
        ts=ts,
        features=features,
        labels=labels,
        other_tenants=other,
        invalid=invalid,
        out_of_time=refused,
    )


#: Own offsets this close together are read as one stretch (the records between them,
#: other tenants', read and dropped) rather than one seek each.
SEEK_GAP: Final = 64


def reads(span: OffsetRange) -> list[OffsetRange]:
    """The contiguous stretches a replay of `span` reads: the whole range, or, where it
    names the tenant's own offsets, stretches around them (at most `SEEK_GAP` others'
    records between two of its own), so the cost is bounded by the tenant's own count.

    >>> span = OffsetRange.of_offsets("t", 0, [10, 20, 5_000, 5_001, 90_000])
    >>> [(r.start_offset, r.end_offset) for r in reads(span)]
    [(10, 21), (5000, 5002), (90000, 90001)]
    """
    if span.end_offset <= span.start_offset:
        return []
    own = span.own_offsets()
    if own is None:
        return [span]
    stretches: list[OffsetRange] = []
    start = prev = own[0]
    for offset in [*own[1:], None]:
        if offset is not None and offset - prev <= SEEK_GAP:
            prev = offset
            continue
        stretches.append(
            OffsetRange(
                topic=span.topic, partition=span.partition, start_offset=start, end_offset=prev + 1
            )
        )
        if offset is not None:
            start = prev = offset
    return stretches


def _read_range(consumer: Consumer, span: OffsetRange, timeout_s: float) -> list[Any]:
    tp = TopicPartition(span.topic, span.partition, span.start_offset)
    consumer.assign([tp])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last = span.end_offset - 1
    # No more than the stretch holds, so a short one returns as soon as it is read.
    batch = max(1, min(10_000, span.end_offset - span.start_offset))
    while True:
        for message in consumer.consume(batch, 0.2):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._AUTO_OFFSET_RESET or "out of range" in str(error):
                    raise ReplayError(
                        f"{span.topic}[{span.partition}] offsets {span.start_offset}.."
                        f"{span.end_offset} are no longer in the topic ({error}): the next "
                        "request names the current window; keep the telemetry topic's "
                        "retention longer than a window if this recurs"
                    )
                log.warning("replay error on %s[%d]: %s", span.topic, span.partition, error)
                continue
            if span.start_offset <= position(message)[1] <= last:
                messages.append(message)
        (reached,) = consumer.position([TopicPartition(span.topic, span.partition)])
        if reached.offset > last or (messages and position(messages[-1])[1] >= last):
            return messages
        if time.monotonic() > deadline:
            raise ReplayError(
                f"{span.topic}[{span.partition}] offsets {span.start_offset}..{span.end_offset} "
                f"not readable within {timeout_s:.0f}s (read up to {reached.offset}): check "
                "the broker, or raise replay_timeout_s (SLAOPS_REPLAY_TIMEOUT_S)"
            )
