"""The tenants a consumer holds: admission, probation, expiry, partitions, live models.

Memory is bounded by `max_tenants`, and the rule is: **a held tenant that keeps sending
is never evicted to make room for a newcomer.** Anyone can produce a key, so a flood of
junk tenants must not cost a real tenant its window (nor its detectors' state). At
capacity a newcomer is refused (dead-lettered, `tenant_capacity`); tenants leave by
idleness only, on the consumer's clock: `tenant_idle_s` without an event, or
`probation_idle_s` for one whose window is still shorter than `PROTECTED_EVENTS` (junk
keys go quickly). New tenants are also admitted at most `max_new_tenants_per_min`, an
optional allow-list (`tenant_allow`, a pattern) names who may be admitted at all, and
the operator's `tenant_admit` list is admitted whatever the bounds.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Container, Hashable, Iterable
from dataclasses import dataclass

from consumer.batch import NO_LABELS, NO_PROBA, PROTECTED_EVENTS, CoreConfig, TenantState
from consumer.detectors import DataDriftMonitor
from consumer.gate import RequestGate
from consumer.live_model import LiveModel
from consumer.performance import PerformanceMonitor
from consumer.recalibration import Recalibration
from consumer.stacked import ModelBank, architecture_key
from consumer.warnings import Edge, WarningState, end_warning
from consumer.window import TenantWindow
from schemas.telemetry import FEATURES, RejectReason
from schemas.warnings import ClearReason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a new tenant was not admitted: the dead letter's reason and detail."""

    reason: RejectReason
    detail: str


