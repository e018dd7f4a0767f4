"""Cost, false alarms and delay of each data-drift detector, on seeded synthetic telemetry.

Run: `python bench/bench_detectors.py` (about a minute at most). Cost is measured on
1,000-event blocks spread over many monitors (tenants), as the consumer calls them, and
on 50-event blocks to show the per-call overhead. False alarms are confirmed drifts per
100,000 stationary events: independent noise, and AR(1) noise (phi=0.7), which is closer
to real telemetry. Delay is events from the change point to the signal, for a shift of
the three latency features by 1 and by 3 reference standard deviations.
"""

from __future__ import annotations

import time

import numpy as np

from consumer.detectors import DataDriftMonitor, DriftConfig
from testkit.drift_signals import signals
from testkit.streams import SDS
from testkit.streams import telemetry_matrix as telemetry

LATENCIES = (0, 1, 2)
CHANGE_AT = 5_000
STATIONARY_EVENTS = 100_000
#: Wall-clock limit for each cost measurement, so the whole run stays under a minute.
COST_BUDGET_S = 2.0

CONFIGS = {
    "adwin": DriftConfig("adwin"),
    "adwin stride=1": DriftConfig("adwin", detector_stride=1, detector_params={"clock": 32}),
    "page_hinkley": DriftConfig("page_hinkley"),
    "kswin": DriftConfig("kswin"),
}


def us_per_event(config: DriftConfig, block: int, tenants: int) -> float:
    """Mean cost of `update` over `tenants` monitors, past warmup and window fill."""
    history = config.drift_warmup_events + config.effective_stride * int(
        config.river_params().get("window_size", 0)
    )
    monitors = [DataDriftMonitor(config) for _ in range(tenants)]
    blocks = []
    for seed, monitor in enumerate(monitors):
        events = telemetry(history + block, seed)
        monitor.update(events[:history])
        blocks.append(events[history:])
    fed = 0
    start = time.perf_counter()
    while time.perf_counter() - start < COST_BUDGET_S:
        for monitor, events in zip(monitors, blocks, strict=True):
            monitor.update(events)
        fed += block * tenants
    return (time.perf_counter() - start) / fed * 1e6


def delay(config: DriftConfig, sigma: float, seeds: range) -> str:
    delays = []
    for seed in seeds:
        events = telemetry(2 * CHANGE_AT, 1_000 + seed)
        events[CHANGE_AT:, LATENCIES] += sigma * SDS[list(LATENCIES)]
        found = signals(config, events)
        after = [i - CHANGE_AT for i in found if i >= CHANGE_AT]
        if len(after) < len(found) or not after:
            return "miss/FA"
        delays.append(after[0])
    return f"{np.mean(delays):.0f}"


def main() -> None:
    stationary = telemetry(STATIONARY_EVENTS, 7)
    autocorrelated = telemetry(STATIONARY_EVENTS, 8, phi=0.7)
    header = (
        f"{'detector':<16}{'us/ev@1000':>11}{'us/ev@50':>10}"
        f"{'FA/100k':>9}{'FA/100k ar':>11}{'delay 1sd':>10}{'delay 3sd':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, config in CONFIGS.items():
        print(
            f"{name:<16}"
            f"{us_per_event(config, 1_000, tenants=20):>11.2f}"
            f"{us_per_event(config, 50, tenants=100):>10.2f}"
            f"{len(signals(config, stationary, block=100)):>9}"
            f"{len(signals(config, autocorrelated, block=100)):>11}"
            f"{delay(config, 1.0, range(3)):>10}"
            f"{delay(config, 3.0, range(3)):>10}",
            flush=True,
        )


if __name__ == "__main__":
    main()
