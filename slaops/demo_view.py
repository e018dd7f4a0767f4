"""What the demo shows: the live dashboard and the closing summary per tenant."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel
from rich.console import Group
from rich.table import Table

from kernel.columns import telemetry_columns
from kernel.model_authority import load_version
from kernel.store import ModelStore, PublishedFiles
from retrainer.dataset import pairs_for_model
from retrainer.errors import DatasetError
from retrainer.metrics import evaluate
from schemas import (
    ChampionKept,
    InvalidTelemetry,
    ModelPublished,
    RetrainFailed,
    RetrainRequested,
    TelemetryEvent,
    parse_telemetry,
)
from simulator.model import EventMeta, TelemetrySimulator


@dataclass
class TenantView:
    sent: int = 0
    requests: list[RetrainRequested] = field(default_factory=list)
    models: list[ModelPublished] = field(default_factory=list)
    kept: int = 0
    failed: int = 0
    search_started: float | None = None
    search_seconds: list[float] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)


class DemoState:
    """Fed by the watcher thread and the sender; read by the display."""

    def __init__(self, tenants: list[str]) -> None:
        self.lock = threading.Lock()
        self.tenants = {t: TenantView() for t in tenants}

    def ingested(self, tenant: str) -> None:
        with self.lock:
            self.tenants[tenant].sent += 1

    def on_event(self, event: BaseModel) -> None:
        with self.lock:
            view = self.tenants.get(getattr(event, "tenant", None) or "")
            if view is None:
                return
            if isinstance(event, RetrainRequested):
                view.requests.append(event)
                view.search_started = view.search_started or time.monotonic()
                return
            answered = getattr(event, "request_event_id", None)
            if answered is not None:
                view.answered.add(answered)
            if isinstance(event, ModelPublished):
                view.models.append(event)
            elif isinstance(event, ChampionKept):
                view.kept += 1
            elif isinstance(event, RetrainFailed):
                view.failed += 1
            if view.search_started is not None:
                view.search_seconds.append(time.monotonic() - view.search_started)
                view.search_started = None

    def all_answered(self) -> bool:
        """Each tenant's newest request has its answer (a model, a kept champion or a
        failure); older ones may have been coalesced into it."""
        with self.lock:
            return all(
                not v.requests or v.requests[-1].event_id in v.answered
                for v in self.tenants.values()
            )

    def models_of(self, tenant: str) -> list[ModelPublished]:
        with self.lock:
            return list(self.tenants[tenant].models)


def dashboard(state: DemoState, stats: dict[str, object], phase: str) -> Group:
    table = Table(title=f"slaops demo: {phase}")
    for column in ("tenant", "events sent", "retrain requests", "search", "models", "live model"):
        table.add_column(column)
    with state.lock:
        for tenant, view in state.tenants.items():
            latest = view.models[-1] if view.models else None
            table.add_row(
                tenant,
                f"{view.sent:,}",
                ", ".join(r.reason for r in view.requests) or "-",
                "running" if view.search_started is not None else "-",
                str(len(view.models)),
                "-"
                if latest is None
                else (f"v{latest.model_version} oof f1={latest.metrics.get('f1', 0.0):.3f}"),
            )
    totals = "   ".join(
        f"{name}: {value:,}" if isinstance(value, int) else f"{name}: {value}"
        for name, value in stats.items()
    )
    return Group(table, totals)


def _columns(events: list[tuple[bytes, bytes, EventMeta]]) -> tuple[np.ndarray, ...]:
    def valid() -> Iterator[TelemetryEvent]:
        for key, value, _meta in events:
            try:
                yield parse_telemetry(key, value)
            except InvalidTelemetry:
                continue

    columns = telemetry_columns(valid())
    return columns.ts, columns.features, columns.labels


def _f1_on(
    store: ModelStore, model: ModelPublished, events: tuple[np.ndarray, ...]
) -> float | None:
    """F1 of a published model on `events`, its inputs computed with ITS feature spec."""
    paths: dict[str, str] = {kind: path for kind, path in model.paths.items()}
    module, loaded = load_version(store, PublishedFiles(model.revision, paths))
    try:
        ts, features, labels = events
        data = pairs_for_model(
            ts,
            features,
            labels,
            horizon=loaded.horizon,
            spec=loaded.features,
            min_rows=50,
        )
    except DatasetError:
        return None
    return evaluate(module, data.X, data.y, loaded.threshold)["f1"]


def summary_rows(
    state: DemoState,
    simulator: TelemetrySimulator,
    evaluation: list[tuple[bytes, bytes, EventMeta]],
    store: ModelStore,
) -> list[dict[str, Any]]:
    """One row per tenant: the facts the demo set out to show, measured."""
    drifts = {d.tenant: d for d in simulator.schedule()}
    rows = []
    for tenant, view in state.tenants.items():
        drift = drifts.get(tenant)
        row: dict[str, Any] = {
            "tenant": tenant,
            "cold_start_f1": view.models[0].metrics.get("f1") if view.models else None,
            "drift_at_event": drift.at_event if drift else None,
            "detected_at_event": None,
            "requested_at_event": None,
            "retrain_reason": None,
            "requests": [r.reason for r in view.requests],
            "models": len(view.models),
            "search_s": round(max(view.search_seconds), 1) if view.search_seconds else None,
            "old_f1_post_drift": None,
            "new_f1_post_drift": None,
        }
        late = [r for r in view.requests if r.reason != "cold_start"]
        if late:
            first = late[0]
            requested = first.detected_at.timestamp()
            # A performance alarm waits `settle_events` before its request.
            alarm = first.details.statistic.get("alarm_ts", requested)
            row["detected_at_event"] = _event_index(simulator, alarm)
            row["requested_at_event"] = _event_index(simulator, requested)
            row["retrain_reason"] = first.reason
        mine = [e for e in evaluation if e[2].tenant == tenant]
        if view.models and mine:
            events = _columns(mine)
            row["old_f1_post_drift"] = _f1_on(store, view.models[0], events)
            if len(view.models) > 1:
                row["new_f1_post_drift"] = _f1_on(store, view.models[-1], events)
        rows.append(row)
    return rows


def _event_index(simulator: TelemetrySimulator, ts: float) -> int:
    return round((ts - simulator.start.timestamp()) / simulator.interval_s)


def summary_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="slaops demo: summary",
        caption="events are counted per tenant; F1* is on post-drift rows no model has seen",
    )
    headers = {
        "tenant": "tenant",
        "cold_start_f1": "cold-start\nOOF F1",
        "drift_at_event": "drift\nat",
        "detected_at_event": "alarm\nat",
        "delay": "delay",
        "requested_at_event": "request\nat",
        "retrain_reason": "retrained\nfor",
        "search_s": "request to\nmodel (s)",
        "old_f1_post_drift": "old\nF1*",
        "new_f1_post_drift": "new\nF1*",
    }
    for key, title in headers.items():
        table.add_column(title, no_wrap=True, justify="left" if key == "tenant" else "right")
    for row in rows:
        delay = None
        if row["drift_at_event"] is not None and row["detected_at_event"] is not None:
            delay = row["detected_at_event"] - row["drift_at_event"]
        cells = {**row, "delay": delay}
        cells["search_s"] = None if row["search_s"] is None else f"{row['search_s']:.1f}"
        table.add_row(*(_cell(cells[key]) for key in headers))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
