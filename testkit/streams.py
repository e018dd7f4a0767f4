"""Seeded telemetry for tests and benchmarks (`bench/` imports this module too).

Raw bytes as producers send them (`telemetry_values`, `telemetry_bytes`) and metric
matrices as a window stores them (`telemetry_matrix`), all seeded; `first_drift` feeds
a matrix to a data-drift monitor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from scipy.signal import lfilter

from consumer.detectors import DataDriftMonitor, DriftSignal
from schemas.telemetry import FEATURES

START = datetime(2026, 11, 1, tzinfo=UTC)
#: Realistic scales of latency_p50_ms, latency_p95_ms, latency_p99_ms, error_rate,
#: cpu_util and rps: the means and standard deviations of `telemetry_matrix`.
MEANS = np.array([100.0, 180.0, 250.0, 0.01, 0.5, 200.0])
SDS = np.array([10.0, 20.0, 30.0, 0.003, 0.05, 20.0])


@dataclass(frozen=True, slots=True)
class RawRecord:
    """What the consumer core reads of a Kafka message."""

    key_: bytes | None
    value_: bytes | None
    partition_: int
    offset_: int
    topic_: str = "sla.telemetry"

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def topic(self) -> str:
        return self.topic_

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


def telemetry_values(
    tenant: str,
    n: int,
    *,
    seed: int,
    shift_at: int | None = None,
    start_index: int = 0,
    interval_s: float = 60.0,
) -> list[bytes]:
    """`n` events of one tenant; from `shift_at` on, latencies and errors jump."""
    rng = np.random.default_rng(seed)
    values = []
    for i in range(start_index, start_index + n):
        shifted = shift_at is not None and i >= shift_at
        p50 = max(1.0, rng.normal(80.0 if shifted else 40.0, 4.0))
        err = float(np.clip(rng.normal(0.08 if shifted else 0.01, 0.004), 0, 1))
        cpu = float(np.clip(rng.normal(0.5, 0.05), 0, 1))
        breached = bool(rng.random() < (0.5 if shifted else 0.1))
        event = {
            "tenant": tenant,
            "ts": (START + timedelta(seconds=i * interval_s)).isoformat(),
            "service": "api",
            "latency_p50_ms": round(p50, 3),
            "latency_p95_ms": round(p50 * 2.0 + rng.normal(0, 2), 3),
            "latency_p99_ms": round(p50 * 3.0 + rng.normal(0, 3), 3),
            "error_rate": round(err, 5),
            "cpu_util": round(cpu, 4),
            "rps": round(max(0.0, rng.normal(200.0, 10.0)), 2),
            "sla_breached": breached,
        }
        values.append(json.dumps(event).encode())
    return values


def interleave(streams: dict[str, list[bytes]]) -> list[tuple[str, bytes]]:
    """Round-robin the tenants' streams into one (tenant, value) sequence."""
    out: list[tuple[str, bytes]] = []
    longest = max(len(v) for v in streams.values())
    for i in range(longest):
        for tenant, values in streams.items():
            if i < len(values):
                out.append((tenant, values[i]))
    return out


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


def telemetry_matrix(n: int, seed: int, phi: float = 0.0) -> np.ndarray:
    """`n` rows of the six metrics at `MEANS` +- `SDS`, float32 as the window stores them.

    With `phi` > 0 the noise is AR(1) with that coefficient (closer to real telemetry).
    """
    noise = np.random.default_rng(seed).normal(size=(n, len(FEATURES)))
    if phi:
        noise = lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], noise, axis=0)
    return np.clip(MEANS + SDS * noise, 0.0, None).astype(np.float32)


def first_drift(monitor: DataDriftMonitor, features: np.ndarray) -> DriftSignal | None:
    """Feed `features` (n, 6) to `monitor`; the first confirmed drift in them, if any."""
    signals = monitor.update(features)
    return signals[0] if signals else None
