"""A tenant's live early warning: its edges on `sla.warnings`, and the live budget.

A warning is on while `kernel.early_warning.warning_on` holds: the tenant is quiet (no
breach in the last `QUIET` events, this one included, counted from the labels of the
window and the block, so cards without a `quiet` feature warn the same way) and the
forecast reaches the tenant's live threshold. Only edges are sent: `WarningRaised` on
the rising edge, `WarningCleared` on the falling one (`breach_started` when a breach
began, else `risk_passed`), and a clear when the model is swapped or the tenant leaves.
Ids come from the raising event's topic position, so a replay makes the same ones;
replayed events rebuild this state and send nothing.

**The live budget.** Labels arrive `QUIET` intervals late, so each notification (the
rising edge, then every `REPEAT` intervals while on: `kernel.early_warning`'s
definitions, not a second copy of them) is judged when its last label arrives. When a
tenant's false warnings over its trailing day of event time exceed
`warning_budget_per_day`, each further one moves the logit of its live threshold up by
`LOGIT_STEP`; after a day with no step, the threshold steps back toward the card's.
Every step is a log line. A step takes effect from the event after the label that
caused it, and it is evaluated event by event, so the state does not depend on where
batches are cut (a restart's replay rebuilds it exactly).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kernel.early_warning import QUIET, REPEAT, false_warnings, notifications, warning_on
from schemas.warnings import (
    ClearReason,
    WarningCleared,
    WarningPolicyFacts,
    WarningRaised,
    warning_event_id,
)

if TYPE_CHECKING:
    from consumer.batch import BatchResult, Block, CoreConfig, TenantState
    from consumer.live_model import LiveModel
    from kernel.artifacts import ModelCard

__all__ = [
    "LOGIT_STEP",
    "LiveWarnings",
    "WarningState",
    "end_warning",
    "live_threshold",
    "policy_facts",
    "quiet_flags",
    "quiet_flags_many",
]

log = logging.getLogger(__name__)

#: How far one false warning over budget moves the live threshold's logit.
LOGIT_STEP: Final = 0.5
#: Steps at most: the threshold is then 1 to float precision (and never above it).
MAX_STEPS: Final = 64
DAY_S: Final = 86_400.0
_NO_FLAGS: Final = np.empty(0, dtype=np.bool_)
_NO_TS: Final = np.empty(0, dtype=np.float64)

#: A clear sent outside a block (a model swap, a tenant leaving): key, value, reason.
Edge = tuple[bytes, bytes, ClearReason]


@dataclass(slots=True)
class WarningState:
    """One tenant's warning under its live model; a new model starts a new one.

    `warning_id` is set while the warning is on (the raise's id); `run` counts the
    intervals it has been on. `recent_*` hold the last `QUIET` intervals (fewer at
    first): their notifications, none judged yet, their labels and event times.
    """

    warning_id: str | None = None
    #: The revision of the model that raised the warning on now.
    revision: str = ""
    run: int = 0
    last_ts: float | None = None
    recent_sent: np.ndarray = field(default_factory=lambda: _NO_FLAGS)
    recent_labels: np.ndarray = field(default_factory=lambda: _NO_FLAGS)
    recent_ts: np.ndarray = field(default_factory=lambda: _NO_TS)
    #: Event times of the false warnings known, over about the trailing day.
    false_ts: deque[float] = field(default_factory=deque)
    #: Steps of `LOGIT_STEP` the live threshold stands above the card's, and when the
    #: last step (up or back) was taken.
    steps: int = 0
    changed_at: float = -math.inf

    @property
    def on(self) -> bool:
        return self.warning_id is not None

    @property
    def over_budget(self) -> bool:
        """Whether the live threshold is raised (the tenant ran over its budget)."""
        return self.steps > 0


def live_threshold(card_threshold: float, steps: int) -> float:
    """The card's threshold with its logit moved up by `steps` steps (never above 1).

    >>> live_threshold(0.5, 0), round(live_threshold(0.5, 2), 4), live_threshold(1.0, 3)
    (0.5, 0.7311, 1.0)
    """
    if steps <= 0 or card_threshold >= 1.0:
        return card_threshold
    p = min(max(card_threshold, 1e-6), 1.0 - 1e-6)
    logit = math.log(p / (1.0 - p)) + steps * LOGIT_STEP
    return min(1.0, 1.0 / (1.0 + math.exp(-logit)))


def quiet_flags(before: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each of `labels`: no breach in the last `QUIET` events, this one included.

    `before` holds the labels of the events just before (fewer than `QUIET - 1` at the
    start of a stream: only the events there count).

    >>> quiet_flags(np.array([True]), np.zeros(12, bool)).tolist()[-2:]
    [False, True]
    """
    tail = np.asarray(before, dtype=np.bool_)[len(before) - min(len(before), QUIET - 1) :]
    flags = np.concatenate((np.zeros(QUIET - 1 - len(tail), np.bool_), tail, labels))
    counts = sliding_window_view(flags.astype(np.int64), QUIET).sum(axis=1)
    quiet: np.ndarray = counts == 0
    return quiet


def quiet_flags_many(
    befores: Sequence[np.ndarray], blocks: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """`quiet_flags` of many tenants' blocks (each with its `before`), in one pass.

    Each tenant's labels are laid after its own `QUIET - 1` earlier ones (zeros where it
    has fewer), so no window reaches into another tenant's: the same flags, one numpy
    pass instead of one per tenant.
    """
    if not blocks:
        return []
    width = QUIET - 1
    pieces: list[np.ndarray] = []
    for before, labels in zip(befores, blocks, strict=True):
        tail = np.asarray(before, dtype=np.bool_)[len(before) - min(len(before), width) :]
        if len(tail) < width:
            pieces.append(np.zeros(width - len(tail), np.bool_))
        pieces += (tail, labels)
    breaches = np.concatenate(([0], np.cumsum(np.concatenate(pieces), dtype=np.int64)))
    sizes = np.fromiter((len(b) for b in blocks), np.int64, len(blocks))
    # Tenant i's block event j lies at `width + j` after the tenant's own start.
    begins = np.cumsum(sizes + width) - sizes
    at = np.repeat(begins - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))
    quiet = breaches[at + 1] - breaches[at + 1 - QUIET] == 0
    return np.split(quiet, np.cumsum(sizes)[:-1])


def _number(value: Any, low: float, high: float | None) -> float | None:
    """`value` as a float in [low, high], or None (a card is input like any other)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or number < low or (high is not None and number > high):
        return None
    return number


def policy_facts(card: ModelCard) -> WarningPolicyFacts:
    """What the card's warning policy measured out of fold (`TunedPolicy.as_card`)."""
    policy = card.warning
    record = card.warning_record
    threshold = _number(policy.get("threshold"), 0.0, 1.0)
    return WarningPolicyFacts(
        threshold=card.threshold if threshold is None else threshold,
        recall_lead_1=_number(record.get("recall_lead_1"), 0.0, 1.0),
        recall_lead_3=_number(record.get("recall_lead_3"), 0.0, 1.0),
        median_lead=_number(record.get("median_lead"), 0.0, None),
        false_per_day=_number(record.get("false_per_day"), 0.0, None),
    )


def _stamp(ts: float) -> datetime:
    return datetime.fromtimestamp(round(float(ts), 6), UTC)


def end_warning(state: TenantState, reason: ClearReason) -> Edge | None:
    """Clear the tenant's warning if it is on (its model goes, or the tenant does)."""
    warning = state.warning
    if warning.warning_id is None or warning.last_ts is None:
        return None
    cleared = WarningCleared(
        warning_id=warning.warning_id,
        tenant=state.tenant,
        ts=_stamp(warning.last_ts),
        reason=reason,
        model_revision=warning.revision,
    )
    warning.warning_id, warning.run = None, 0
    return state.tenant.encode(), cleared.model_dump_json().encode(), reason


@dataclass(frozen=True, slots=True)
class _Segment:
    """The block from event `start` on, as the current live threshold would have it."""

    start: int
    on: np.ndarray
    sent: np.ndarray
    #: The recent intervals then the segment's: notifications, labels, event times.
    all_sent: np.ndarray
    all_labels: np.ndarray
    all_ts: np.ndarray


class LiveWarnings:
    """The warning state machine of every tenant (state in each `TenantState.warning`).

    Holds no state of its own. `update` never raises on odd input: a non-finite
    forecast is simply not a warning.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.budget_per_day = config.warning_budget_per_day
        self.topic = config.telemetry_topic

    def update(
        self,
        block: Block,
        model: LiveModel,
        proba: np.ndarray,
        result: BatchResult,
        quiet: np.ndarray,
    ) -> np.ndarray:
        """Where the tenant's warning is on over the block; its fresh edges go to `result`.

        `quiet`: the block's `quiet_flags` (the forecaster computes them once per block).
        """
        warning = block.state.warning
        was_on = warning.on
        p = np.asarray(proba, dtype=np.float64)
        if self._stays_off(block, model, p, quiet):
            return np.zeros(len(block), dtype=np.bool_)
        on = np.zeros(len(block), dtype=np.bool_)
        start = 0
        while start < len(block):
            segment = self._segment(block, model, p, quiet, start)
            start = self._advance(block, segment, model, on, result)
        self._edges(block, model, p, on, was_on, result)
        if len(block):
            warning.last_ts = float(block.ts[-1])
        return on

    def _stays_off(self, block: Block, model: LiveModel, p: np.ndarray, quiet: np.ndarray) -> bool:
        """The common case, taken in a few array operations: an idle warning (off, at the
        card's threshold, no notification waiting for its labels) that the block leaves
        off. Its state only moves its recent intervals on; nothing is sent or judged.
        """
        warning = block.state.warning
        if (
            warning.warning_id is not None
            or warning.run
            or warning.steps
            or not len(block)
            or warning.recent_sent.any()
        ):
            return False
        if model.card.warns and warning_on(p, quiet, model.card.threshold).any():
            return False
        c = len(warning.recent_labels)
        keep = slice(max(0, c + len(block) - QUIET), None)
        warning.recent_sent = np.zeros(min(QUIET, c + len(block)), dtype=np.bool_)
        warning.recent_labels = np.concatenate((warning.recent_labels, block.labels))[keep]
        warning.recent_ts = np.concatenate((warning.recent_ts, block.ts))[keep]
        warning.last_ts = float(block.ts[-1])
        return True

    # -- the live threshold, event by event -----------------------------------------
    def _segment(
        self, block: Block, model: LiveModel, p: np.ndarray, quiet: np.ndarray, start: int
    ) -> _Segment:
        warning = block.state.warning
        card = model.card
        if card.warns:
            threshold = live_threshold(card.threshold, warning.steps)
            on = warning_on(p[start:], quiet[start:], threshold)
        else:
            on = np.zeros(len(block) - start, dtype=np.bool_)
        # The run so far as a prefix (off, then `run % REPEAT` on), so that the block's
        # notifications keep the phase of a warning that came on in an earlier block.
        prefix = np.zeros(1 + warning.run % REPEAT, dtype=np.bool_)
        prefix[1:] = warning.run > 0
        sent = notifications(np.concatenate((prefix, on)))[len(prefix) :]
        return _Segment(
            start,
            on,
            sent,
            np.concatenate((warning.recent_sent, sent)),
            np.concatenate((warning.recent_labels, block.labels[start:])),
            np.concatenate((warning.recent_ts, block.ts[start:])),
        )

    def _advance(
        self, block: Block, segment: _Segment, model: LiveModel, on: np.ndarray, result: BatchResult
    ) -> int:
        """Take the segment up to its first step of the threshold; where to go on from.

        A notification at `q` (in `all_*`) is judged at segment event `q + QUIET - c`.
        """
        warning = block.state.warning
        ts = block.ts[segment.start :]
        c = len(warning.recent_sent)
        falses = (
            np.flatnonzero(false_warnings(segment.all_sent, segment.all_labels))
            if segment.all_sent.any()
            else np.empty(0, np.int64)
        )
        relax = None
        if warning.steps > 0:
            due = np.flatnonzero(ts - warning.changed_at >= DAY_S)
            relax = int(due[0]) if len(due) else None
        stop, step, pool = len(ts) - 1, 0, list(warning.false_ts)
        for q in falses.tolist():
            k = q + QUIET - c
            if relax is not None and relax < k:
                break
            pool.append(float(segment.all_ts[q]))
            if sum(t > ts[k] - DAY_S for t in pool) > self.budget_per_day:
                stop, step = k, 1
                break
        if step == 0 and relax is not None:
            stop, step = relax, -1
        self._take(block, segment, stop, falses, result)
        on[segment.start : segment.start + stop + 1] = segment.on[: stop + 1]
        if step:
            self._step(block, model, segment.start + stop, step)
        return segment.start + stop + 1

    def _take(
        self, block: Block, segment: _Segment, stop: int, falses: np.ndarray, result: BatchResult
    ) -> None:
        """The state after segment event `stop`: the run, recent intervals, false warnings."""
        warning = block.state.warning
        taken = segment.on[: stop + 1]
        off = np.flatnonzero(~taken)
        warning.run = warning.run + stop + 1 if not len(off) else stop - int(off[-1])
        c = len(warning.recent_sent)
        end = c + stop + 1
        keep = slice(max(0, end - QUIET), end)
        warning.recent_sent = segment.all_sent[keep]
        warning.recent_labels = segment.all_labels[keep]
        warning.recent_ts = segment.all_ts[keep]
        judged = falses[falses + QUIET < end]
        if not len(judged):
            return
        warning.false_ts.extend(segment.all_ts[judged].tolist())
        horizon = float(block.ts[segment.start + stop]) - DAY_S
        while warning.false_ts and warning.false_ts[0] <= horizon:
            warning.false_ts.popleft()
        known_at = block.offsets[segment.start + judged + QUIET - c]
        result.false_warnings += int(np.count_nonzero(known_at >= block.replay_limit))

    def _step(self, block: Block, model: LiveModel, index: int, step: int) -> None:
        warning = block.state.warning
        warning.steps = min(max(warning.steps + step, 0), MAX_STEPS)
        warning.changed_at = float(block.ts[index])
        if block.fresh(index):
            threshold = live_threshold(model.card.threshold, warning.steps)
            log.info(
                "warning threshold %s tenant=%s threshold=%.4f card_threshold=%.4f "
                "false_warnings=%d budget_per_day=%g",
                "raised: over budget" if step > 0 else "lowered: back within budget",
                block.state.tenant,
                threshold,
                model.card.threshold,
                len(warning.false_ts),
                self.budget_per_day,
            )

    # -- edges ----------------------------------------------------------------------
    def _edges(
        self,
        block: Block,
        model: LiveModel,
        p: np.ndarray,
        on: np.ndarray,
        was_on: bool,
        result: BatchResult,
    ) -> None:
        before = np.concatenate(([was_on], on[:-1]))
        changes = np.flatnonzero(on != before)
        if not len(changes):
            return
        state = block.state
        warning, key = state.warning, state.tenant.encode()
        for index in changes.tolist():
            fresh = block.fresh(index)
            if on[index]:
                warning.warning_id = warning_event_id(
                    state.tenant,
                    model.revision,
                    self.topic,
                    state.partition,
                    int(block.offsets[index]),
                )
                warning.revision = model.revision
                if fresh:
                    raised = self._raised(block, model, warning.warning_id, float(p[index]), index)
                    result.warnings.append((key, raised))
                    result.warnings_raised += 1
                continue
            reason: ClearReason = "breach_started" if block.labels[index] else "risk_passed"
            if fresh and warning.warning_id is not None:
                cleared = WarningCleared(
                    warning_id=warning.warning_id,
                    tenant=state.tenant,
                    ts=_stamp(block.ts[index]),
                    reason=reason,
                    model_revision=warning.revision,
                )
                result.warnings.append((key, cleared.model_dump_json().encode()))
                result.warnings_cleared.append(reason)
            warning.warning_id = None

    def _raised(
        self, block: Block, model: LiveModel, warning_id: str, p: float, index: int
    ) -> bytes:
        card = model.card
        raised = WarningRaised(
            warning_id=warning_id,
            tenant=block.state.tenant,
            ts=_stamp(block.ts[index]),
            probability=min(max(round(p, 6), 0.0), 1.0),
            horizon=card.horizon,
            horizon_s=card.horizon_s,
            model_revision=model.revision,
            model_version=model.version,
            forecaster=card.forecaster,
            policy=policy_facts(card),
        )
        return raised.model_dump_json().encode()
