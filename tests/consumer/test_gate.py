"""Catch-up without request storms: a request in flight holds its tenant until it is
answered or a wall-clock timeout passes, however much event time a backlog covers, and
a drift meanwhile becomes one follow-up request. Pure core, injected clock."""

from __future__ import annotations

from collections import Counter

import numpy as np

from consumer.core import IngestCore
from consumer.gate import RequestGate
from consumer.main import core_config
from consumer.settings import ConsumerSettings
from schemas import RetrainRequested, retrain_event_id
from simulator.model import TelemetrySimulator
from testkit.core_runs import TOPIC, config, mixed_stream, run
from testkit.streams import START, RawRecord, telemetry_values


def test_gate_cooldown_runs_on_event_time_and_the_timeout_on_the_wall_clock() -> None:
    gate = RequestGate(cooldown_s=100.0, request_timeout_s=1_000.0)
    assert gate.allows(0.0, now=5_000.0)
    gate.record_request(0.0, "r1", now=5_000.0)
    assert not gate.allows(1e6, now=5_999.0)  # in flight, whatever the event time
    assert gate.allows(1e6, now=6_000.0)  # unanswered for request_timeout_s of wall clock
    assert not gate.allows(50.0, now=6_000.0)  # the cooldown still counts
    gate.resolve()
    assert gate.allows(100.0, now=5_001.0) and not gate.allows(99.0, now=5_001.0)
    gate.record_request(200.0, "r2")  # no clock: only an answer ends it
    assert not gate.allows(1e9, now=1e12)
    never_held = RequestGate(cooldown_s=100.0, request_timeout_s=0.0)
    never_held.record_request(0.0, "r3", now=1.0)
    assert never_held.allows(100.0, now=1.0) and not never_held.allows(99.0, now=1.0)


def backlog(tenants: int, per_tenant: int) -> tuple[TelemetrySimulator, list[RawRecord]]:
    simulator = TelemetrySimulator(tenants, seed=12, interval_s=30.0)
    events = simulator.events(per_tenant)
    return simulator, [RawRecord(k, v, 0, i) for i, (k, v, _m) in enumerate(events)]


def catch_up(
    core: IngestCore, recs: list[RawRecord], now: float, replay_below: int = -1
) -> list[RetrainRequested]:
    requests: list[RetrainRequested] = []
    for i in range(0, len(recs), 1_000):
        requests += core.process(recs[i : i + 1_000], {0: replay_below}, now=now).requests
        now += 0.2  # a poll of the catch-up: 25 hours of event time pass in seconds
    return requests


def test_a_backlog_asks_once_per_tenant_until_answered_or_timed_out_on_the_wall_clock() -> None:
    simulator, recs = backlog(4, 3_100)
    head, tail = recs[: 4 * 3_000], recs[4 * 3_000 :]
    settings = ConsumerSettings()  # the defaults: a 2-hour timeout, a 1-hour cooldown
    core = IngestCore(core_config(settings))
    now = simulator.event_time(3_100).timestamp() + 3_600.0
    requests = catch_up(core, head, now)
    # 25 hours of event time: the event-time timeout asked 11 times per tenant here.
    assert Counter((r.tenant, r.reason) for r in requests) == {
        (t, "cold_start"): 1 for t in simulator.tenants
    }
    assert catch_up(core, tail[:200], now + settings.request_timeout_s - 10.0) == []
    # Unanswered for the timeout on the wall clock: each tenant asks once more.
    again = catch_up(core, tail[200:], now + settings.request_timeout_s + 10.0)
    assert Counter(r.tenant for r in again) == dict.fromkeys(simulator.tenants, 1)


def test_an_answer_lets_a_tenant_ask_again_after_the_cooldown() -> None:
    simulator, recs = backlog(2, 3_000)
    core = IngestCore(core_config(ConsumerSettings()))
    now = simulator.event_time(3_000).timestamp()
    first = catch_up(core, recs[:2_000], now)
    assert len(first) == 2
    answered = first[0]
    core.resolve(answered.tenant, answered.event_id)  # ChampionKept: still no model
    later = catch_up(core, recs[2_000:], now + 10.0)
    # One request, the other tenant's still in flight. (Here the diurnal cycle had read
    # as data drift meanwhile: that waiting drift goes out, and covers the cold start.)
    assert [r.tenant for r in later] == [answered.tenant]


