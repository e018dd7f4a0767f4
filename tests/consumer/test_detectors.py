"""Data-drift monitors pinned on seeded telemetry streams with known change points."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.detectors import (
    DETECTORS,
    DataDriftMonitor,
    DetectorKind,
    DriftConfig,
    DriftSignal,
)
from schemas.telemetry import FEATURES
from testkit.drift_signals import signals
from testkit.streams import SDS, first_drift
from testkit.streams import telemetry_matrix as telemetry

KINDS: tuple[DetectorKind, ...] = tuple(DETECTORS)
LATENCIES = (0, 1, 2)
CHANGE_AT = 3_000
#: Most events from CHANGE_AT to the signal, for a 2-sd shift of the three latencies.
#: Measured delays (bench/bench_detectors.py) are ~80 (adwin), ~100 (page_hinkley) and
#: ~440 (kswin: 14 of its stride-32 updates before a KS test at alpha=1e-4 trips);
#: the bounds leave room for other seeds without hiding a regression to "late".
DETECTION_BOUND = {"adwin": 250, "page_hinkley": 300, "kswin": 700, "cusum": 250}


def shifted(
    n: int, seed: int, at: int = CHANGE_AT, columns: tuple[int, ...] = LATENCIES
) -> np.ndarray:
    events = telemetry(n, seed)
    events[at:, list(columns)] += 2.0 * SDS[list(columns)]
    return events


def split_signals(config: DriftConfig, events: np.ndarray, sizes: list[int]) -> list[int]:
    monitor = DataDriftMonitor(config)
    found, start = [], 0
    for size in sizes:
        signal = first_drift(monitor, events[start : start + size])
        if signal is not None:
            found.append(start + signal.index)
        start += size
    signal = first_drift(monitor, events[start:])
    if signal is not None:
        found.append(start + signal.index)
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_a_shift_is_signalled_once_within_the_bound(kind: DetectorKind) -> None:
    found = signals(DriftConfig(kind), shifted(6_000, seed=1))
    assert len(found) == 1
    assert CHANGE_AT <= found[0] <= CHANGE_AT + DETECTION_BOUND[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_the_signal_names_the_shifted_features_and_sizes_the_shift(kind: DetectorKind) -> None:
    events = shifted(6_000, seed=2)
    signal = first_drift(DataDriftMonitor(DriftConfig(kind)), events)
    assert isinstance(signal, DriftSignal)
    assert len(signal.features) >= 2
    assert set(signal.features) <= {FEATURES[c] for c in LATENCIES}
    for name in signal.features:
        assert signal.statistic[f"{name}.shift_sigma"] > 0.5
        assert signal.statistic[f"{name}.recent_mean"] > signal.statistic[f"{name}.reference_mean"]
    assert all(type(value) is float for value in signal.statistic.values())
    json.dumps(signal.statistic, allow_nan=False)


def test_the_reference_is_the_warmup_mean_and_std() -> None:
    events = shifted(6_000, seed=3)
    signal = first_drift(DataDriftMonitor(DriftConfig(drift_warmup_events=300)), events)
    assert signal is not None
    for name in signal.features:
        column = FEATURES.index(name)
        warm = events[:300, column].astype(np.float64)
        assert signal.statistic[f"{name}.reference_mean"] == pytest.approx(warm.mean())
        assert signal.statistic[f"{name}.reference_std"] == pytest.approx(warm.std())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("phi", [0.0, 0.7], ids=["independent", "autocorrelated"])
def test_stationary_telemetry_gives_no_signal(kind: DetectorKind, phi: float) -> None:
    assert signals(DriftConfig(kind), telemetry(20_000, seed=4, phi=phi)) == []


@pytest.mark.parametrize("kind", KINDS)
def test_one_shifted_feature_needs_min_agreeing_features_of_one(kind: DetectorKind) -> None:
    events = shifted(6_000, seed=5, columns=(0,))
    assert signals(DriftConfig(kind, min_agreeing_features=2), events) == []
    found = signals(DriftConfig(kind, min_agreeing_features=1), events)
    assert len(found) == 1
    assert CHANGE_AT <= found[0] <= CHANGE_AT + DETECTION_BOUND[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_block_boundaries_do_not_change_the_signals(kind: DetectorKind) -> None:
    events = shifted(6_000, seed=6)
    config = DriftConfig(kind)
    expected = signals(config, events, block=len(events))
    assert len(expected) == 1
    for block in (1, 7, 500):
        assert signals(config, events, block=block) == expected


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=900), max_size=12))
def test_any_split_into_blocks_gives_the_same_signals(sizes: list[int]) -> None:
    events = shifted(6_000, seed=7)
    config = DriftConfig("adwin")
    assert split_signals(config, events, sizes) == signals(config, events, block=len(events))


@pytest.mark.parametrize("kind", KINDS)
def test_after_a_signal_the_monitor_resets_and_catches_a_later_shift(kind: DetectorKind) -> None:
    second = 9_000
    events = shifted(14_000, seed=8)
    events[second:, list(LATENCIES)] += 2.0 * SDS[list(LATENCIES)]
    found = signals(DriftConfig(kind), events)
    assert len(found) == 2
    assert CHANGE_AT <= found[0] <= CHANGE_AT + DETECTION_BOUND[kind]
    assert second <= found[1] <= second + DETECTION_BOUND[kind]


def test_events_after_a_signal_start_the_new_warmup() -> None:
    events = shifted(6_000, seed=9)
    monitor = DataDriftMonitor(DriftConfig())
    first = first_drift(monitor, events[:4_000])
    assert first is not None
    # The new reference is the shifted level, so more of it is no drift.
    assert first_drift(monitor, events[4_000:]) is None
    assert first_drift(monitor, shifted(20_000, seed=10, at=0)) is None


@pytest.mark.parametrize("kind", KINDS)
def test_with_a_stride_the_signal_is_the_last_event_of_a_group(kind: DetectorKind) -> None:
    config = DriftConfig(kind)
    signal = first_drift(DataDriftMonitor(config), shifted(6_000, seed=11))
    assert signal is not None
    assert (signal.index - config.drift_warmup_events + 1) % DETECTORS[kind].data_stride == 0


def test_adwin_fast_path_alarms_where_rivers_public_api_does() -> None:
    events = telemetry(30_000, seed=12)
    for at in range(2_000, 30_000, 2_000):  # a staircase: many alarms to compare
        events[at:, :] += 0.7 * SDS
    config = DriftConfig("adwin", detector_stride=1, min_agreeing_features=1, agreement_window=1)
    fast, public = DataDriftMonitor(config), DataDriftMonitor(config)
    public._fast_adwin = False
    fast_found: list[tuple[int, tuple[str, ...]]] = []
    public_found: list[tuple[int, tuple[str, ...]]] = []
    for start in range(0, len(events), 333):
        for monitor, found in ((fast, fast_found), (public, public_found)):
            signal = first_drift(monitor, events[start : start + 333])
            if signal is not None:
                found.append((start + signal.index, signal.features))
    assert len(fast_found) >= 10
    assert fast_found == public_found


def test_reset_forgets_the_past() -> None:
    events = shifted(6_000, seed=13)
    monitor = DataDriftMonitor(DriftConfig())
    first_drift(monitor, telemetry(2_500, seed=14) * 3.0)
    monitor.reset()
    assert first_drift(monitor, events) == first_drift(DataDriftMonitor(DriftConfig()), events)


def test_only_the_watched_features_count() -> None:
    events = shifted(6_000, seed=15)
    assert signals(DriftConfig(features=(3, 4, 5)), events) == []
    signal = first_drift(DataDriftMonitor(DriftConfig(features=(5, 1, 2))), events)
    assert signal is not None
    assert signal.features == ("latency_p95_ms", "latency_p99_ms")


def test_params_override_the_tuned_defaults() -> None:
    config = DriftConfig("page_hinkley", detector_params={"threshold": 5.0, "min_instances": 10.0})
    assert config.river_params() == {"delta": 0.25, "threshold": 5.0, "min_instances": 10}
    assert type(config.river_params()["min_instances"]) is int
    assert config.effective_stride == DETECTORS["page_hinkley"].data_stride
    assert DriftConfig("kswin", detector_stride=4).effective_stride == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"detector": "magic"}, "detector"),
        ({"detector_params": {"bogus": 1.0}}, "params"),
        ({"detector_params": {"clock": 2.5}}, "params"),
        ({"detector_params": {"delta": float("nan")}}, "params"),
        ({"detector_params": {"delta": "0.1"}}, "params"),
        ({"detector": "kswin", "detector_params": {"alpha": 2.0}}, "params"),
        ({"detector": "kswin", "detector_params": {"window_size": 10, "stat_size": 20}}, "params"),
        ({"min_agreeing_features": 0}, "min_agreeing_features"),
        ({"min_agreeing_features": True}, "min_agreeing_features"),
        ({"min_agreeing_features": 3, "features": (0, 1)}, "min_agreeing_features"),
        ({"agreement_window": 0}, "agreement_window"),
        ({"drift_warmup_events": 1}, "warmup"),
        ({"features": ()}, "features"),
        ({"features": (0, 0)}, "features"),
        ({"features": (6,)}, "features"),
        ({"features": (-1,)}, "features"),
        ({"features": "012"}, "features"),
        ({"detector_stride": 0}, "stride"),
        ({"detector_stride": 2.0}, "stride"),
    ],
)
def test_invalid_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DriftConfig(**kwargs)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (np.zeros((10, 5)), "shape"),
        (np.zeros(6), "shape"),
        (np.zeros((10, 6), dtype=np.int64), "float"),
        (np.full((10, 6), np.nan), "finite"),
    ],
)
def test_invalid_blocks_are_refused(block: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        first_drift(DataDriftMonitor(DriftConfig()), block)


def test_an_empty_block_is_no_signal() -> None:
    assert first_drift(DataDriftMonitor(DriftConfig()), np.empty((0, 6))) is None
