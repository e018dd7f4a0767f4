"""The tenants a consumer holds: admission, probation, eviction, partitions, live models.

Memory is bounded by `max_tenants`. A new tenant starts on probation until its window
holds `PROTECTED_EVENTS` events; beyond the bound the oldest tenant on probation goes
first, else the least recently active, so a flood of one-event tenants (junk keys, a
misconfigured producer) churns only itself and never evicts a real tenant's window.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

from consumer.batch import NO_LABELS, NO_PROBA, PROTECTED_EVENTS, CoreConfig, TenantState
from consumer.detectors import DataDriftMonitor
from consumer.gate import RequestGate
from consumer.live_model import LiveModel
from consumer.performance import PerformanceMonitor
from consumer.recalibration import Recalibration
from consumer.warnings import Edge, WarningState, end_warning
from consumer.window import TenantWindow
from schemas.telemetry import FEATURES
from schemas.warnings import ClearReason

log = logging.getLogger(__name__)


class TenantRegistry:
    """Every tenant this member holds, by name and by partition, and each one's live model.

    The newest live model of every tenant announced so far is kept, held or not, so a
    tenant that arrives (or comes back after an eviction) forecasts at once. Never
    touches Kafka; `admit` is the one way a tenant's state comes to be. A tenant whose
    warning is on when its model is swapped or it leaves (evicted, moved, its partition
    dropped) has the warning cleared: the clears wait in `take_warnings`.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._tenants: OrderedDict[str, TenantState] = OrderedDict()
        #: Tenants whose window is still shorter than `PROTECTED_EVENTS`, oldest first.
        self._probation: OrderedDict[str, None] = OrderedDict()
        self._by_partition: dict[int, set[str]] = {}
        self._models: dict[str, LiveModel] = {}
        #: Tenants evicted to stay within `max_tenants`, since the start.
        self.evicted = 0
        self._cleared: list[Edge] = []

    def __len__(self) -> int:
        return len(self._tenants)

    def get(self, tenant: str) -> TenantState | None:
        return self._tenants.get(tenant)

    def states(self) -> Iterable[TenantState]:
        return self._tenants.values()

    # -- live models ----------------------------------------------------------------
    def model(self, tenant: str) -> LiveModel | None:
        return self._models.get(tenant)

    def apply_model(self, model: LiveModel) -> bool:
        """Make `model` its tenant's live model unless it holds one as new; True if it did."""
        current = self._models.get(model.tenant)
        if current is not None and current.version >= model.version:
            return False
        self._models[model.tenant] = model
        state = self._tenants.get(model.tenant)
        if state is not None:
            self._attach(state, model)
        return True

    def _attach(self, state: TenantState, model: LiveModel) -> None:
        self._clear(state, "model_swapped")
        state.model = model
        state.performance = PerformanceMonitor.for_card(self.config.performance, model.card)
        state.pending_proba = NO_PROBA
        state.pending_labels = NO_LABELS
        state.recalibration = Recalibration(self.config.recalibration_events)
        state.warning = WarningState()
        state.alarm = None

    # -- warnings cleared outside a block -------------------------------------------
    def _clear(self, state: TenantState, reason: ClearReason) -> None:
        edge = end_warning(state, reason)
        if edge is not None:
            self._cleared.append(edge)

    def take_warnings(self) -> list[Edge]:
        """The clears of warnings whose model was swapped or whose tenant left, oldest first."""
        cleared, self._cleared = self._cleared, []
        return cleared

    # -- admission and eviction -----------------------------------------------------
    def admit(self, tenant: str, partition: int) -> TenantState:
        """The tenant's state, new (on probation) if it was not held or changed partition."""
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
        if state is not None:
            self._tenants.move_to_end(tenant)
            if tenant in self._probation:
                self._probation.move_to_end(tenant)
            return state
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
        return state

    def protect(self, state: TenantState) -> None:
        """End the tenant's probation once its window holds `PROTECTED_EVENTS` events."""
        if len(state.window) >= PROTECTED_EVENTS:
            self._probation.pop(state.tenant, None)

    def _evict(self, keep: str) -> None:
        """Drop one tenant: the oldest still on probation, else the least recently active."""
        victim = next((t for t in self._probation if t != keep), None)
        if victim is None:
            victim = next(t for t in self._tenants if t != keep)
        log.debug("tenant=%s evicted", victim)
        self._forget(victim)
        self.evicted += 1

    def _forget(self, tenant: str) -> None:
        self._probation.pop(tenant, None)
        state = self._tenants.pop(tenant)
        self._clear(state, "tenant_left")
        members = self._by_partition.get(state.partition)
        if members is not None:
            members.discard(tenant)
            if not members:
                del self._by_partition[state.partition]

    # -- partitions -----------------------------------------------------------------
    def replay_start(self, partition: int) -> int | None:
        """Oldest offset any held window of `partition` still needs, if any."""
        offsets = [
            self._tenants[t].window.oldest_offset for t in self._by_partition.get(partition, ())
        ]
        present = [o for o in offsets if o is not None]
        return min(present) if present else None

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the tenants of `partitions` (revoked or lost); how many there were.

        Their warnings are NOT cleared: they move with the partition. The next owner's
        replay rebuilds each one as on, under the same id, and ends it when the risk
        passes; a clear here would end a page the tenant still needs, with nothing to
        raise it again (a replay sends nothing).
        """
        dropped = 0
        for partition in partitions:
            for tenant in sorted(self._by_partition.pop(partition, set())):
                del self._tenants[tenant]
                self._probation.pop(tenant, None)
                dropped += 1
        return dropped
