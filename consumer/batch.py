"""The types the consumer core shares: its config, a tenant's state, a block, a batch's result.

Plain data, no behaviour beyond small accessors: the modules of the core
(`consumer.tenants`, `consumer.triggers`, `consumer.forecasting`, `consumer.core`) all
import them from here, and none imports another's internals.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from consumer.detectors import DataDriftMonitor, DriftConfig, DriftSignal
from consumer.gate import RequestGate
from consumer.live_model import Events, LiveModel
from consumer.ood import OodRun
from consumer.performance import PerformanceConfig, PerformanceMonitor
from consumer.recalibration import Recalibration
from consumer.tenant_schedule import RequestSchedule
from consumer.warnings import WarningState
from consumer.window import DEFAULT_CAPACITY, DEFAULT_SPAN_S, TenantWindow
from kernel.time_rule import TimeRule
from schemas import RejectReason, RetrainReason, RetrainRequested, topics
from schemas.telemetry import DEFAULT_MAX_MESSAGE_BYTES, FEATURES

#: Reads one validated event's columns straight from the model's field dict: one C call
#: per event instead of nine attribute lookups.
ROW: Final = operator.itemgetter("tenant", "ts", *FEATURES, "sla_breached")
#: Pending forecasts: the model's, persistence's, and whether the tenant was quiet.
NO_PROBA: Final = np.empty((0, 3), dtype=np.float64)
NO_LABELS: Final = np.empty(0, dtype=np.bool_)
#: Events a tenant's window must hold before it leaves probation (and its quick expiry).
PROTECTED_EVENTS: Final = 16
_RULE: Final = TimeRule()
#: Answered request ids remembered, so that a replay does not re-open them.
RESOLVED_KEPT: Final = 100_000


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """What the core needs to know. THE defaults: `ConsumerSettings` takes its own from here.

    Every field is the `slaops consume` setting of the same name, and so are the fields
    of `drift` and `performance`: `consumer.main.core_config` builds this by name.
    The defaults suit 1-, 5- and 15-minute telemetry alike: a tenant's first
    `cold_start_min_events` fit in the window at each (see `consumer.window`).
    """

    telemetry_topic: str = topics.TELEMETRY
    window_max_events: int = DEFAULT_CAPACITY
    window_span_s: float = DEFAULT_SPAN_S
    max_tenants: int = 10_000
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    drift: DriftConfig = field(default_factory=DriftConfig)
    data_drift: bool = True
    cold_start: bool = True
    cold_start_min_events: int = 500
    cold_start_min_per_class: int = 10
    #: Event time between a tenant's requests, and the service's clock too where
    #: `wall_cooldown` (off only to replay recorded telemetry at speed).
    cooldown_s: float = 3_600.0
    wall_cooldown: bool = True
    #: Wall-clock time (the `now` of `process`) an unanswered request holds its tenant.
    request_timeout_s: float = 7_200.0
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    publish_forecasts: bool = False
    #: False warnings a tenant-day before its live threshold is raised (`consumer.warnings`).
    warning_budget_per_day: float = 1.0
    #: Event times later than the caller's clock plus this are dead-lettered (`future_ts`),
    #: and earlier than it by `max_past_s` (0: no bound), or than the window span before
    #: the tenant's newest event, as `past_ts` (`kernel.time_rule`).
    max_future_s: float = _RULE.max_future_s
    max_past_s: float = _RULE.max_past_s
    #: Admission (`consumer.tenants`): a tenant with no event for `tenant_idle_s` of the
    #: caller's clock leaves (`probation_idle_s` while on probation); at most
    #: `max_new_tenants_per_min` newcomers a minute (0: no bound); `tenant_allow`, a
    #: pattern a new tenant must match in full (None: any); `tenant_admit`, tenants
    #: admitted whatever the bounds.
    tenant_idle_s: float = 2 * 86_400.0
    probation_idle_s: float = 3_600.0
    max_new_tenants_per_min: int = 2_000
    tenant_allow: str | None = None
    tenant_admit: frozenset[str] = frozenset()
    #: The request schedule (`consumer.schedule`): a partition whose newest event in a
    #: batch is this far behind the clock is catching up (0: never), and its tenants'
    #: scheduled requests wait for a full window; a tenant with no forecaster asks again
    #: after this fraction of its window more events (doubling); one with a forecaster
    #: when its history reaches this multiple of the rows it was trained on (0: never).
    catch_up_lag_s: float = 86_400.0
    retry_after_fraction: float = 0.5
    more_history_factor: float = 2.0
    #: Consecutive out-of-distribution events before a retrain is asked (0: never).
    ood_events: int = 30
    #: Scored forecasts per head whose outcomes set a live model's published offset
    #: (`consumer.recalibration`; 0: publish the forecaster's own probabilities).
    recalibration_events: int = 288


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
    """Everything the core holds for one tenant: its window, monitors, gate and model."""

    tenant: str
    partition: int
    window: TenantWindow
    drift: DataDriftMonitor
    gate: RequestGate
    model: LiveModel | None = None
    performance: PerformanceMonitor | None = None
    #: The caller's clock at the tenant's latest event (None: no clock), for idle expiry.
    seen_at: float | None = None
    #: Forecasts not yet scored: the last `horizon` probabilities of the live model (with
    #: persistence's and the quiet flag beside each), and the breach flags of the events
    #: they were made at.
    pending_proba: np.ndarray = field(default_factory=lambda: NO_PROBA)
    pending_labels: np.ndarray = field(default_factory=lambda: NO_LABELS)
    #: The live model's warning: on or off, its id, the live budget.
    warning: WarningState = field(default_factory=WarningState)
    #: A performance alarm waiting out its settle period, and the events still to wait.
    alarm: DriftSignal | None = None
    alarm_wait: int = 0
    follow_up: FollowUp | None = None
    schedule: RequestSchedule = field(default_factory=RequestSchedule)
    ood: OodRun = field(default_factory=OodRun)
    #: The live model's published offsets (`consumer.recalibration`).
    recalibration: Recalibration = field(default_factory=lambda: Recalibration(0))


@dataclass(frozen=True, slots=True)
class Block:
    """One tenant's slice of a batch, oldest first: its columns and where they came from.

    The columns are views into the batch's arrays: `ts` (n,) epoch seconds, `features`
    (n, 6) float32, `labels` (n,) bool, `offsets` (n,) int64 of the tenant's partition.
    Events below `replay_limit` were processed before a restart or rebalance: they
    rebuild state and emit nothing again. `now` is the caller's clock (None: no clock)
    and `not_after` the latest event time a window may reach (None: no bound).
    `caught_up` is False while the consumer is more than `catch_up_lag_s` behind on
    the block's partition (its newest event of the batch against `now`).
    """

    state: TenantState
    ts: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    replay_limit: int
    now: float | None = None
    not_after: float | None = None
    caught_up: bool = True
    #: `now` is the wall clock of the live loop: cooldowns hold on it too (`consumer.gate`).
    wall_clock: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def events(self) -> Events:
        """The block's (ts, features, labels) columns, as the live model takes them."""
        return self.ts, self.features, self.labels

    def fresh(self, index: int) -> bool:
        """Whether event `index` is seen for the first time (not replayed)."""
        return int(self.offsets[index]) >= self.replay_limit

    def live(self, start: int, stop: int) -> np.ndarray | None:
        """Which events of [start, stop) the live loop's wall clock gates (None: none)."""
        if not self.wall_clock:
            return None
        return self.offsets[start:stop] >= self.replay_limit

    def extend_window(self, start: int, stop: int | None = None) -> None:
        """Append events [start, stop) of the block to the tenant's window."""
        self.state.window.extend(
            self.ts[start:stop],
            self.features[start:stop],
            self.labels[start:stop],
            self.offsets[start:stop],
            checked=False,
            max_ts=self.not_after,
        )


