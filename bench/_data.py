"""Synthetic telemetry for benchmarks: many tenants, realistic bytes, seeded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np

START = datetime(2026, 11, 1, tzinfo=UTC)


def telemetry_bytes(n_events: int, n_tenants: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs, tenants round-robin, one event per tenant per minute."""
    rng = np.random.default_rng(seed)
    p50 = rng.normal(40.0, 4.0, n_events).clip(1.0)
    err = rng.normal(0.01, 0.004, n_events).clip(0, 1)
    cpu = rng.normal(0.5, 0.05, n_events).clip(0, 1)
    rps = rng.normal(200.0, 10.0, n_events).clip(0)
    breach = rng.random(n_events) < 0.1
    tenants = [f"tenant-{i:05d}" for i in range(n_tenants)]
    out = []
    for i in range(n_events):
        tenant = tenants[i % n_tenants]
        event = {
            "tenant": tenant,
            "ts": (START + timedelta(minutes=i // n_tenants)).isoformat(),
            "service": "api",
            "latency_p50_ms": round(float(p50[i]), 3),
            "latency_p95_ms": round(float(p50[i]) * 2.0, 3),
            "latency_p99_ms": round(float(p50[i]) * 3.0, 3),
            "error_rate": round(float(err[i]), 5),
            "cpu_util": round(float(cpu[i]), 4),
            "rps": round(float(rps[i]), 2),
            "sla_breached": bool(breach[i]),
        }
        out.append((tenant.encode(), json.dumps(event).encode()))
    return out
