"""When a tenant asks for a retrain: cold start, drift, follow-ups, the cooldown, answers.

A block's triggers are taken in event order, with the window and the gate exactly as
they were at each one, so requests (and their ids) do not depend on where the poll cut
the stream: a replay after a crash, with other batches, makes the same. Ids are
deterministic (`schemas.retrain_event_id`), and a request names its training data by
an offset range of the telemetry topic.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

import numpy as np

from consumer.batch import (
    RESOLVED_KEPT,
    BatchResult,
    Block,
    CoreConfig,
    FollowUp,
    TenantState,
    Trigger,
)
from consumer.detectors import DriftSignal
from consumer.schedule import Schedule
from schemas import DetectorDetails, OffsetRange, RetrainRequested, retrain_event_id
from schemas.retrain import DetectorName, SignalFeature

log = logging.getLogger(__name__)


class RetrainTriggers:
    """Turns a block's alarms, and its tenant's readiness, into retrain requests.

    Holds the ids of requests already answered (the newest `RESOLVED_KEPT`), so that a
    replay does not re-open them; everything else lives in each tenant's state (its
    gate, its waiting follow-up). Produces nothing itself: requests go to the result.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._schedule = Schedule(config)
        #: Requests already answered (published, kept or failed), newest last.
        self._resolved: OrderedDict[str, None] = OrderedDict()

    def resolve(self, state: TenantState | None, event_id: str) -> None:
        """A request was answered: its tenant (`state`, if held) may ask again.

        The answer frees the gate of the request it names, and also any other request
        of the tenant in flight if this answer is new: a retrainer just served the
        tenant on its newest window. (A replay after a restart can rebuild a request in
        flight under an id that was never sent, when answers had come at other points
        of the stream; it must not wait out the whole timeout.)

        Whether the answer gave the tenant a forecaster is its live model (set before a
        `ModelPublished` resolves): without one, its retry is scheduled
        (`consumer.schedule`).
        """
        fresh = event_id not in self._resolved
        self._resolved[event_id] = None
        while len(self._resolved) > RESOLVED_KEPT:
            self._resolved.popitem(last=False)
        if state is not None and (fresh or state.gate.request_id == event_id):
            self._answered(state)

    @staticmethod
    def _answered(state: TenantState) -> None:
        if state.gate.in_flight:
            state.schedule.answered(state)
        state.gate.resolve()

    def run(self, block: Block, triggers: list[Trigger], result: BatchResult) -> None:
        """Window the whole block, raising each request at the event that triggers it.

        `triggers` are the block's drift triggers; scheduled requests (cold start, retry,
        more history: `consumer.schedule`) and the tenant's waiting follow-up are found
        here, between them.
        """
        state = block.state
        pending = sorted(triggers, key=lambda t: t.index)
        done = 0
        while True:
            index = pending[0].index if pending else len(block)
            scheduled = self._schedule.due(block, done, index)
            follow_up = state.follow_up
            follow = self._follow_up_index(block, done, index)
            if (
                follow_up is not None
                and follow is not None
                and (scheduled is None or follow <= scheduled.index)
            ):
                trigger = Trigger(
                    follow, follow_up.reason, follow_up.detector, follow_up.signal, follow_up
                )
            elif scheduled is not None:
                trigger = scheduled
            elif pending:
                trigger = pending.pop(0)
            else:
                break
            cut = trigger.index + 1
            block.extend_window(done, cut)
            done = cut
            self._request(block, trigger, result)
        block.extend_window(done)
        state.schedule.events += len(block)

    def _follow_up_index(self, block: Block, start: int, stop: int) -> int | None:
        """First event in `[start, stop)` at which the tenant's waiting follow-up is due."""
        state = block.state
        if state.follow_up is None or stop <= start:
            return None
        ready = state.gate.allows_many(
            block.ts[start:stop], block.now, wall=block.live(start, stop)
        )
        return start + int(np.argmax(ready)) if ready.any() else None

    def _request(self, block: Block, trigger: Trigger, result: BatchResult) -> None:
        """Ask for a retrain at the trigger's event, if the gate lets it through.

        Held back by a request in flight, the trigger waits as the tenant's follow-up;
        held back by the cooldown alone, it is dropped. A follow-up keeps the id and
        detection time of its drift, and names the window as it is now.
        """
        state, now = block.state, block.now
        ts = float(block.ts[trigger.index])
        at = int(block.offsets[trigger.index])
        follow_up = trigger.follow_up
        origin, detected = (at, ts) if follow_up is None else (follow_up.offset, follow_up.ts)
        reason = trigger.reason
        topic, partition = self.config.telemetry_topic, state.partition
        event_id = retrain_event_id(state.tenant, reason, topic, partition, origin)
        wall = block.wall_clock and at >= block.replay_limit
        if not state.gate.allows(ts, now, wall=wall):
            waits = state.gate.busy(now)
            if waits:
                state.follow_up = FollowUp(
                    reason, trigger.detector, trigger.signal, origin, detected
                )
            if at >= block.replay_limit:
                result.held_back.append(reason)
            log.debug(
                "tenant=%s partition=%d offset=%d %s %s",
                state.tenant,
                state.partition,
                at,
                reason,
                "waits for the request in flight" if waits else "dropped in the cooldown",
                extra={"tenant": state.tenant, "partition": state.partition, "offset": at},
            )
            return
        state.gate.record_request(ts, event_id, now, wall=wall)
        state.schedule.record(state, state.schedule.events + trigger.index + 1, trigger)
        state.follow_up = None  # this request trains on the newest window: it covers it
        if event_id in self._resolved:  # answered before this replay reached it
            self._answered(state)
        if at < block.replay_limit:
            return
        request = self._retrain_requested(state, trigger, event_id, at, detected)
        log.info(
            "retrain requested tenant=%s partition=%d offset=%d reason=%s event_id=%s",
            state.tenant,
            state.partition,
            at,
            reason,
            request.event_id,
            extra={
                "tenant": state.tenant,
                "partition": state.partition,
                "offset": at,
                "event_id": request.event_id,
            },
        )
        result.requests.append(request)

    def _retrain_requested(
        self, state: TenantState, trigger: Trigger, event_id: str, at: int, detected: float
    ) -> RetrainRequested:
        """The request event: what triggered it, and the window up to offset `at`."""
        held = state.window.offsets()
        held = np.sort(held[held <= at])
        own = held.tolist() if len(held) and int(held[-1]) == at else [*held.tolist(), at]
        signal = trigger.signal
        return RetrainRequested(
            event_id=event_id,
            tenant=state.tenant,
            reason=trigger.reason,
            # Checked at run time against the registries (the detector's, the features').
            detector=cast(DetectorName, trigger.detector),
            details=DetectorDetails(
                features=cast(list[SignalFeature], list(signal.features)) if signal else [],
                statistic=dict(signal.statistic)
                if signal
                else {
                    "n_events": float(len(state.window)),
                    "n_positive": float(state.window.n_positive),
                },
            ),
            detected_at=datetime.fromtimestamp(detected, UTC),
            # The tenant's own offsets, named: the replay then reads what this tenant
            # sent, however much other tenants send on the partition.
            source=[OffsetRange.of_offsets(self.config.telemetry_topic, state.partition, own)],
            n_events=max(len(held), 1),
        )