@dataclass(frozen=True, slots=True)
class Trigger:
    """A reason to ask for a retrain at event `index` of a block."""

    index: int
    reason: RetrainReason
    detector: str
    signal: DriftSignal | None
    #: Set when this is the tenant's waiting follow-up coming due.
    follow_up: FollowUp | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterOut:
    """A record for the dead-letter topic: the original bytes, and headers that say why."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, Any]]
    #: The reason the headers carry, for whoever counts dead letters by reason.
    reason: RejectReason


@dataclass(slots=True)
class BatchResult:
    """What one batch did, and what the caller must produce and commit for it."""

    dead_letters: list[DeadLetterOut] = field(default_factory=list)
    requests: list[RetrainRequested] = field(default_factory=list)
    forecasts: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Warning edges (`WarningRaised`, `WarningCleared` JSON) for `sla.warnings`, by tenant.
    warnings: list[tuple[bytes, bytes]] = field(default_factory=list)
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
    #: The errors the scored forecasts' models made on their holdouts, in expectation:
    #: each scored forecast adds its model's holdout error rate.
    forecast_holdout_errors: float = 0.0
    #: Forecasts that were not finite: neither published nor scored.
    forecasts_non_finite: int = 0
    #: Fresh warnings raised, the reasons of the clears sent, and false warnings that
    #: became known (a notification with no breach in the 12 intervals after it).
    warnings_raised: int = 0
    warnings_cleared: list[str] = field(default_factory=list)
    false_warnings: int = 0
    #: Per partition with fresh records: the offset to commit once the outputs are
    #: delivered (one past the batch's last record of it) ...
    next_offsets: dict[int, int] = field(default_factory=dict)
    #: ... and the offset a restart must replay from to rebuild its windows (at most
    #: that next offset): what the partition's checkpoint records.
    replay_from: dict[int, int] = field(default_factory=dict)
