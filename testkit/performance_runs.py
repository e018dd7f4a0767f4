"""Seeded simulator streams through the pure consumer core with real trained models.

Measures the performance monitor as the product runs it: each tenant's model is trained
by the retrainer's own pipeline on the tenant's first `train_events`, goes live after
`live_at` events (the events before it are processed without a model, as a backlog is),
and every `performance_drift` request the core makes is counted. Used by
tests/consumer/test_performance_monitor.py and meant for bench/ (a quality benchmark can print
`performance_runs(...)` per stream).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from consumer.core import CoreConfig, IngestCore
from consumer.live_model import LiveModel
from consumer.performance import PerformanceConfig
from kernel.artifacts import load_model
from retrainer.pipeline import TrainingConfig, train_and_decide
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from schemas import FEATURES, RetrainRequested
from simulator.model import DriftPlan, TelemetrySimulator
from testkit.retrain_data import request_for
from testkit.streams import RawRecord

#: A small, fast search: one candidate, as tests/consumer/test_live_models.py trains.
SMALL_SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [0, 1], "module__width": [16]},
    n_jobs=1,
    max_epochs=30,
    n_splits=3,
)
TOPIC = "sla.telemetry"
#: From a tenant's `edge_lost` event on, each event breaches with this chance, whatever
#: its metrics and past: no forecaster has an edge any more.
BREACH_COIN = 0.06


@dataclass(frozen=True)
class MonitorRun:
    """One tenant's performance requests, against where its stream changed (if it did)."""

    tenant: str
    change_at: int | None
    #: Event index (in the tenant's stream) of each performance alarm.
    alarms: tuple[int, ...]
    requests: tuple[RetrainRequested, ...]

    @property
    def false_alarms(self) -> int:
        """Alarms before the change (every alarm, on a tenant that never changed)."""
        return sum(1 for a in self.alarms if self.change_at is None or a < self.change_at)

    @property
    def delay(self) -> int | None:
        """Events from the change to the first alarm at or after it; None if none."""
        if self.change_at is None:
            return None
        late = [a - self.change_at for a in self.alarms if a >= self.change_at]
        return late[0] if late else None


def train_live_model(
    tenant: str, rows: TenantRows, search: SearchConfig = SMALL_SEARCH
) -> LiveModel:
    """A real model, trained by the retrainer's pipeline on `rows` and loaded safely."""
    outcome = train_and_decide(rows, request_for(tenant), TrainingConfig(search=search), None)
    if outcome.artifacts is None:  # the gate refused it: the product would not run it either
        decision = outcome.decision
        raise AssertionError(
            f"{tenant}: no live model, the gate refused it ({decision.verdict}, "
            f"{decision.baseline}: {decision.detail})"
        )
    module, card = load_model(outcome.artifacts.card, outcome.artifacts.safetensors, "safetensors")
    return LiveModel(tenant, "0" * 40, 1, "0" * 32, module, card)


def performance_runs(
    seed: int,
    n_tenants: int = 4,
    n_events: int = 6_000,
    *,
    drifts: Sequence[DriftPlan] = (),
    edge_lost: Mapping[int, int] | None = None,
    train_events: int = 2_880,
    live_at: int = 2_880,
    performance: PerformanceConfig | None = None,
    batch: int = 2_000,
) -> dict[str, MonitorRun]:
    """Run a simulator stream through the core; per tenant, its performance alarms.

    Models train on two days (`train_events` of one-minute events): trained on one, the
    v2 features' networks fitted that day's hours and lost their record on the next.

    `edge_lost` maps a tenant index to the event from which its breach labels are coin
    flips (`BREACH_COIN`), independent of its metrics and its past. (An inverted rule,
    or a simulator concept drift that lowers the thresholds, no longer hurts: the
    v2 features' breach rates and run lengths follow the labels, and the forecasts
    stay good.) Data drift and cold starts are off and every alarm becomes a
    request (no cooldown, no request in flight), so each alarm is counted.
    """
    edge_lost = dict(edge_lost or {})
    coins = np.random.default_rng(seed + 1)
    sim = TelemetrySimulator(n_tenants, seed, drifts=drifts)
    records: list[tuple[int, RawRecord]] = []
    rows: dict[str, list[tuple[float, list[float], bool]]] = {t: [] for t in sim.tenants}
    for key, value, meta in sim.events(n_events):
        event = json.loads(value)
        lost_at = edge_lost.get(sim.tenants.index(meta.tenant))
        if lost_at is not None and meta.index >= lost_at:
            event["sla_breached"] = bool(coins.random() < BREACH_COIN)
            value = json.dumps(event).encode()
        ts = datetime.fromisoformat(event["ts"]).timestamp()
        rows[meta.tenant].append((ts, [event[f] for f in FEATURES], event["sla_breached"]))
        records.append((meta.index, RawRecord(key, value, 0, meta.position)))
    core = IngestCore(
        CoreConfig(
            telemetry_topic=TOPIC,
            data_drift=False,
            cold_start=False,
            cooldown_s=0.0,
            request_timeout_s=0.0,
            performance=performance or PerformanceConfig(),
        )
    )
    requests = list(core.process([r for i, r in records if i < live_at]).requests)
    for tenant, tenant_rows in rows.items():
        head = tenant_rows[:train_events]
        training = TenantRows(
            ts=np.array([r[0] for r in head]),
            features=np.array([r[1] for r in head], dtype=np.float32),
            labels=np.array([r[2] for r in head]),
            other_tenants=0,
            invalid=0,
        )
        core.apply_model(train_live_model(tenant, training))
    live = [r for i, r in records if i >= live_at]
    for start in range(0, len(live), batch):
        requests += core.process(live[start : start + batch]).requests
    changes = {sim.tenants[t]: at for t, at in edge_lost.items()}
    for plan in drifts:
        name = plan.tenant if isinstance(plan.tenant, str) else sim.tenants[plan.tenant]
        changes[name] = min(plan.at_event, changes.get(name, plan.at_event))
    start_ts = sim.event_time(0).timestamp()
    out = {}
    for tenant in sim.tenants:
        mine = tuple(r for r in requests if r.tenant == tenant and r.reason == "performance_drift")
        alarms = tuple(
            round((r.details.statistic["alarm_ts"] - start_ts) / sim.interval_s) for r in mine
        )
        out[tenant] = MonitorRun(tenant, changes.get(tenant), alarms, mine)
    return out
