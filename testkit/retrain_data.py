"""Learnable synthetic telemetry rows for retrainer tests and benchmarks: breaches follow p99
latency (`bench/` imports this module too)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from retrainer.replay import TenantRows
from schemas import RetrainRequested, retrain_event_id

START_TS = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


def tenant_rows(n: int = 600, *, seed: int = 0, threshold_ms: float = 200.0) -> TenantRows:
    rng = np.random.default_rng(seed)
    load = 0.5 + 0.4 * np.sin(np.arange(n) * 2 * np.pi / 96) + rng.normal(0, 0.1, n)
    p50 = 40 + 60 * load.clip(0) + rng.normal(0, 5, n)
    p99 = p50 * 2.5 + rng.normal(0, 10, n)
    features = np.column_stack(
        [p50, p50 * 1.8, p99, (0.01 + 0.02 * load).clip(0, 1), load.clip(0, 1), 200 + 100 * load]
    ).astype(np.float32)
    labels = np.roll(p99 > threshold_ms, -1)  # the next interval breaches after high latency
    return TenantRows(
        ts=START_TS + 60.0 * np.arange(n),
        features=features,
        labels=labels,
        other_tenants=0,
        invalid=0,
    )


def window_from_load(
    load: np.ndarray, rng: np.random.Generator, *, breach_quantile: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(ts, features, labels)` of one tenant whose metrics follow `load`, one row a minute.

    A breach is a p99 latency above its `breach_quantile`; `rng` draws the metric noise.
    """
    n_rows = len(load)
    p50 = np.exp(3.5 + 0.3 * load + rng.normal(0, 0.1, n_rows))
    p95 = p50 * np.exp(0.8 + 0.2 * rng.normal(size=n_rows))
    p99 = np.exp(5.0 + 0.6 * load + rng.normal(0, 0.15, n_rows))
    errors = np.clip(0.01 + 0.01 * np.maximum(load, 0) + rng.normal(0, 0.003, n_rows), 0, 1)
    cpu = np.clip(0.5 + 0.1 * load + rng.normal(0, 0.05, n_rows), 0, 1)
    rps = np.exp(6 + rng.normal(0, 0.2, n_rows))
    features = np.stack([p50, p95, p99, errors, cpu, rps], axis=1)
    labels = p99 > np.quantile(p99, breach_quantile)
    return 1.7e9 + 60.0 * np.arange(n_rows), features, labels


def request_for(tenant: str, offset: int = 599, reason: str = "cold_start") -> RetrainRequested:
    return RetrainRequested.model_validate(
        {
            "event_id": retrain_event_id(tenant, reason, "sla.telemetry", 0, offset),  # type: ignore[arg-type]
            "tenant": tenant,
            "reason": reason,
            "detector": "cold_start",
            "detected_at": datetime(2026, 11, 2, tzinfo=UTC),
            "source": [
                {
                    "topic": "sla.telemetry",
                    "partition": 0,
                    "start_offset": 0,
                    "end_offset": offset + 1,
                }
            ],
            "n_events": offset + 1,
        },
        strict=False,
    )


def telemetry_messages(tenant: str, rows: TenantRows) -> list[tuple[bytes, bytes]]:
    """The rows as the (key, value) messages a producer would send."""
    import json

    from schemas import FEATURES

    out = []
    for ts, features, label in zip(rows.ts, rows.features, rows.labels, strict=True):
        event: dict[str, Any] = {
            "tenant": tenant,
            "ts": datetime.fromtimestamp(float(ts), UTC).isoformat(),
            "service": "api",
            **{name: float(value) for name, value in zip(FEATURES, features, strict=True)},
            "sla_breached": bool(label),
        }
        event["error_rate"] = min(1.0, max(0.0, event["error_rate"]))
        event["cpu_util"] = min(1.0, max(0.0, event["cpu_util"]))
        out.append((tenant.encode(), json.dumps(event).encode()))
    return out


#: Two candidates of one small shape: the least grid that still has a winner.
TINY_GRID: dict[str, list[Any]] = {
    "lr": [1e-2, 3e-3],
    "module__hidden_layers": [1],
    "module__width": [16],
}


def synthetic(n_rows: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A daily load cycle plus persistent noise drives the metrics; a breach is a high p99."""
    rng = np.random.default_rng(seed)
    noise = np.zeros(n_rows)
    for t in range(1, n_rows):
        noise[t] = 0.8 * noise[t - 1] + rng.normal(0.0, 0.25)
    load = 1.2 * np.sin(2 * np.pi * np.arange(n_rows) / 48) + noise
    return window_from_load(load, rng, breach_quantile=0.8)
