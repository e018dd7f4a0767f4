"""A live forecaster judged against its own out-of-fold record (issue 21, item 7).

Oracle tests: outcomes drawn at the rate the record says are the null (no excess, no
alarm); outcomes whose odds doubled are a change the calibration watch must see;
inverted outcomes are what the loss watch must see. Then, through the core, the
outcome a "within" forecast is scored against is a breach within its horizon.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.calibration import CalibrationWatch
from consumer.core import CoreConfig, IngestCore
from consumer.oof_reference import OutOfFoldReference
from consumer.performance import PerformanceConfig, PerformanceMonitor
from testkit.streams import RawRecord, telemetry_values
from testkit.tiny_models import tiny_live_model

#: A record as a card carries it: per bin, rows, mean forecast, observed rate.
TABLE = [
    {"lower": 0.0, "upper": 0.1, "n": 400.0, "mean_proba": 0.05, "observed_rate": 0.08},
    {"lower": 0.1, "upper": 0.2, "n": 200.0, "mean_proba": 0.15, "observed_rate": 0.12},
    {"lower": 0.3, "upper": 0.4, "n": 100.0, "mean_proba": 0.35, "observed_rate": 0.4},
    {"lower": 0.8, "upper": 0.9, "n": 300.0, "mean_proba": 0.85, "observed_rate": 0.9},
]


def reference() -> OutOfFoldReference:
    card = tiny_live_model("acme").card.model_copy(
        update={"target": "within", "calibration": TABLE, "metrics": {"log_loss": 0.4}}
    )
    found = OutOfFoldReference.of(card)
    assert found is not None
    return found


def forecasts(n: int, seed: int, odds: float = 1.0, from_: int = 0) -> tuple[np.ndarray, ...]:
    """Forecasts with a slow cycle, outcomes drawn at the record's rate (odds x `odds`
    from event `from_` on)."""
    rng = np.random.default_rng(seed)
    phase = np.sin(np.arange(n) * 2 * np.pi / 1_440) + rng.normal(0, 0.5, n)
    proba = np.clip(1 / (1 + np.exp(-(-1.5 + 2.0 * phase))), 0.02, 0.98)
    rate = reference().rate(proba)
    logit = np.log(rate / (1 - rate))
    logit[from_:] += np.log(odds)
    outcome = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return proba, outcome, rate


def test_the_reference_is_the_record_per_bin_and_the_promise_where_it_has_none() -> None:
    ref = reference()
    shrunk = (200 * 0.12 + 20 * 0.15) / 220  # the bin's rate, pulled toward its forecast
    assert ref.rate(np.array([0.15]))[0] == shrunk
    assert ref.rate(np.array([0.25, 0.95])).tolist() == [0.25, 0.95]  # unseen bins
    assert ref.log_loss == 0.4


def test_outcomes_at_the_records_rate_cost_what_the_record_says() -> None:
    proba, outcome, _rate = forecasts(200_000, seed=1)
    p = np.clip(proba, 0.01, 0.99)
    loss = -(outcome * np.log(p) + (1 - outcome) * np.log1p(-p))
    assert abs(float(np.mean(loss - reference().loss(proba, 0.01)))) < 0.005


def monitor() -> PerformanceMonitor:
    return PerformanceMonitor(PerformanceConfig(), {}, reference=reference(), outcome_span=6)


def test_a_forecaster_that_keeps_its_record_never_alarms() -> None:
    proba, outcome, _ = forecasts(100_000, seed=2)
    assert monitor().update(np.column_stack((proba, outcome))) == []


def test_breaches_coming_at_twice_the_odds_alarm_the_calibration_watch() -> None:
    # Each outcome 6 apart adds ~0.05 nats to the upper sum after the change: the
    # threshold of 12 takes ~240 of them, ~1,500 events (seeded: 1,642).
    proba, outcome, _ = forecasts(20_000, seed=4, odds=2.0, from_=5_000)
    (first, *_rest) = monitor().update(np.column_stack((proba, outcome)))
    assert first.features == ("calibration",) and first.index == 6_642
    assert first.statistic["calibration_direction"] == 1.0
    assert first.statistic["odds_ratio_at_go_live"] == 1.0  # the record held at go-live


def test_inverted_outcomes_alarm_the_loss_watch_soon() -> None:
    proba, outcome, _ = forecasts(20_000, seed=4)
    flipped = outcome.copy()
    flipped[5_000:] = 1 - flipped[5_000:]
    (first, *_rest) = monitor().update(np.column_stack((proba, flipped)))
    assert first.features == ("log_loss",) and 5_000 <= first.index < 5_400
    assert first.statistic["log_loss_recent"] > first.statistic["card_log_loss"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 3_000), min_size=1, max_size=6))
def test_any_split_into_blocks_gives_the_same_alarms(sizes: list[int]) -> None:
    proba, outcome, rate = forecasts(12_000, seed=5, odds=2.5, from_=3_000)
    whole = CalibrationWatch(8.0, 1_000, 6)
    expected, start = [], 0
    while (found := whole.first(outcome[start:], rate[start:])) is not None:
        expected.append(start + found)
        start += found + 1
    split, got, start = CalibrationWatch(8.0, 1_000, 6), [], 0
    for size in [*sizes, len(outcome)]:
        stop = min(start + size, len(outcome))
        lo = start
        while lo < stop and (found := split.first(outcome[lo:stop], rate[lo:stop])) is not None:
            got.append(lo + found)
            lo += found + 1
        start = stop
    assert got == expected and expected  # the change is seen, wherever the cuts fall


def test_through_the_core_a_within_forecast_is_scored_against_a_breach_within_it() -> None:
    """Breaches every 20th event: a 6-interval "within" outcome is a breach in 6 of 20.

    Whether `consumer.forecasting` scores the flag 6 events on (and the monitor
    regroups) or the outcome within itself, the monitor must see this rate, once.
    """
    model = tiny_live_model("acme")
    card = model.card.model_copy(
        update={"target": "within", "horizon": 6, "calibration": TABLE, "metrics": {}}
    )
    core = IngestCore(
        CoreConfig(
            telemetry_topic="sla.telemetry",
            cold_start=False,
            data_drift=False,
            performance=PerformanceConfig(performance_warmup=10**9),
        )
    )
    core.apply_model(replace(model, card=card))
    values = []
    for i, value in enumerate(telemetry_values("acme", 2_006, seed=7)):
        event = json.loads(value)
        event["sla_breached"] = i % 20 == 19
        values.append(json.dumps(event).encode())
    recs = [RawRecord(b"acme", v, 0, i) for i, v in enumerate(values)]
    for lo in range(0, len(recs), 97):
        core.process(recs[lo : lo + 97])
    state = core.tenant("acme")
    assert state is not None and state.performance is not None
    # 2,000 forecasts scored; the first 5 regrouped ones see fewer flags (no breach yet).
    assert state.performance.breach_rate == 600 / 2_000


def test_a_calibration_alarm_says_where_its_change_began() -> None:
    # Breaches at the record's rate for 3,000 outcomes, then at twice its odds:
    # the alarm comes later than the change, and its estimate of where the change
    # began (where the alarming sum last stood at 0) lies near the change, not the alarm.
    rng = np.random.default_rng(0)
    rate = np.full(6_000, 0.2)
    moved = 1.0 / (1.0 + (1.0 - 0.2) / (2.0 * 0.2))
    outcome = (rng.random(6_000) < np.where(np.arange(6_000) < 3_000, 0.2, moved)).astype(float)
    watch = CalibrationWatch(threshold=12.0, warmup=0)
    at = watch.first(outcome, rate)
    assert at is not None and at > 3_000 and watch.direction == 1
    began = at - watch.change_ago
    assert abs(began - 3_000) < abs(at - 3_000) and abs(began - 3_000) <= 200, (at, began)


def test_a_watchs_copy_has_every_field_and_moves_on_alone() -> None:
    """A block tries the calibration watch on a copy: the copy starts where the watch
    is (every field) and what it then sees leaves the watch as it was."""
    rng = np.random.default_rng(3)
    watch = CalibrationWatch(8.0, 50, 6)
    calm_then_busy = np.concatenate((rng.random(50) < 0.1, rng.random(250) < 0.5))
    watch.first(calm_then_busy.astype(float), np.full(300, 0.1))
    assert watch.offset is not None and watch.direction != 0  # warmed up, and alarmed
    trial = watch.copy()
    assert dataclasses.asdict(trial) == dataclasses.asdict(watch)
    before = dataclasses.asdict(watch)
    trial.first((rng.random(300) < 0.9).astype(float), np.full(300, 0.1))
    assert dataclasses.asdict(watch) == before
    assert dataclasses.asdict(trial) != before
