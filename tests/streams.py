"""Seeded telemetry streams for tests and benchmarks, as the raw bytes producers send."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

START = datetime(2026, 11, 1, tzinfo=UTC)


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
