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

import gc
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np

from consumer.batch import ROW, BatchResult, Block, CoreConfig, DeadLetterOut, TenantState
from consumer.forecasting import Forecaster
from consumer.live_model import LiveModel
from consumer.ood import DETECTOR as OOD_DETECTOR
from consumer.ood import ood_alarms
from consumer.tenants import Refusal, TenantRegistry
from consumer.triggers import RetrainTriggers, Trigger, count_alarms, settled
from kernel.kafka import KafkaRecord
from kernel.time_rule import ACCEPTED, REASONS, TimeRule
from schemas import DeadLetter, InvalidTelemetry, RejectReason, parse_telemetry
from schemas.dead_letter import HEADER_PREFIX

__all__ = ["BatchResult", "CoreConfig", "DeadLetterOut", "IngestCore", "TenantState"]

log = logging.getLogger(__name__)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is processed.

    A batch allocates a few objects per record (the validated event, its row), nearly
    all freed by reference counting; the collector, triggered every 700 allocations,
    would meanwhile walk every tenant's long-lived state again and again (a third of
    the core's time with 1,000 tenants). Cycles made in the batch are collected at the
    next allocation after it. A caller that paused the collector itself keeps it paused.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
        self._time_rule = TimeRule(config.max_future_s, config.window_span_s, config.max_past_s)

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
    def expired(self) -> int:
        """Tenants that left for idleness (`tenant_idle_s`), since the start."""
        return self.registry.expired

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
        wall_clock: bool = False,
    ) -> BatchResult:
        """Validate, window and detect one poll's records.

        Records of a partition below `replay_below[partition]` were processed before a
        restart or rebalance: they rebuild state but emit nothing again. The result says,
        per partition with later records, the offset to commit and to replay from.

        `now` is the caller's clock (epoch seconds; the core never reads one): events the
        time rule refuses (`kernel.time_rule`: more than `max_future_s` after it, more
        than `max_past_s` before it or a window span before the tenant's newest event)
        are dead-lettered as `future_ts` or `past_ts`, no window's time moves past the
        future bound, tenants idle on it expire (`consumer.tenants`), and a request in
        flight for longer than `request_timeout_s` by it no longer holds its tenant back.
        The service always passes it, with `wall_clock` (it is the wall clock: cooldowns
        hold on it too, for fresh events); None (unit tests of other parts) bounds
        nothing and only answers end a request in flight.
        """
        with collector_paused():
            return self._process(records, replay_below or {}, now, wall_clock)

    def _process(
        self,
        records: Sequence[KafkaRecord],
        replay_below: Mapping[int, int],
        now: float | None,
        wall_clock: bool,
    ) -> BatchResult:
        result = BatchResult()
        rows: list[tuple[Any, ...]] = []
        #: Indices into `records` of the valid ones, and (index, error) of the others.
        good: list[int] = []
        bad: list[tuple[int, InvalidTelemetry]] = []
        max_bytes = self.config.max_message_bytes
        # The per-record loop does only what must be done per record: the rest is on
        # columns (every statement here costs about 1% of the core's time).
        for i, record in enumerate(records):
            try:
                event = parse_telemetry(record.key(), record.value(), max_bytes=max_bytes)
            except InvalidTelemetry as exc:
                bad.append((i, exc))
                continue
            rows.append(ROW(event.__dict__))
            good.append(i)
        count = len(records)
        partitions = np.fromiter((r.partition() or 0 for r in records), np.int64, count)
        offsets = np.fromiter((r.offset() or 0 for r in records), np.int64, count)
        #: The highest offset of each partition in the batch.
        high = {
            int(partition): int(offsets[partitions == partition].max())
            for partition in np.unique(partitions).tolist()
        }
        for i, error in bad:
            partition, offset = int(partitions[i]), int(offsets[i])
            result.invalid += 1
            if offset >= replay_below.get(partition, -1):
                result.dead_letters.append(
                    self._dead_letter(records[i], error, partition, offset, now)
                )
        result.valid = len(rows)
        if rows:
            kept: Sequence[KafkaRecord] = records
            if bad:
                kept = [records[i] for i in good]
                chosen = np.asarray(good, dtype=np.int64)
                partitions, offsets = partitions[chosen], offsets[chosen]
            blocks = self._blocks(
                rows,
                partitions,
                offsets,
                kept,
                replay_below,
                now,
                result,
                wall_clock,
            )
            for block in blocks:
                if block.replay_limit > 0:
                    result.replayed += int(np.count_nonzero(block.offsets < block.replay_limit))
                self._ingest_block(block, result)
            self._forecaster.emit(result)
        if not rows:
            self.registry.expire(now)
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
        log.info(
            "dead letter partition=%d offset=%d reason=%s",
            partition,
            offset,
            exc.reason,
            extra={"partition": partition, "offset": offset},
        )
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
        partitions: np.ndarray,
        offsets: np.ndarray,
        records: Sequence[KafkaRecord],
        replay_below: Mapping[int, int],
        now: float | None,
        result: BatchResult,
        wall_clock: bool,
    ) -> Iterable[Block]:
        """Columns for the whole batch at once, regrouped by tenant into contiguous views.

        Each tenant's rows are admitted (`_admitted`) before any block is ingested, so
        the held tenants' forecasts are prepared together; a generator, so each block is
        ingested before the next one is built.
        """
        tenants, stamps, *metrics = zip(*rows, strict=True)
        codes_of = {tenant: code for code, tenant in enumerate(dict.fromkeys(tenants))}
        codes = np.fromiter(map(codes_of.__getitem__, tenants), np.int64, len(tenants))
        order = np.argsort(codes, kind="stable")
        ts = np.fromiter((stamp.timestamp() for stamp in stamps), np.float64, len(stamps))[order]
        features = np.array(metrics[:-1], dtype=np.float32).T[order]
        labels = np.array(metrics[-1], dtype=np.bool_)[order]
        offs = offsets[order]
        parts = partitions[order]
        # Codes number tenants by first appearance, so after the stable sort tenant
        # `code` occupies rows [ends[code] - counts[code], ends[code]).
        counts = np.bincount(codes)
        ends = np.cumsum(counts).tolist()
        names = list(codes_of)
        # Before admission, so newcomers find the room; none of this batch's tenants is
        # idle, however much event time the batch spans (a backtest's chunk: days).
        self.registry.expire(now, present=codes_of)
        behind = self._behind(ts, parts, now)
        admitted: list[tuple[TenantState, tuple[np.ndarray, ...]] | None] = []
        for count, hi in zip(counts.tolist(), ends, strict=True):
            span = slice(hi - count, hi)
            columns = (ts[span], features[span], labels[span], offs[span], parts[span])
            taken = self._admitted(
                names[len(admitted)], columns, order[span], records, replay_below, now, result
            )
            admitted.append(taken)
        held = [
            (state, (t, f, y))
            for state, (t, f, y, _o) in filter(None, admitted)
            if state.model is not None
        ]
        if held:
            self._forecaster.prepare(held)
        not_after = None if now is None else now + self.config.max_future_s
        for taken in admitted:
            if taken is None:
                continue
            state, (t, f, y, o) = taken
            yield Block(
                state=state,
                ts=t,
                features=f,
                labels=y,
                offsets=o,
                replay_limit=replay_below.get(state.partition, -1),
                now=now,
                not_after=not_after,
                caught_up=state.partition not in behind,
                wall_clock=wall_clock,
            )

    def _admitted(
        self,
        tenant: str,
        columns: tuple[np.ndarray, ...],
        rows: np.ndarray,
        records: Sequence[KafkaRecord],
        replay_below: Mapping[int, int],
        now: float | None,
        result: BatchResult,
    ) -> tuple[TenantState, tuple[np.ndarray, ...]] | None:
        """The tenant's state and the rows of its block it accepts; the rest dead-lettered.

        Refused, each with its reason: every row of a newcomer the registry does not
        admit; rows on another partition than the tenant's (it stays bound to the first
        it was seen on, whatever the producer's partitioner does); rows whose time the
        time rule refuses. Rows replayed after a restart were dead-lettered the first
        time: they are dropped again, quietly.
        """
        ts, features, labels, offs, parts = columns
        state = self.registry.get(tenant)
        partition = int(parts[0]) if state is None else state.partition
        keep = parts == partition
        reason: RejectReason = RejectReason.WRONG_PARTITION
        detail = f"tenant {tenant[:80]!r} is bound to partition {partition}"
        if state is None and keep.any():
            fresh = bool((offs[keep] >= replay_below.get(partition, -1)).any())
            admitted = self.registry.admit(tenant, partition, now=now, replayed=not fresh)
            if isinstance(admitted, Refusal):
                keep[:] = False
                reason, detail = admitted.reason, admitted.detail
            else:
                state = admitted
        elif state is not None and keep.any():
            self.registry.admit(tenant, partition, now=now)
        if not keep.all():
            self._refuse(
                ~keep, reason, detail, offs, parts, rows, records, replay_below, now, result
            )
        if state is None:
            return None
        if keep.any():
            codes, newest = self._time_rule.judge(ts, state.window.newest_ts, now)
            late = (codes != ACCEPTED) & keep
            if late.any():
                for code in np.unique(codes[late]).tolist():
                    which = late & (codes == code)
                    first = float(ts[which][0])
                    explain = self._time_rule.explain(code, first, newest, now)
                    self._refuse(
                        which,
                        RejectReason(REASONS[code]),
                        explain,
                        offs,
                        parts,
                        rows,
                        records,
                        replay_below,
                        now,
                        result,
                    )
                keep &= ~late
        if keep.all():
            return state, (ts, features, labels, offs)
        if not keep.any():
            return None
        return state, (ts[keep], features[keep], labels[keep], offs[keep])

    def _refuse(
        self,
        which: np.ndarray,
        reason: RejectReason,
        detail: str,
        offs: np.ndarray,
        parts: np.ndarray,
        rows: np.ndarray,
        records: Sequence[KafkaRecord],
        replay_below: Mapping[int, int],
        now: float | None,
        result: BatchResult,
    ) -> None:
        """Dead-letter the rows `which` of a tenant's block (fresh ones: replayed were)."""
        for i in np.flatnonzero(which).tolist():
            partition, offset = int(parts[i]), int(offs[i])
            if offset >= replay_below.get(partition, -1):
                exc = InvalidTelemetry(reason, detail)
                record = records[int(rows[i])]
                result.dead_letters.append(self._dead_letter(record, exc, partition, offset, now))
        result.valid -= int(np.count_nonzero(which))
        result.invalid += int(np.count_nonzero(which))

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
            signals = state.drift.update(block.features, block.ts)
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
        scores = self._forecaster.ood_scores(block)
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
