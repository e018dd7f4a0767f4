"""The request schedule: every tenant gets a forecaster, and early ones are replaced.

A tenant answered without a forecaster asks again with a backoff counted in its own
events; one with a forecaster asks again when its history doubled; a backlog waits
for a full window. Exact offsets, seeded streams, pure core (no clock unless named).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from consumer.core import CoreConfig, IngestCore
from consumer.live_model import LiveModel
from consumer.performance import PerformanceConfig
from kernel.features import FeatureSpec
from schemas import RetrainRequested, retrain_event_id
from testkit.streams import START, RawRecord, telemetry_values
from testkit.tiny_models import tiny_live_model

TOPIC = "sla.telemetry"
TENANT = "acme"


def config(**changes: object) -> CoreConfig:
    """The defaults, without data drift; the untrained test models' errors never alarm."""
    base: dict[str, object] = {
        "telemetry_topic": TOPIC,
        "data_drift": False,
        "performance": PerformanceConfig(performance_warmup=10**9),
    }
    base.update(changes)
    return CoreConfig(**base)  # type: ignore[arg-type]


def stream(n: int, seed: int = 5) -> list[RawRecord]:
    """`n` one-minute events of one tenant, a breach in about one interval in ten."""
    values = telemetry_values(TENANT, n, seed=seed)
    return [RawRecord(TENANT.encode(), v, 0, i) for i, v in enumerate(values)]


def raised_at(request: RetrainRequested) -> int:
    return request.source[0].end_offset - 1


def run_answering(
    core: IngestCore,
    recs: list[RawRecord],
    answer: object = None,
    *,
    batch: int = 100,
    now: float | None = None,
) -> list[RetrainRequested]:
    """Process `recs`, answering each request after its batch (`answer(request)`, or
    without a forecaster when None)."""
    requests: list[RetrainRequested] = []
    for lo in range(0, len(recs), batch):
        made = core.process(recs[lo : lo + batch], now=now).requests
        requests += made
        for request in made:
            if callable(answer):
                answer(request)
            else:
                core.resolve(request.tenant, request.event_id)  # kept / failed: no model
    return requests


def test_a_tenant_answered_without_a_forecaster_asks_again_with_backoff() -> None:
    core = IngestCore(config())
    requests = run_answering(core, stream(5_000))
    # The first at the 500th event; then half its window more events (250), then 750
    # (half of 750, doubled), then a whole window (capped at 1,440), and again.
    assert [raised_at(r) for r in requests] == [499, 749, 1_499, 2_939, 4_379]
    assert {r.reason for r in requests} == {"cold_start"}
    assert [r.detector for r in requests] == ["cold_start"] + ["retry"] * 4
    assert [r.details.statistic["wait_events"] for r in requests[1:]] == [250, 750, 1_440, 1_440]
    assert [r.details.statistic["refusals"] for r in requests[1:]] == [1, 2, 3, 4]
    # Ids come from the triggering offset, as every request's does.
    assert [r.event_id for r in requests] == [
        retrain_event_id(TENANT, "cold_start", TOPIC, 0, raised_at(r)) for r in requests
    ]


def test_an_answer_after_the_retry_was_due_asks_at_once_after_it() -> None:
    core = IngestCore(config())
    recs = stream(1_500)
    (first,) = core.process(recs[:900]).requests  # unanswered until event 900
    assert raised_at(first) == 499
    core.resolve(TENANT, first.event_id)
    (retry,) = core.process(recs[900:]).requests
    assert raised_at(retry) == 900 and retry.detector == "retry"


def test_a_tenant_given_a_forecaster_asks_no_retry() -> None:
    core = IngestCore(config())

    def publish(request: RetrainRequested) -> None:
        model = tiny_live_model(TENANT)
        core.apply_model(replace(model, request_event_id=request.event_id))

    requests = run_answering(core, stream(3_000), publish)
    assert [raised_at(r) for r in requests] == [499]  # tiny cards give no row count
    state = core.tenant(TENANT)
    assert state is not None and state.schedule.refusals == 0 and not state.gate.in_flight