def test_drift_while_the_first_model_is_built_becomes_one_follow_up_after_the_answer() -> None:
    recs = mixed_stream()  # "drifty" shifts at its event 900, within its first 3,000 offsets
    (drift,) = run(IngestCore(config()), recs, batch=500)  # no cold starts: the drift alone
    drift_offset = drift.source[0].end_offset - 1
    core = IngestCore(config(cold_start=True))
    cut = drift_offset + 300
    cold = run(core, recs[:cut], batch=500)
    assert [r.reason for r in cold] == ["cold_start"] * 3  # drifty's is still in flight
    waiting = core.tenant("drifty").follow_up  # type: ignore[union-attr]
    assert waiting is not None and waiting.offset == drift_offset
    (drifty_cold,) = [r for r in cold if r.tenant == "drifty"]
    core.resolve("drifty", drifty_cold.event_id)  # its first model is answered
    (follow_up,) = run(core, recs[cut:], batch=500)
    # The drift's own id and detection time, on the window as it is when it goes out.
    assert (
        follow_up.event_id
        == drift.event_id
        == retrain_event_id("drifty", "data_drift", TOPIC, 0, drift_offset)
    )
    assert follow_up.detected_at == drift.detected_at and follow_up.reason == "data_drift"
    assert follow_up.source[0].end_offset > cut
    assert core.tenant("drifty").follow_up is None  # type: ignore[union-attr]


def test_a_restart_rebuilds_requests_in_flight_and_asks_nothing_again() -> None:
    simulator, recs = backlog(3, 2_000)
    now = simulator.event_time(2_000).timestamp()
    first = catch_up(IngestCore(core_config(ConsumerSettings())), recs[:3_000], now)
    assert len(first) == 3
    # Restarted with 3,000 committed: the replay rebuilds each cold start in flight
    # (clock of the restart), so the rest of the backlog asks nothing again.
    restarted = IngestCore(core_config(ConsumerSettings()))
    assert catch_up(restarted, recs, now + 60.0, replay_below=3_000) == []
    assert all(s.gate.busy(now + 60.0) for s in restarted.tenants())
    # An answer to any request of a tenant frees it (the replay cannot know the id sent).
    tenant = first[0].tenant
    restarted.resolve(tenant, "answer-to-a-request-this-member-never-rebuilt")
    assert not restarted.tenant(tenant).gate.busy(now + 60.0)  # type: ignore[union-attr]


def test_the_live_cooldown_also_holds_on_the_wall_clock_for_fresh_events_only() -> None:
    gate = RequestGate(cooldown_s=100.0, request_timeout_s=0.0)
    gate.record_request(0.0, "r1", now=1_000.0, wall=True)
    assert gate.allows(500.0, now=1_050.0)  # event time alone: cooled down
    assert not gate.allows(500.0, now=1_050.0, wall=True)  # 50 s of wall clock: not yet
    assert gate.allows(500.0, now=1_100.0, wall=True)
    ready = gate.allows_many(
        np.array([50.0, 500.0, 600.0]), 1_050.0, wall=np.array([0, 0, 1], bool)
    )
    assert ready.tolist() == [False, True, False]  # the replayed one is judged on event time


def test_stamps_far_apart_cannot_make_a_tenant_ask_more_often_than_the_cooldown() -> None:
    """A producer stamping events 20 minutes apart covers an hour of event time every
    three events; live, the consumer's own clock holds the cooldown all the same."""
    values = telemetry_values("acme", 3_000, seed=2, interval_s=1_200.0)
    recs = [RawRecord(b"acme", v, 0, i) for i, v in enumerate(values)]
    clock = START.timestamp() + 3_000 * 1_200.0
    counts = {}
    for wall in (False, True):
        core = IngestCore(
            config(
                cold_start=True,
                cold_start_min_events=100,
                cold_start_min_per_class=1,
                request_timeout_s=0.0,
                retry_after_fraction=0.05,
                window_span_s=1e9,
                max_past_s=0.0,
            )
        )
        counts[wall] = 0
        for lo in range(0, len(recs), 10):  # 10 events a second of wall clock
            result = core.process(recs[lo : lo + 10], now=clock + lo / 10, wall_clock=wall)
            counts[wall] += len(result.requests)
            for request in result.requests:
                core.resolve(request.tenant, request.event_id)
    assert counts[False] > 3  # event time alone: the stamps set the pace
    assert counts[True] == 1  # 300 s of wall clock, cooldown_s=3600: one request
