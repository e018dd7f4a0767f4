"""Daily cycles are not drift: the data monitor compares like hour with like hour."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from consumer.core import IngestCore
from consumer.detectors import SEASON_BINS, SEASON_S, DataDriftMonitor, DriftConfig, SeasonalProfile
from consumer.main import core_config
from consumer.settings import ConsumerSettings
from schemas import RetrainRequested
from simulator.model import DriftPlan, TelemetrySimulator
from testkit.streams import RawRecord

HOURS = 72
TENANTS = 4


def _requests(simulator: TelemetrySimulator, **settings: object) -> list[RetrainRequested]:
    """The data-drift requests of `slaops consume`'s core (default settings but these)."""
    core = IngestCore(core_config(ConsumerSettings(cold_start=False, **settings)))  # type: ignore[arg-type]
    events = simulator.events(HOURS * 60)
    recs = [RawRecord(key, value, 0, i) for i, (key, value, _meta) in enumerate(events)]
    found = []
    for lo in range(0, len(recs), 4_000):
        for request in core.process(recs[lo : lo + 4_000]).requests:
            core.resolve(request.tenant, request.event_id)
            found.append(request)
    return [r for r in found if r.reason == "data_drift"]


def test_three_days_of_daily_cycles_raise_no_data_drift_and_a_level_shift_does() -> None:
    calm = TelemetrySimulator(TENANTS, 7)
    assert _requests(calm) == []
    # Compared with one reference, the cycle itself reads as drift, over and over.
    assert len(_requests(calm, drift_seasonal=False)) >= TENANTS
    # Latencies 1.6 times higher from hour 50 (day 3) on: found within 6 hours.
    change = 50 * 60
    shifted = TelemetrySimulator(TENANTS, 7, drifts=[DriftPlan(1, change, "data", 1.0)])
    (request,) = _requests(shifted)
    assert request.tenant == shifted.tenants[1]
    delay = request.detected_at - shifted.event_time(change)
    assert timedelta(0) <= delay <= timedelta(hours=6)
    assert {"latency_p50_ms", "latency_p95_ms"} <= set(request.details.features)


def test_no_data_drift_is_raised_before_the_profile_covers_a_day() -> None:
    monitor = DataDriftMonitor(DriftConfig())
    rng = np.random.default_rng(3)
    ts = 1.77e9 + 60.0 * np.arange(1_430)
    rows = rng.normal(100.0, 1.0, (1_430, 6))
    rows[700:] += 50.0  # a shift that a plain reference would catch at once
    assert monitor.update(rows, ts) == []
    plain = DataDriftMonitor(DriftConfig(drift_seasonal=False))
    assert len(plain.update(rows)) == 1


def test_a_telemetry_gap_keeps_the_profile_learning_until_every_hour_is_seen() -> None:
    profile = SeasonalProfile(1)
    hours = np.arange(0.0, 3 * 86_400, 300.0)
    seen = hours[(hours % 86_400 < 3 * 3_600) | (hours % 86_400 >= 4 * 3_600)]  # no 03:00
    taken = profile.learn(np.ones((len(seen), 1)), seen, 10)
    assert taken == len(seen) and not profile.ready


def test_the_profile_sums_each_hour_and_feature_in_event_order_bit_for_bit() -> None:
    """The accumulators are what adding each event to its (hour, feature) cell, one by
    one in event order, gives: however the events come in blocks."""
    rng = np.random.default_rng(4)
    ts = 1.7e9 + np.cumsum(rng.uniform(30, 600, 300))
    rows = (rng.random((300, 6)) * 500).astype(np.float32)
    profile = SeasonalProfile(6)
    start = 0
    while start < len(ts):
        stop = start + int(rng.integers(1, 40))
        profile._add(rows[start:stop], ts[start:stop])
        start = stop
    sums = [[0.0] * 6 for _ in range(SEASON_BINS)]
    squares = [[0.0] * 6 for _ in range(SEASON_BINS)]
    for t, row in zip(ts.tolist(), rows.tolist(), strict=True):
        hour = int((t % SEASON_S) // (SEASON_S / SEASON_BINS)) % SEASON_BINS
        for j, value in enumerate(row):
            sums[hour][j] += value
            squares[hour][j] += value * value
    assert profile._sum.tolist() == sums
    assert profile._sumsq.tolist() == squares