def settled(block: Block, alarms: list[DriftSignal], settle: int) -> list[DriftSignal]:
    """Performance alarms that fall due in this block, `settle` events after each.

    The wait is for the window to hold the new regime, so it counts from where the
    change began when the alarm estimates it (`change_events_ago`, the calibration
    watch's): an alarm that comes `settle` or more events after its change waits no
    more. An alarm while another waits (in the block's tenant state) is dropped; the
    wait runs across blocks.
    """
    state, n = block.state, len(block)
    due: list[DriftSignal] = []
    for alarm in [*alarms, None]:
        limit = n if alarm is None else alarm.index
        if state.alarm is not None and state.alarm_wait < limit:
            due.append(replace(state.alarm, index=state.alarm_wait))
            state.alarm = None
        if alarm is None:
            break
        if state.alarm is None:
            since = int(alarm.statistic.get("change_events_ago", 0.0))
            wait = max(0, settle - max(0, since))
            statistic = {
                **alarm.statistic,
                "alarm_ts": float(block.ts[alarm.index]),
                "settle_events": float(wait),
            }
            state.alarm = replace(alarm, statistic=statistic)
            state.alarm_wait = alarm.index + wait
    if state.alarm is not None:
        state.alarm_wait -= n
    return due


def count_alarms(
    block: Block, reason: str, detector: str, signals: Sequence[DriftSignal], result: BatchResult
) -> None:
    """Note the fresh alarms of a block (replayed ones were counted the first time)."""
    for signal in signals:
        if block.fresh(signal.index):
            result.alarms.append((reason, detector))
