"""The consumer's pure core: raw telemetry bytes in, dead letters and retrain requests out.

No Kafka here: records are anything with `key()/value()/partition()/offset()`, and the
service decides what to produce and when to commit. Work is batched per poll: events
are validated one by one (that is the contract), then grouped per tenant and written to
windows and detectors as numpy blocks, so no per-event Python objects outlive the batch.
"""

from __future__ import annotations

import json
import logging
import operator
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from consumer.detectors import DataDriftMonitor, DriftConfig, DriftSignal
from consumer.gate import RequestGate
from consumer.live_model import LiveModel
from consumer.performance import PerformanceConfig, PerformanceMonitor
from consumer.window import DEFAULT_CAPACITY, DEFAULT_SPAN_S, TenantWindow
from kernel.kafka import KafkaRecord
from schemas import (
    DeadLetter,
    DetectorDetails,
    InvalidTelemetry,
    OffsetRange,
    RetrainReason,
    RetrainRequested,
    parse_telemetry,
    retrain_event_id,
    topics,
)
from schemas.dead_letter import HEADER_PREFIX
from schemas.telemetry import DEFAULT_MAX_MESSAGE_BYTES, FEATURES

log = logging.getLogger(__name__)

#: Reads one validated event's columns straight from the model's field dict: one C call
#: per event instead of nine attribute lookups.
_ROW = operator.itemgetter("tenant", "ts", *FEATURES, "sla_breached")
_NO_PROBA = np.empty((0, 2), dtype=np.float64)
#: Events a tenant's window must hold before it is protected from probation eviction.
PROTECTED_EVENTS: Final = 16
#: Answered request ids remembered, so that a replay does not re-open them.
_RESOLVED_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """What the core needs to know. THE defaults: `ConsumerSettings` takes its own from here.

    The defaults suit 1-, 5- and 15-minute telemetry alike: a tenant's first
    `cold_start_min_events` fit in the window at each (see `consumer.window`).
    """

    topic: str = topics.TELEMETRY
    window_max_events: int = DEFAULT_CAPACITY
    window_span_s: float = DEFAULT_SPAN_S
    max_tenants: int = 10_000
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    drift: DriftConfig = field(default_factory=DriftConfig)
    data_drift: bool = True
    cold_start: bool = True
    cold_start_min_events: int = 500
    cold_start_min_per_class: int = 10
    #: Event time between a tenant's requests.
    cooldown_s: float = 3_600.0
    #: Wall-clock time (the `now` of `process`) an unanswered request holds its tenant.
    request_timeout_s: float = 7_200.0
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    publish_forecasts: bool = False
    #: Event times later than the caller's clock plus this are dead-lettered (`future_ts`).
    max_future_s: float = 300.0


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A drift that arrived while the tenant's request was in flight.

    It is not lost: once that request is answered (or times out) and the cooldown has
    passed, ONE follow-up request goes out on the then newest window. Its `event_id` is
    the drift's own (its offset), so a replay that meets the drift after the answer
    makes the same id. A newer drift while one waits replaces it (coalesced)."""

    reason: RetrainReason
    detector: str
    signal: DriftSignal | None
    offset: int
    ts: float


@dataclass(slots=True)
class TenantState:
    tenant: str
    partition: int
    window: TenantWindow
    drift: DataDriftMonitor
    gate: RequestGate
    model: LiveModel | None = None
    performance: PerformanceMonitor | None = None
    #: Forecasts not yet scored: the last `horizon` probabilities of the live model.
    pending_proba: np.ndarray = field(default_factory=lambda: _NO_PROBA)
    #: A performance alarm waiting out its settle period, and the events still to wait.
    alarm: DriftSignal | None = None
    alarm_wait: int = 0
    follow_up: FollowUp | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterOut:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, Any]]


@dataclass(slots=True)
class BatchResult:
    dead_letters: list[DeadLetterOut] = field(default_factory=list)
    requests: list[RetrainRequested] = field(default_factory=list)
    forecasts: list[tuple[bytes, bytes]] = field(default_factory=list)
    valid: int = 0
    invalid: int = 0
    replayed: int = 0
    #: Fresh (not replayed) detector alarms as (reason, detector), and the reasons of
    #: requests the gate held back (cooldown, or a request in flight). Both rare.
    alarms: list[tuple[str, str]] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    #: Live forecasts of fresh events; those scored against their interval's label, and
    #: of these the ones whose decision (at the model's threshold) was wrong.
    forecasts_made: int = 0
    forecasts_scored: int = 0
    forecast_errors: int = 0
    #: Forecasts that were not finite: neither published nor scored.
    forecasts_non_finite: int = 0


class IngestCore:
    """Windows, detectors and request gates for every tenant this member holds.

    Pure: records in, a `BatchResult` (dead letters, retrain requests, forecasts) out.
    A bad record becomes a dead letter, never an exception; imports no Kafka client,
    produces and commits nothing (the service does)."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._tenants: OrderedDict[str, TenantState] = OrderedDict()
        #: Tenants whose window is still shorter than `PROTECTED_EVENTS`, oldest first.
        self._probation: OrderedDict[str, None] = OrderedDict()
        self._by_partition: dict[int, set[str]] = {}
        #: The newest live model of every tenant announced so far, held or not.
        self._models: dict[str, LiveModel] = {}
        #: Requests already answered (published, kept or failed), newest last.
        self._resolved: OrderedDict[str, None] = OrderedDict()
        #: Tenants evicted to stay within `max_tenants`, since the start.
        self.evicted = 0

    # -- models and answers (from the model follower) -------------------------------
    def apply_model(self, model: LiveModel) -> None:
        """Hot-swap a tenant's live model; the next batch forecasts with it."""
        current = self._models.get(model.tenant)
        if current is not None and current.version >= model.version:
            return
        self._models[model.tenant] = model
        state = self._tenants.get(model.tenant)
        if state is not None:
            self._attach(state, model)
        self.resolve(model.tenant, model.request_event_id)

    def model(self, tenant: str) -> LiveModel | None:
        return self._models.get(tenant)

    def resolve(self, tenant: str, event_id: str) -> None:
        """A request was answered: its tenant may ask again (after the cooldown).

        The answer frees the gate of the request it names, and also any other request
        of the tenant in flight if this answer is new: a retrainer just served the
        tenant on its newest window. (A replay after a restart can rebuild a request in
        flight under an id that was never sent, when answers had come at other points
        of the stream; it must not wait out the whole timeout.)
        """
        fresh = event_id not in self._resolved
        self._resolved[event_id] = None
        while len(self._resolved) > _RESOLVED_KEPT:
            self._resolved.popitem(last=False)
        state = self._tenants.get(tenant)
        if state is not None and (fresh or state.gate.request_id == event_id):
            state.gate.resolve()

    def _attach(self, state: TenantState, model: LiveModel) -> None:
        state.model = model
        state.performance = PerformanceMonitor(self.config.performance, model.card.metrics)
        state.pending_proba = _NO_PROBA
        state.alarm = None

    # -- state ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._tenants)

    def tenant(self, tenant: str) -> TenantState | None:
        return self._tenants.get(tenant)

    def tenants(self) -> Iterable[TenantState]:
        return self._tenants.values()

    def replay_start(self, partition: int) -> int | None:
        """Oldest offset any held window of `partition` still needs, if any."""
        offsets = [
            self._tenants[t].window.oldest_offset for t in self._by_partition.get(partition, ())
        ]
        present = [o for o in offsets if o is not None]
        return min(present) if present else None

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        dropped = 0
        for partition in partitions:
            for tenant in self._by_partition.pop(partition, set()):
                del self._tenants[tenant]
                dropped += 1
        return dropped

    def _state_for(self, tenant: str, partition: int) -> TenantState:
        state = self._tenants.get(tenant)
        if state is not None and state.partition != partition:
            log.warning(
                "tenant=%s moved from partition=%d to partition=%d; its window restarts",
                tenant,
                state.partition,
                partition,
            )
            self._forget(tenant)
            state = None
        if state is None:
            cfg = self.config
            state = TenantState(
                tenant=tenant,
                partition=partition,
                window=TenantWindow(cfg.window_max_events, cfg.window_span_s, len(FEATURES)),
                drift=DataDriftMonitor(cfg.drift),
                gate=RequestGate(cfg.cooldown_s, cfg.request_timeout_s),
            )
            self._tenants[tenant] = state
            self._by_partition.setdefault(partition, set()).add(tenant)
            model = self._models.get(tenant)
            if model is not None:
                self._attach(state, model)
            self._probation[tenant] = None
            while len(self._tenants) > cfg.max_tenants:
                self._evict(keep=tenant)
        else:
            self._tenants.move_to_end(tenant)
            if tenant in self._probation:
                self._probation.move_to_end(tenant)
        return state

    def _evict(self, keep: str) -> None:
        """Drop one tenant: the oldest still on probation, else the least recently active.

        A tenant is on probation until its window holds `PROTECTED_EVENTS` events, so a
        flood of one-event tenants (junk keys, a misconfigured producer) churns only
        itself and never evicts a real tenant's window.
        """
        victim = next((t for t in self._probation if t != keep), None)
        if victim is None:
            victim = next(t for t in self._tenants if t != keep)
        log.debug("tenant=%s evicted", victim)
        self._forget(victim)
        self.evicted += 1

    def _forget(self, tenant: str) -> None:
        self._probation.pop(tenant, None)
        state = self._tenants.pop(tenant)
        members = self._by_partition.get(state.partition)
        if members is not None:
            members.discard(tenant)
            if not members:
                del self._by_partition[state.partition]

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
        restart or rebalance: they rebuild state but emit nothing again.

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
                if offset >= replay_below.get(partition, -1):
                    result.dead_letters.append(
                        self._dead_letter(record, exc, partition, offset, now)
                    )
                continue
            rows.append(_ROW(event.__dict__))
            partitions.append(partition)
            offsets.append(offset)
        result.valid = len(rows)
        if rows:
            self._ingest_rows(rows, partitions, offsets, replay_below, result, now)
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
            source_topic=record.topic() or self.config.topic,
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
        return DeadLetterOut(record.key(), record.value(), headers)

    def _ingest_rows(
        self,
        rows: list[tuple[Any, ...]],
        partitions: list[int],
        offsets: list[int],
        replay_below: Mapping[int, int],
        result: BatchResult,
        now: float | None = None,
    ) -> None:
        """Columns for the whole batch at once, regrouped by tenant into contiguous views."""
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
        for code, (count, hi) in enumerate(zip(counts.tolist(), ends, strict=True)):
            lo = hi - count
            partition = int(parts[lo])
            replay_limit = replay_below.get(partition, -1)
            span = slice(lo, hi)
            if replay_limit > 0:
                result.replayed += int(np.count_nonzero(offs[span] < replay_limit))
            self._ingest_block(
                self._state_for(names[code], partition),
                ts[span],
                features[span],
                labels[span],
                offs[span],
                replay_limit,
                result,
                now,
            )

    def _ingest_block(
        self,
        state: TenantState,
        ts: np.ndarray,
        features: np.ndarray,
        labels: np.ndarray,
        offsets: np.ndarray,
        replay_limit: int,
        result: BatchResult,
        now: float | None = None,
    ) -> None:
        """Window a tenant's block and raise its requests, as if event by event.

        Triggers are handled in event order with the window and the gate exactly as
        they were at each one, so requests (and their ids) do not depend on where the
        poll cut the stream: a replay after a crash, with other batches, makes the same.
        """
        window = state.window
        cfg = self.config
        not_after = None if now is None else now + cfg.max_future_s
        triggers: list[tuple[int, RetrainReason, str, DriftSignal | None]] = []
        if state.model is not None:
            alarms = self._forecast(state, ts, features, labels, offsets, replay_limit, result)
            _count_alarms(
                result, "performance_drift", cfg.performance.detector, alarms, offsets, replay_limit
            )
            triggers += [
                (due.index, "performance_drift", cfg.performance.detector, due)
                for due in self._settled(state, alarms, ts, len(labels))
            ]
        if cfg.data_drift:
            signals = state.drift.update(features)
            _count_alarms(result, "data_drift", cfg.drift.detector, signals, offsets, replay_limit)
            triggers += [
                (signal.index, "data_drift", cfg.drift.detector, signal) for signal in signals
            ]
        triggers.sort(key=lambda t: t[0])
        cold_start = cfg.cold_start and state.model is None
        done = 0
        while True:
            index = triggers[0][0] if triggers else len(labels)
            cold = (
                self._cold_start_index(state, ts, labels, done, index, now) if cold_start else None
            )
            follow_up = state.follow_up
            follow = self._follow_up_index(state, ts, done, index, now)
            if follow_up is not None and follow is not None and (cold is None or follow <= cold):
                trigger: tuple[int, RetrainReason, str, DriftSignal | None] = (
                    follow,
                    follow_up.reason,
                    follow_up.detector,
                    follow_up.signal,
                )
            elif cold is not None:
                follow_up = None
                trigger = (
                    cold,
                    "cold_start",
                    "cold_start",
                    None,
                )
            elif triggers:
                follow_up = None
                trigger = triggers.pop(0)
            else:
                break
            index, reason, detector, signal = trigger
            cut = index + 1
            window.extend(
                ts[done:cut],
                features[done:cut],
                labels[done:cut],
                offsets[done:cut],
                checked=False,
                max_ts=not_after,
            )
            done = cut
            self._request(
                state,
                reason,
                detector,
                signal,
                ts[index],
                offsets,
                index,
                replay_limit,
                result,
                now,
                follow_up,
            )
        window.extend(
            ts[done:],
            features[done:],
            labels[done:],
            offsets[done:],
            checked=False,
            max_ts=not_after,
        )
        if len(window) >= PROTECTED_EVENTS:
            self._probation.pop(state.tenant, None)

    def _settled(
        self, state: TenantState, alarms: list[DriftSignal], ts: np.ndarray, n: int
    ) -> list[DriftSignal]:
        """Performance alarms that fall due in this block, `settle_events` after each.

        An alarm while another waits is dropped; the wait runs across blocks.
        """
        settle = self.config.performance.settle_events
        due: list[DriftSignal] = []
        for alarm in [*alarms, None]:
            limit = n if alarm is None else alarm.index
            if state.alarm is not None and state.alarm_wait < limit:
                due.append(replace(state.alarm, index=state.alarm_wait))
                state.alarm = None
            if alarm is None:
                break
            if state.alarm is None:
                statistic = {
                    **alarm.statistic,
                    "alarm_ts": float(ts[alarm.index]),
                    "settle_events": float(settle),
                }
                state.alarm = replace(alarm, statistic=statistic)
                state.alarm_wait = alarm.index + settle
        if state.alarm is not None:
            state.alarm_wait -= n
        return due

    def _forecast(
        self,
        state: TenantState,
        ts: np.ndarray,
        features: np.ndarray,
        labels: np.ndarray,
        offsets: np.ndarray,
        replay_limit: int,
        result: BatchResult,
    ) -> list[DriftSignal]:
        """Forecast the block with one model call, and score earlier forecasts.

        The forecast made at event t is for event t + horizon; it is scored when that
        event's label arrives, in this block or a later one.
        """
        model = state.model
        monitor = state.performance
        if model is None or monitor is None:
            return []
        history = state.window.tail(model.features.history - 1)
        proba = model.forecast(history, (ts, features, labels))
        # Beside each forecast, what persistence forecast for the same event: the monitor
        # watches the model's loss against it (both suffer the same hard hours).
        pair = np.column_stack((proba, model.persistence(labels)))
        horizon = model.horizon
        pending = state.pending_proba
        combined = np.concatenate((pending, pair)) if len(pending) else pair
        scored = np.arange(max(0, horizon - len(pending)), len(labels))
        made = combined[len(pending) + scored - horizon]
        outcomes = np.column_stack((made[:, 0], labels[scored], made[:, 1]))
        state.pending_proba = combined[-horizon:]
        # A non-finite forecast is no forecast: never scored, never published.
        usable = np.isfinite(outcomes[:, 0])
        if not usable.all():
            scored, outcomes = scored[usable], outcomes[usable]
        self._count_forecasts(model, proba, outcomes, scored, offsets, replay_limit, result)
        if self.config.publish_forecasts:
            self._emit_forecasts(state, model, ts, proba, offsets, replay_limit, result)
        return [replace(a, index=int(scored[a.index])) for a in monitor.update(outcomes)]

    @staticmethod
    def _count_forecasts(
        model: LiveModel,
        proba: np.ndarray,
        outcomes: np.ndarray,
        scored: np.ndarray,
        offsets: np.ndarray,
        replay_limit: int,
        result: BatchResult,
    ) -> None:
        """Forecasts made, scored and wrong in a block, of fresh events only (vectorised)."""
        wrong = (outcomes[:, 0] >= model.threshold) != (outcomes[:, 1] >= 0.5)
        finite = int(np.count_nonzero(np.isfinite(proba)))
        if replay_limit <= int(offsets[0]):  # nothing replayed: the common case
            result.forecasts_made += finite
            result.forecasts_non_finite += len(proba) - finite
            result.forecasts_scored += len(scored)
            result.forecast_errors += int(np.count_nonzero(wrong))
            return
        fresh = offsets >= replay_limit
        made = int(np.count_nonzero(fresh & np.isfinite(proba)))
        result.forecasts_made += made
        result.forecasts_non_finite += int(np.count_nonzero(fresh)) - made
        judged = fresh[scored]
        result.forecasts_scored += int(np.count_nonzero(judged))
        result.forecast_errors += int(np.count_nonzero(wrong & judged))

    def _emit_forecasts(
        self,
        state: TenantState,
        model: LiveModel,
        ts: np.ndarray,
        proba: np.ndarray,
        offsets: np.ndarray,
        replay_limit: int,
        result: BatchResult,
    ) -> None:
        fresh = (offsets >= replay_limit) & np.isfinite(proba)
        if not fresh.any():
            return
        key = state.tenant.encode()
        # One JSON object per event, built from a per-block prefix and vectorised time
        # formatting: json.dumps and datetime per event would cost more than the forecast.
        head = (
            f'{{"tenant": {json.dumps(state.tenant)}, "horizon": {model.horizon}, '
            f'"model_revision": {json.dumps(model.revision)}, '
            f'"model_version": {model.version}, "ts": "'
        )
        micros = np.round(ts[fresh] * 1e6).astype("datetime64[us]")
        whole = not (micros.astype(np.int64) % 1_000_000).any()
        stamps = np.datetime_as_string(
            micros,
            unit="s" if whole else "us",
            timezone="UTC",
        ).tolist()
        chosen = proba[fresh]
        expected = (chosen >= model.threshold).tolist()
        probabilities = np.round(chosen.astype(np.float64), 6).tolist()
        out = result.forecasts
        for stamp, probability, breach in zip(stamps, probabilities, expected, strict=True):
            tail = "true}" if breach else "false}"
            value = f'{head}{stamp}", "probability": {probability!r}, "breach_expected": {tail}'
            out.append((key, value.encode()))

    def _follow_up_index(
        self, state: TenantState, ts: np.ndarray, start: int, stop: int, now: float | None
    ) -> int | None:
        """First event in `[start, stop)` at which the tenant's waiting follow-up is due."""
        if state.follow_up is None or stop <= start:
            return None
        ready = state.gate.allows_many(ts[start:stop], now)
        return start + int(np.argmax(ready)) if ready.any() else None

    def _cold_start_index(
        self,
        state: TenantState,
        ts: np.ndarray,
        labels: np.ndarray,
        start: int,
        stop: int,
        now: float | None = None,
    ) -> int | None:
        """First event in `[start, stop)` of the block at which a cold start is due.

        Due: the window (as extended up to `start`) has become trainable and the gate lets
        a request through. Evictions inside the block are ignored, which can only make a
        trigger a few events later than exact.
        """
        if stop <= start:
            return None
        cfg = self.config
        window = state.window
        if len(window) + (stop - start) < cfg.cold_start_min_events:
            return None
        part = labels[start:stop]
        pos = window.n_positive + np.cumsum(part)
        total = np.minimum(len(window) + np.arange(1, len(part) + 1), window.capacity)
        ready = (
            (total >= cfg.cold_start_min_events)
            & (pos >= cfg.cold_start_min_per_class)
            & (total - pos >= cfg.cold_start_min_per_class)
        )
        ready &= state.gate.allows_many(ts[start:stop], now)
        if not ready.any():
            return None
        return start + int(np.argmax(ready))

    def _request(
        self,
        state: TenantState,
        reason: RetrainReason,
        detector: str,
        signal: DriftSignal | None,
        ts: float,
        offsets: np.ndarray,
        index: int,
        replay_limit: int,
        result: BatchResult,
        now: float | None = None,
        follow_up: FollowUp | None = None,
    ) -> None:
        """Ask for a retrain at event `index`, if the gate lets it through.

        Held back by a request in flight, the trigger waits as the tenant's follow-up;
        held back by the cooldown alone, it is dropped. A follow-up keeps the id and
        detection time of its drift, and names the window as it is now.
        """
        trigger = int(offsets[index])
        origin, detected = (
            (trigger, float(ts)) if follow_up is None else (follow_up.offset, follow_up.ts)
        )
        topic, partition = self.config.topic, state.partition
        event_id = retrain_event_id(state.tenant, reason, topic, partition, origin)
        if not state.gate.allows(float(ts), now):
            waits = state.gate.busy(now)
            if waits:
                state.follow_up = FollowUp(reason, detector, signal, origin, detected)
            if trigger >= replay_limit:
                result.held_back.append(reason)
            log.debug(
                "tenant=%s partition=%d offset=%d %s %s",
                state.tenant,
                state.partition,
                trigger,
                reason,
                "waits for the request in flight" if waits else "dropped in the cooldown",
            )
            return
        state.gate.record_request(float(ts), event_id, now)
        state.follow_up = None  # this request trains on the newest window: it covers it
        if event_id in self._resolved:  # answered before this replay reached it
            state.gate.resolve()
        if trigger < replay_limit:
            return
        held = state.window.offsets()
        held = held[held <= trigger]
        request = RetrainRequested(
            event_id=event_id,
            tenant=state.tenant,
            reason=reason,
            detector=detector,
            details=DetectorDetails(
                features=list(signal.features) if signal else [],
                statistic=dict(signal.statistic)
                if signal
                else {
                    "n_events": float(len(state.window)),
                    "n_positive": float(state.window.n_positive),
                },
            ),
            detected_at=datetime.fromtimestamp(detected, UTC),
            source=[
                OffsetRange(
                    topic=self.config.topic,
                    partition=state.partition,
                    start_offset=int(held.min()) if len(held) else trigger,
                    end_offset=trigger + 1,
                )
            ],
            n_events=max(len(held), 1),
        )
        log.info(
            "retrain requested tenant=%s partition=%d offset=%d reason=%s event_id=%s",
            state.tenant,
            state.partition,
            trigger,
            reason,
            request.event_id,
        )
        result.requests.append(request)


def _count_alarms(
    result: BatchResult,
    reason: str,
    detector: str,
    signals: Sequence[DriftSignal],
    offsets: np.ndarray,
    replay_limit: int,
) -> None:
    """Note the fresh alarms of a block (replayed ones were counted the first time)."""
    for signal in signals:
        if int(offsets[signal.index]) >= replay_limit:
            result.alarms.append((reason, detector))