def test_a_restart_rebuilds_the_same_retry_schedule() -> None:
    recs = stream(4_000)
    uninterrupted = run_answering(IngestCore(config()), recs)
    cut = 2_000  # committed before the restart; the replay rebuilds the windows
    restarted = IngestCore(config())
    for request in uninterrupted:  # the follower re-reads every answer before ingest
        if raised_at(request) < cut:
            restarted.resolve(request.tenant, request.event_id)
    after = []
    for lo in range(0, len(recs), 100):
        made = restarted.process(recs[lo : lo + 100], {0: cut}).requests
        after += made
        for request in made:
            restarted.resolve(request.tenant, request.event_id)
    assert after == [r for r in uninterrupted if raised_at(r) >= cut]
    assert [raised_at(r) for r in after] == [2_939]


def with_rows(model: LiveModel, n_rows: int) -> LiveModel:
    """`model` whose card says it was trained on `n_rows` rows."""
    card = model.card.model_copy(update={"lineage": {"n_rows": n_rows}})
    return replace(model, card=card)


def test_a_forecaster_trained_on_little_history_is_replaced_as_history_doubles() -> None:
    core = IngestCore(config(cold_start=False))
    model = with_rows(tiny_live_model(TENANT), 400)
    core.apply_model(model)
    requests = run_answering(core, stream(4_000))  # kept: the champion stays
    lost = FeatureSpec().history - 1 + model.horizon  # events that give no training row
    # At 800 rows (twice 400), then at the full window (1,440 events), whose rows are
    # more than the square root of 2 times 800; never again (the window cannot grow).
    assert [raised_at(r) for r in requests] == [800 + lost - 1, 1_439]
    assert {r.reason for r in requests} == {"more_history"}
    assert requests[0].details.statistic["rows"] == 800
    assert requests[0].details.statistic["trained_rows"] == 400
    assert requests[0].n_events == 800 + lost
    assert requests[0].event_id == retrain_event_id(
        TENANT, "more_history", TOPIC, 0, 800 + lost - 1
    )


def test_a_forecaster_trained_on_the_whole_window_asks_for_no_more() -> None:
    core = IngestCore(config(cold_start=False))
    core.apply_model(with_rows(tiny_live_model(TENANT), 1_440 - FeatureSpec().history))
    assert run_answering(core, stream(3_000)) == []
    off = IngestCore(config(cold_start=False, more_history_factor=0.0))
    off.apply_model(with_rows(tiny_live_model(TENANT), 100))
    assert run_answering(off, stream(3_000)) == []


def ts_of(offset: int) -> float:
    return (START + timedelta(minutes=offset)).timestamp()


def test_on_a_backlog_the_first_request_waits_for_a_full_window() -> None:
    recs = stream(3_000)
    # Two days behind the clock the whole time: the window fills first (1,440 events).
    behind = IngestCore(config())
    late = run_answering(behind, recs, now=ts_of(3_000) + 2 * 86_400.0)
    assert [raised_at(r) for r in late][:1] == [1_439]
    assert late[0].n_events == 1_440
    # Caught up: the clock is the newest event (as `slaops backtest` runs): the 500th.
    live = IngestCore(config())
    requests: list[RetrainRequested] = []
    for lo in range(0, len(recs), 100):
        made = live.process(recs[lo : lo + 100], now=ts_of(lo + 99)).requests
        requests += made
        for request in made:
            live.resolve(request.tenant, request.event_id)
    assert [raised_at(r) for r in requests][:1] == [499]
    # No lag setting: nothing is a backlog, whatever the clock.
    never = IngestCore(config(catch_up_lag_s=0.0))
    assert [raised_at(r) for r in run_answering(never, recs, now=ts_of(3_000) + 20 * 86_400.0)][
        :1
    ] == [499]


def test_a_backlog_that_catches_up_asks_on_the_first_caught_up_batch() -> None:
    recs = stream(3_000)
    core = IngestCore(config())
    now = ts_of(3_000)  # event 800 is 2,200 minutes behind it, event 2,999 one minute
    assert core.process(recs[:800], now=now).requests == []
    (first,) = core.process(recs[800:], now=now).requests
    assert raised_at(first) == 800 and first.n_events == 801
