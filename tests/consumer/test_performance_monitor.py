"""The performance monitor: no false alarms on stable tenants, changes caught, absolute.

Unit tests on synthetic forecasts (a calibrated stream is an oracle: its excess is 0 on
average), then seeded simulator streams through the core with real trained models.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.detectors import DETECTORS, DetectorSpec, DriftConfig
from consumer.performance import (
    PerformanceConfig,
    PerformanceMonitor,
    _log_loss,
    _losses,
    log_loss_excess,
)
from consumer.settings import ConsumerSettings
from testkit.performance_runs import MonitorRun, performance_runs


def forecasts(n: int, seed: int, *, wrong_from: int | None = None) -> np.ndarray:
    """(probability, outcome) rows: autocorrelated probabilities with a daily cycle, and
    outcomes drawn from them (calibrated), inverted from `wrong_from` on."""
    rng = np.random.default_rng(seed)
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.95 * ar[i - 1] + rng.normal(0, 0.3)
    logit = -2.0 + 2.5 * np.sin(np.arange(n) * 2 * np.pi / 1_440) + ar
    p = 1 / (1 + np.exp(-logit))
    y = rng.random(n) < p
    if wrong_from is not None:
        y[wrong_from:] = ~y[wrong_from:]
    return np.column_stack((p, y.astype(np.float64)))


def indices(config: PerformanceConfig, rows: np.ndarray, sizes: list[int]) -> list[int]:
    monitor, found, start = PerformanceMonitor(config), [], 0
    for size in [*sizes, len(rows)]:
        found += [start + s.index for s in monitor.update(rows[start : start + size])]
        start += size
    return found


def test_the_excess_is_zero_on_average_for_calibrated_forecasts() -> None:
    rows = forecasts(200_000, seed=1)
    excess = log_loss_excess(rows[:, 0], rows[:, 1], clip=0.01)
    assert abs(excess.mean()) < 0.01
    assert log_loss_excess(np.array([0.5]), np.array([0.0]), 0.01)[0] == pytest.approx(0.0)


def test_calibrated_autocorrelated_forecasts_never_alarm() -> None:
    assert indices(PerformanceConfig(), forecasts(100_000, seed=2), [5_000]) == []


def test_forecasts_wrong_from_the_first_event_alarm_soon_after_the_warmup() -> None:
    config = PerformanceConfig()
    found = indices(config, forecasts(5_000, seed=3, wrong_from=0), [])
    # Near p = 0.5 an inverted outcome costs what was promised: it takes the first hours'
    # confident forecasts to show the inversion.
    assert found and config.performance_warmup <= found[0] < 500


def test_a_model_getting_better_is_no_alarm() -> None:
    rows = forecasts(10_000, seed=4)
    rows[:, 0] = np.clip(rows[:, 0] * 0.5 + 0.25, 0, 1)  # blurred: worse than calibrated
    rows[5_000:, 0] = forecasts(10_000, seed=4)[5_000:, 0]  # then sharp again
    for kind in ("cusum", "adwin"):
        found = indices(PerformanceConfig(kind), rows, [])
        assert all(i < 5_000 for i in found), kind


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=700), max_size=10))
def test_any_split_into_blocks_gives_the_same_alarms(sizes: list[int]) -> None:
    rows = forecasts(4_000, seed=5, wrong_from=2_000)
    config = PerformanceConfig(performance_warmup=50)
    assert indices(config, rows, sizes) == indices(config, rows, [])


@pytest.mark.parametrize("block", [np.zeros((5, 4)), np.zeros(4), np.full((3, 2), np.nan)])
def test_malformed_blocks_are_refused(block: np.ndarray) -> None:
    with pytest.raises(ValueError, match="block"):
        PerformanceMonitor(PerformanceConfig()).update(block)


def test_adding_a_detector_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    class Never:
        drift_detected = False

        def __init__(self, level: float = 0.0) -> None:
            self.level = level

        def update(self, x: float) -> None:
            pass

    spec = DetectorSpec(Never, {"level": 1.0}, 4, {"level": 2.0})
    monkeypatch.setitem(DETECTORS, "never", spec)
    assert DriftConfig("never").make_detector().level == 1.0  # type: ignore[attr-defined]
    assert PerformanceConfig("never").make().level == 2.0  # type: ignore[attr-defined]
    settings = ConsumerSettings(detector="never", performance_detector="never")
    assert (settings.detector, settings.performance_detector) == ("never", "never")
    with pytest.raises(ValueError, match="never"):
        ConsumerSettings(detector="nowhere")


# -- seeded simulator streams, real trained models ---------------------------------------


def summary(runs: dict[str, MonitorRun]) -> dict[str, tuple[int, int | None]]:
    return {tenant: (run.false_alarms, run.delay) for tenant, run in runs.items()}


@functools.cache
def lost_edge_runs() -> dict[str, MonitorRun]:
    """Four tenants live from 2,880 on; from 4,000 on tenant 1's breaches are coin flips
    (a simulator concept drift no longer hurts the forecasts: the breach-rate features
    follow it). The other three are stable tenants."""
    return performance_runs(seed=7, edge_lost={1: 4_000})


def test_stable_tenants_get_no_performance_drift() -> None:
    runs = lost_edge_runs()
    stable = ("tenant-000", "tenant-002", "tenant-003")
    assert [runs[t].requests for t in stable] == [()] * 3, summary(runs)


def test_a_lost_edge_is_detected_within_500_events_and_nothing_else_alarms() -> None:
    runs = lost_edge_runs()
    assert summary(runs) == {
        "tenant-000": (0, None),
        "tenant-001": (0, runs["tenant-001"].delay),
        "tenant-002": (0, None),
        "tenant-003": (0, None),
    }
    delay = runs["tenant-001"].delay
    assert delay is not None and delay <= 500
    request = runs["tenant-001"].requests[0]
    assert request.detector == "cusum"


def test_a_model_that_went_live_after_its_edge_was_lost_alarms() -> None:
    # Coin flips from 2,880; the model (trained on the events before) loads 60 events
    # later, so its monitor never saw the old regime: only the absolute reference can tell.
    runs = performance_runs(seed=7, n_events=4_000, edge_lost={1: 2_880}, live_at=2_940)
    lost = runs["tenant-001"]
    assert lost.false_alarms == 0
    assert lost.delay is not None and lost.delay <= 500
    assert [runs[t].requests for t in ("tenant-000", "tenant-002", "tenant-003")] == [()] * 3


def test_the_losses_of_two_forecasts_in_one_pass_are_each_ones_own() -> None:
    """The monitor scores the model and persistence in one array pass: bit for bit the
    log loss each gets alone."""
    rng = np.random.default_rng(3)
    rows = np.column_stack((rng.random(200), rng.random(200) < 0.3, rng.random(200)))
    rows[::17, 0] = 0.0
    both = _log_loss(rows[:, ::2], rows[:, 1][:, None], 0.01)
    for column, got in ((0, both[:, 0]), (2, both[:, 1])):
        alone, _entropy = _losses(rows[:, column], rows[:, 1], 0.01)
        assert np.array_equal(got, alone)
