"""The consumer's pure core driven by hand: a base config, batches of records, a mixed stream.

`config(**changes)` is the core's config for these tests (adwin drift, no cold starts,
a request held in flight), `run` feeds records in batches and returns the requests,
and `mixed_stream` is three tenants of which one drifts at event 900.
"""

from __future__ import annotations

from consumer.core import CoreConfig, IngestCore
from consumer.detectors import DriftConfig
from testkit.streams import RawRecord, interleave, telemetry_values

TOPIC = "sla.telemetry"


def config(**changes: object) -> CoreConfig:
    base: dict[str, object] = {
        "telemetry_topic": TOPIC,
        "window_max_events": 1_000,
        "cold_start": False,
        "cold_start_min_events": 200,
        "cold_start_min_per_class": 5,
        "cooldown_s": 3_600.0,
        "request_timeout_s": 1e9,
        # The streams here have no daily cycle and are shorter than a day: one reference.
        "drift": DriftConfig(detector="adwin", drift_seasonal=False),
    }
    base.update(changes)
    return CoreConfig(**base)  # type: ignore[arg-type]


def records(pairs: list[tuple[str, bytes]], partition: int = 0) -> list[RawRecord]:
    return [RawRecord(t.encode(), v, partition, i) for i, (t, v) in enumerate(pairs)]


def run(core: IngestCore, recs: list[RawRecord], batch: int, replay_below: int = -1) -> list:
    requests = []
    for i in range(0, len(recs), batch):
        result = core.process(recs[i : i + batch], {0: replay_below})
        requests.extend(result.requests)
    return requests


def mixed_stream() -> list[RawRecord]:
    streams = {
        "stable-a": telemetry_values("stable-a", 1_500, seed=1),
        "drifty": telemetry_values("drifty", 1_500, seed=2, shift_at=900),
        "stable-b": telemetry_values("stable-b", 1_500, seed=3),
    }
    return records(interleave(streams))
