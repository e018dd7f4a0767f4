"""The consumer's pure core: raw telemetry bytes in, dead letters and retrain requests out.

No Kafka here: records are anything with `key()/value()/partition()/offset()`, and the
service decides what to produce and when to commit. Work is batched per poll: events
are validated one by one (that is the contract), then grouped per tenant into `Block`s
of numpy columns, so no per-event Python objects outlive the batch. This module routes
a batch; the jobs are each in their own module:

- `consumer.tenants`: which tenants are held (admission, probation, eviction);
- `consumer.forecasting`: live forecasts, their scoring and emission;
- `consumer.warnings`: each tenant's warning (edges on `sla.warnings`) and live budget;
- `consumer.triggers`: when a tenant asks for a retrain, and the request it sends
  (`consumer.schedule`: the requests no detector raises; `consumer.ood`: inputs out of
  the forecaster's training range);
- `consumer.batch`: the types they share (`CoreConfig`, `Block`, `BatchResult`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from consumer.batch import ROW, BatchResult, Block, CoreConfig, DeadLetterOut, TenantState
from consumer.forecasting import Forecaster
from consumer.live_model import LiveModel
from consumer.ood import DETECTOR as OOD_DETECTOR
from consumer.ood import ood_alarms, ood_scores
from consumer.tenants import TenantRegistry
from consumer.triggers import RetrainTriggers, Trigger, count_alarms, settled
from kernel.kafka import KafkaRecord
from schemas import DeadLetter, InvalidTelemetry, parse_telemetry
from schemas.dead_letter import HEADER_PREFIX

__all__ = ["BatchResult", "CoreConfig", "DeadLetterOut", "IngestCore", "TenantState"]

log = logging.getLogger(__name__)


class IngestCore:
    """Windows, detectors and request gates for every tenant this member holds.

    Pure: records in, a `BatchResult` (dead letters, retrain requests, forecasts,
    warning edges, and the offsets to commit) out. A bad record becomes a dead letter,
    never an exception; imports no Kafka client, produces and commits nothing (the
    service does).
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        #: The tenants held, and the newest live model of every tenant announced so far.
        self.registry = TenantRegistry(config)
        self._triggers = RetrainTriggers(config)
        self._forecaster = Forecaster(config)

    # -- models and answers (from the answer follower) ------------------------------
    def apply_model(self, model: LiveModel) -> None:
        """Hot-swap a tenant's live model; the next batch forecasts with it."""
        if self.registry.apply_model(model):
            self.resolve(model.tenant, model.request_event_id)

    def model(self, tenant: str) -> LiveModel | None:
        return self.registry.model(tenant)

    def resolve(self, tenant: str, event_id: str) -> None:
        """A request was answered: its tenant may ask again (after the cooldown)."""
        self._triggers.resolve(self.registry.get(tenant), event_id)

    # -- state ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.registry)

    @property
    def evicted(self) -> int:
        """Tenants evicted to stay within `max_tenants`, since the start."""
        return self.registry.evicted

    def tenant(self, tenant: str) -> TenantState | None:
        return self.registry.get(tenant)

    def tenants(self) -> Iterable[TenantState]:
        return self.registry.states()

    def replay_start(self, partition: int) -> int | None:
        """Oldest offset any held window of `partition` still needs, if any."""
        return self.registry.replay_start(partition)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the tenants of `partitions`; their warnings move with the partition."""
        return self.registry.drop_partitions(partitions)

    def take_warnings(self) -> BatchResult:
        """Warning clears not sent yet (a model swapped, a tenant gone), as a result.

        `process` sends them with its batch; the service takes them itself when
        partitions are revoked, so a tenant's clear leaves with its partition.
        """
        result = BatchResult()
        self._send_cleared(result)
        return result

    def _send_cleared(self, result: BatchResult) -> None:
        for key, value, reason in self.registry.take_warnings():
            result.warnings.append((key, value))
            result.warnings_cleared.append(reason)

    # -- the batch ------------------------------------------------------------------
    def process(
        self,
        records: Sequence[KafkaRecord],
        replay_below: Mapping[int, int] | None = None,
        *,
        now: float | None = None,
    ) -> BatchResult:
        """Validate, window and detect one poll's records.

        Records of a partition below `replay_below[partition]` were processed before a
        restart or rebalance: they rebuild state but emit nothing again. The result says,
        per partition with later records, the offset to commit and to replay from.

        `now` is the caller's clock (epoch seconds; the core never reads one): events
        stamped more than `max_future_s` after it are dead-lettered as `future_ts`, and
        no window's time moves past that bound, and a request in flight for longer than
        `request_timeout_s` by it no longer holds its tenant back. The service always
        passes it; None (unit tests of other parts) bounds nothing and only answers end
        a request in flight.
        """
        replay_below = replay_below or {}
        result = BatchResult()
        partitions: list[int] = []
        offsets: list[int] = []
        rows: list[tuple[Any, ...]] = []
        #: The highest offset of each partition in the batch.
        high: dict[int, int] = {}
        max_bytes = self.config.max_message_bytes
        not_after = None if now is None else now + self.config.max_future_s
        for record in records:
            partition = record.partition() or 0
            offset = record.offset() or 0
            try:
                event = parse_telemetry(
                    record.key(), record.value(), max_bytes=max_bytes, not_after=not_after
                )
            except InvalidTelemetry as exc:
                result.invalid += 1
                high[partition] = max(high.get(partition, -1), offset)
                if offset >= replay_below.get(partition, -1):
                    result.dead_letters.append(
                        self._dead_letter(record, exc, partition, offset, now)
                    )
                continue
            rows.append(ROW(event.__dict__))
            partitions.append(partition)
            offsets.append(offset)
        result.valid = len(rows)
        if rows:
            blocks = self._blocks(rows, partitions, offsets, replay_below, now, not_after)
            for block in blocks:
                if block.replay_limit > 0:
                    result.replayed += int(np.count_nonzero(block.offsets < block.replay_limit))
                self._ingest_block(block, result)
                partition, top = block.state.partition, int(block.offsets.max())
                high[partition] = max(high.get(partition, -1), top)
            self._forecaster.emit(result)
        self._send_cleared(result)
        self._commit_points(high, replay_below, result)
        return result

    def _dead_letter(
        self,
        record: KafkaRecord,
        exc: InvalidTelemetry,
        partition: int,
        offset: int,
        now: float | None = None,
    ) -> DeadLetterOut:
        log.info("dead letter partition=%d offset=%d reason=%s", partition, offset, exc.reason)
        letter = DeadLetter(
            reason=exc.reason,
            detail=exc.detail[:500],
            source_topic=record.topic() or self.config.telemetry_topic,
            source_partition=partition,
            source_offset=offset,
            failed_at=datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC),
        )
        # The producer's own headers travel on, except any posing as ours: a forged
        # `slaops.dlq.reason` ahead of the real one would be what a reader finds first.
        kept = [
            (name, raw)
            for name, raw in record.headers() or []
            if not str(name).lower().startswith(HEADER_PREFIX)
        ]
        headers = kept + letter.to_headers()
        return DeadLetterOut(record.key(), record.value(), headers, exc.reason)

    def _blocks(
        self,
        rows: list[tuple[Any, ...]],
        partitions: list[int],
        offsets: list[int],
        replay_below: Mapping[int, int],
        now: float | None,
        not_after: float | None,
    ) -> Iterable[Block]:
        """Columns for the whole batch at once, regrouped by tenant into contiguous views.

        A generator: each tenant is admitted just before its block is ingested, so an
        eviction by a later tenant of the batch sees the earlier one's window filled.
        """
        tenants, stamps, *metrics = zip(*rows, strict=True)
        codes_of = {tenant: code for code, tenant in enumerate(dict.fromkeys(tenants))}
        codes = np.fromiter(map(codes_of.__getitem__, tenants), np.int64, len(tenants))
        order = np.argsort(codes, kind="stable")
        ts = np.fromiter((stamp.timestamp() for stamp in stamps), np.float64, len(stamps))[order]
        features = np.array(metrics[:-1], dtype=np.float32).T[order]
        labels = np.array(metrics[-1], dtype=np.bool_)[order]
        offs = np.array(offsets, dtype=np.int64)[order]
        parts = np.array(partitions, dtype=np.int64)[order]
        # Codes number tenants by first appearance, so after the stable sort tenant
        # `code` occupies rows [ends[code] - counts[code], ends[code]).
        counts = np.bincount(codes)
        ends = np.cumsum(counts).tolist()
        names = list(codes_of)
        behind = self._behind(ts, parts, now)
        spans = [slice(hi - count, hi) for count, hi in zip(counts.tolist(), ends, strict=True)]
        held = []
        for code, span in enumerate(spans):
            state = self.registry.get(names[code])
            if state is not None and state.model is not None:
                if state.partition == int(parts[span.start]):
                    held.append((state, (ts[span], features[span], labels[span])))
        if held:
            self._forecaster.prepare(held)
        for code, span in enumerate(spans):
            partition = int(parts[span.start])
            yield Block(
                state=self.registry.admit(names[code], partition),
                ts=ts[span],
                features=features[span],
                labels=labels[span],
                offsets=offs[span],
                replay_limit=replay_below.get(partition, -1),
                now=now,
                not_after=not_after,
                caught_up=partition not in behind,
            )

    def _behind(self, ts: np.ndarray, parts: np.ndarray, now: float | None) -> set[int]:
        """Partitions whose newest event of the batch is over `catch_up_lag_s` behind `now`.

        The consumer is catching up on those: more of their events are waiting. With
        event time as the clock (`slaops backtest`) or no clock, none is.
        """
        lag = self.config.catch_up_lag_s
        if now is None or lag <= 0:
            return set()
        behind = set()
        for partition in np.unique(parts).tolist():
            if now - float(ts[parts == partition].max()) > lag:
                behind.add(int(partition))
        return behind

    def _ingest_block(self, block: Block, result: BatchResult) -> None:
        """Forecast and detect on a tenant's block, then window it, raising its requests."""
        state, cfg = block.state, self.config
        # Clears waiting (a swap, or an eviction by this block's admission) go first,
        # before this block's own edges.
        self._send_cleared(result)
        triggers: list[Trigger] = []
        if state.model is not None:
            detector = cfg.performance.performance_detector
            alarms = self._forecaster.forecast(block, result)
            count_alarms(block, "performance_drift", detector, alarms, result)
            due = settled(block, alarms, cfg.performance.performance_settle_events)
            triggers += [Trigger(a.index, "performance_drift", detector, a) for a in due]
            triggers += self._out_of_distribution(block, result)
        if cfg.data_drift:
            detector = cfg.drift.detector
            signals = state.drift.update(block.features)
            count_alarms(block, "data_drift", detector, signals, result)
            triggers += [Trigger(s.index, "data_drift", detector, s) for s in signals]
        self._triggers.run(block, triggers, result)
        self.registry.protect(state)

    def _out_of_distribution(self, block: Block, result: BatchResult) -> list[Trigger]:
        """Data-drift triggers where the live model's inputs stay out of its training range."""
        state, events = block.state, self.config.ood_events
        model = state.model
        if model is None or events <= 0:
            return []
        scores = ood_scores(model, state.window, block.events)
        if scores is None:
            return []
        signals = ood_alarms(state.ood, model, scores, events)
        count_alarms(block, "data_drift", OOD_DETECTOR, signals, result)
        return [Trigger(s.index, "data_drift", OOD_DETECTOR, s) for s in signals]

    def _commit_points(
        self, high: Mapping[int, int], replay_below: Mapping[int, int], result: BatchResult
    ) -> None:
        """Per partition with fresh records: the next offset, and where a replay starts."""
        for partition in sorted(high):
            if high[partition] < replay_below.get(partition, -1):
                continue  # all replayed: the committed offset already covers them
            next_offset = high[partition] + 1
            result.next_offsets[partition] = next_offset
            start = self.registry.replay_start(partition)
            result.replay_from[partition] = (
                next_offset if start is None else min(start, next_offset)
            )
