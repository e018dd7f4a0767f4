"""Recorded telemetry for `slaops backtest` tests: tenants interleaved in time, one file.

Small settings that keep a backtest in seconds: a one-candidate search on few epochs
(most windows this short give the rules' evidence only, and a rule goes live).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import SecretStr

from consumer.settings import ConsumerSettings
from retrainer.replay import TenantRows
from retrainer.settings import RetrainerSettings
from testkit.retrain_data import telemetry_messages

KEY = SecretStr("backtest-test-tenant-key-0123456789")
#: Two tenants, with incidents every this many events on average, one event a minute.
TENANTS = {"acme": 15.0, "globex": 25.0}
START_TS = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
SMALL_TRAINING: dict[str, Any] = {
    "grid": {"lr": [0.01], "module__hidden_layers": [0, 1], "module__width": [8]},
    "n_splits": 3,
    "max_epochs": 5,
    "patience": 2,
    "n_jobs": 1,
    "min_rows": 100,
}


def incidents(
    n: int, *, every: float, seed: int, shift_s: float = 0.0, drift_at: float = 0.6
) -> TenantRows:
    """Quiet telemetry with short incidents, each announced by a few events of rising p99.

    An interval breaches while its p99 is above 300 ms; incidents start at random (one
    every `every` events on average, never closer than 20 apart) and last 2-5 events.
    From `drift_at` of the events on, the service is slower (a drift).
    """
    rng = np.random.default_rng(seed)
    p99 = 120.0 + rng.normal(0.0, 12.0, n)
    at = 30
    while at < n - 10:
        ramp, length = int(rng.integers(3, 7)), int(rng.integers(2, 6))
        p99[at : at + ramp] += np.linspace(40.0, 170.0, ramp)[: len(p99[at : at + ramp])]
        p99[at + ramp : at + ramp + length] += 260.0
        at += ramp + length + 20 + int(rng.exponential(every))
    p99[int(drift_at * n) :] += 60.0  # the service gets slower: a data drift, more breaches
    p99 = np.clip(p99, 1.0, None)
    p50 = p99 / 3.0 + rng.normal(0.0, 2.0, n).clip(-5, 5)
    features = np.column_stack(
        [p50, p99 / 1.6, p99, np.full(n, 0.01), 0.3 + 0.001 * p99.clip(0, 500), np.full(n, 200.0)]
    ).astype(np.float32)
    ts = START_TS + shift_s + 60.0 * np.arange(n)
    return TenantRows(ts=ts, features=features, labels=p99 > 300.0, other_tenants=0, invalid=0)


def recorded(
    n_events: int, *, shift_s: float = 0.0, drift_at: float = 0.6
) -> list[tuple[bytes, bytes]]:
    """`TENANTS`' events as (key, value) messages in time order (`shift_s` later)."""
    streams = []
    for k, (tenant, every) in enumerate(TENANTS.items()):
        rows = incidents(n_events, every=every, seed=k + 3, shift_s=shift_s + k, drift_at=drift_at)
        streams.append(telemetry_messages(tenant, rows))
    merged = [m for pair in zip(*streams, strict=True) for m in pair]
    stamps = [json.loads(value)["ts"] for _key, value in merged]
    assert stamps == sorted(stamps), "the input must be in time order"
    return merged


def write_input(path: Path, messages: list[tuple[bytes, bytes]]) -> Path:
    path.write_bytes(b"".join(value + b"\n" for _key, value in messages))
    return path


def settings(**tuning: Any) -> tuple[ConsumerSettings, RetrainerSettings]:
    """The two services' settings for a backtest (no broker: none is named)."""
    consumer = ConsumerSettings(tenant_key=KEY, **tuning.pop("consumer", {}))
    retrainer = RetrainerSettings(tenant_key=KEY, **{**SMALL_TRAINING, **tuning})
    return consumer, retrainer


def differences(ours: list[bytes], theirs: list[bytes]) -> list[tuple[Any, Any]]:
    """The forecast lines that differ, revisions named by tenant and version (two stores
    differ in revision ids only) and probabilities within 2e-6 (the last bit of a float32
    forward depends on its batch's size, which the rounding to 6 decimals can show)."""

    def key(line: bytes) -> tuple[dict[str, Any], float]:
        document = json.loads(line)
        document["model_revision"] = f"{document['tenant']}@{document['model_version']}"
        return document, document.pop("probability")

    if len(ours) != len(theirs):
        return [(len(ours), len(theirs))]
    out = []
    for a, b in zip(map(key, ours), map(key, theirs), strict=True):
        if a[0] != b[0] or abs(a[1] - b[1]) > 2e-6:
            out.append((a, b))
    return out