class TenantRegistry:
    """Every tenant this member holds, by name and by partition, and each one's live model.

    The newest live model of every tenant announced so far is kept, held or not, so a
    tenant that arrives (or comes back after an eviction) forecasts at once. Never
    touches Kafka; `admit` is the one way a tenant's state comes to be. A tenant whose
    warning is on when its model is swapped or it leaves (expired, its partition
    dropped) has the warning cleared: the clears wait in `take_warnings`.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._tenants: OrderedDict[str, TenantState] = OrderedDict()
        #: Tenants whose window is still shorter than `PROTECTED_EVENTS`, oldest first.
        self._probation: OrderedDict[str, None] = OrderedDict()
        self._by_partition: dict[int, set[str]] = {}
        self._models: dict[str, LiveModel] = {}
        #: Every live model's weights, stored once per architecture (`consumer.stacked`),
        #: and the slot each tenant's model holds there.
        self._banks: dict[Hashable, ModelBank] = {}
        self._slots: dict[str, tuple[ModelBank, int]] = {}
        #: Tenants expired for idleness, and newcomers refused, since the start.
        self.expired = 0
        self.refused = 0
        #: The admission rate's token bucket (`max_new_tenants_per_min`), on `now`.
        self._tokens = float(config.max_new_tenants_per_min)
        self._tokens_at: float | None = None
        self._allowed = None if config.tenant_allow is None else re.compile(config.tenant_allow)
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
        bank = self._banks.setdefault(architecture_key(model), ModelBank())
        bank.adopt(model)
        held = self._slots.get(model.tenant)
        if current is not None and held is not None:
            held[0].release(held[1], current)  # after adopting: the new may read the old
        assert model.stored is not None  # noqa: S101 - `adopt` just set it
        self._slots[model.tenant] = model.stored  # one (bank, slot) tuple, the model's
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

    # -- admission and expiry -------------------------------------------------------
    def admit(
        self, tenant: str, partition: int, *, now: float | None = None, replayed: bool = False
    ) -> TenantState | Refusal:
        """The tenant's state (new if it was not held), or why a new tenant is refused.

        A held tenant is never refused and never evicted for a newcomer: tenants leave
        by idleness only (`expire`). A newcomer is refused when the allow-list does not
        name it, when `max_tenants` are held, or when `max_new_tenants_per_min` were
        admitted in the last minute of `now` (records replayed after a restart are not
        newcomers: their tenant was admitted before). The tenants of `tenant_admit`, the
        operator's list, are always admitted, beyond `max_tenants`. The caller checks
        the partition (`bound_partition`) first: a state's partition never changes.
        """
        state = self._tenants.get(tenant)
        if state is not None:
            self._tenants.move_to_end(tenant)
            if tenant in self._probation:
                self._probation.move_to_end(tenant)
            if now is not None:
                state.seen_at = now
            return state
        cfg = self.config
        if tenant not in cfg.tenant_admit:
            refusal = self._refusal(tenant, now, replayed)
            if refusal is not None:
                self.refused += 1
                return refusal
        state = TenantState(
            tenant=tenant,
            partition=partition,
            window=TenantWindow(cfg.window_max_events, cfg.window_span_s, len(FEATURES)),
            drift=DataDriftMonitor(cfg.drift),
            gate=RequestGate(cfg.cooldown_s, cfg.request_timeout_s),
            seen_at=now,
        )
        self._tenants[tenant] = state
        self._by_partition.setdefault(partition, set()).add(tenant)
        model = self._models.get(tenant)
        if model is not None:
            self._attach(state, model)
        self._probation[tenant] = None
        return state

    def _refusal(self, tenant: str, now: float | None, replayed: bool) -> Refusal | None:
        cfg = self.config
        if self._allowed is not None and self._allowed.fullmatch(tenant) is None:
            return Refusal(
                RejectReason.TENANT_NOT_ALLOWED,
                f"tenant {tenant[:80]!r} does not match tenant_allow {cfg.tenant_allow!r}",
            )
        admitted = len(self._tenants) - sum(1 for t in cfg.tenant_admit if t in self._tenants)
        if admitted >= cfg.max_tenants:
            return Refusal(
                RejectReason.TENANT_CAPACITY,
                f"{admitted} tenants held, max_tenants={cfg.max_tenants}: a new tenant is "
                f"admitted when one has been idle for tenant_idle_s={cfg.tenant_idle_s:g}",
            )
        if now is None or replayed or cfg.max_new_tenants_per_min <= 0:
            return None
        rate = cfg.max_new_tenants_per_min / 60.0
        if self._tokens_at is not None:
            elapsed = max(0.0, now - self._tokens_at)
            self._tokens = min(float(cfg.max_new_tenants_per_min), self._tokens + elapsed * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return Refusal(
                RejectReason.TENANT_CAPACITY,
                f"over max_new_tenants_per_min={cfg.max_new_tenants_per_min}: "
                "new tenants are admitted more slowly than this consumer can be flooded",
            )
        self._tokens -= 1.0
        return None

    def protect(self, state: TenantState) -> None:
        """End the tenant's probation once its window holds `PROTECTED_EVENTS` events."""
        if len(state.window) >= PROTECTED_EVENTS:
            self._probation.pop(state.tenant, None)

    def expire(self, now: float | None, present: Container[str] = ()) -> int:
        """Forget the tenants idle for `tenant_idle_s` of `now` (on probation: for
        `probation_idle_s`); how many. The only way a held tenant leaves, but for its
        partition leaving this member. Tenants in `present` (the batch's) stay."""
        if now is None:
            return 0
        cfg, gone = self.config, 0
        for queue, idle_s in (
            (self._probation, cfg.probation_idle_s),
            (self._tenants, cfg.tenant_idle_s),
        ):
            while queue:
                tenant = next(iter(queue))
                state = self._tenants[tenant]
                if state.seen_at is None or now - state.seen_at <= idle_s:
                    break
                if tenant in present:  # seen now: to the back, as its admission will
                    state.seen_at = now
                    queue.move_to_end(tenant)
                    self._tenants.move_to_end(tenant)
                    continue
                log.debug("tenant=%s idle since %.0f: expired", tenant, state.seen_at)
                self._forget(tenant)
                gone += 1
        self.expired += gone
        return gone

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
