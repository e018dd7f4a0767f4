"""The consumer core without a broker: dead letters, requests, gating, replay, eviction."""

from __future__ import annotations

import gc

import pytest

from consumer.core import IngestCore
from consumer.main import core_config
from consumer.settings import ConsumerSettings
from schemas import DeadLetter, RejectReason
from simulator.model import TelemetrySimulator
from testkit.core_runs import config, mixed_stream, records, run
from testkit.streams import START, RawRecord, telemetry_values


def test_invalid_records_become_dead_letters_with_source_and_reason() -> None:
    core = IngestCore(config())
    good = telemetry_values("acme", 3, seed=0)
    recs = [
        RawRecord(b"acme", good[0], 2, 10),
        RawRecord(b"acme", b"{oops", 2, 11),
        RawRecord(b"acme", b"", 2, 12),
        RawRecord(b"other", good[1], 2, 13),
        RawRecord(b"acme", good[2].replace(b'"cpu_util": 0', b'"cpu_util": 7'), 2, 14),
    ]
    result = core.process(recs)
    assert (result.valid, result.invalid) == (1, 4)
    letters = [DeadLetter.from_headers(d.headers) for d in result.dead_letters]
    assert [x.reason for x in letters] == [
        RejectReason.NOT_JSON,
        RejectReason.EMPTY,
        RejectReason.KEY_MISMATCH,
        RejectReason.OUT_OF_RANGE,
    ]
    assert [x.source_offset for x in letters] == [11, 12, 13, 14]
    assert {x.source_partition for x in letters} == {2}
    assert [d.value for d in result.dead_letters] == [recs[i].value() for i in (1, 2, 3, 4)]


def test_drifted_tenant_gets_exactly_one_data_drift_request_covering_its_window() -> None:
    core = IngestCore(config())
    recs = mixed_stream()
    requests = run(core, recs, batch=500)
    assert [(r.tenant, r.reason) for r in requests] == [("drifty", "data_drift")]
    request = requests[0]
    (source,) = request.source
    trigger = source.end_offset - 1
    drifty_offsets = [r.offset() for r in recs if r.key() == b"drifty"]
    first_shifted = drifty_offsets[900]
    assert first_shifted <= trigger < drifty_offsets[1_000], "detected within 100 events"
    in_range = [o for o in drifty_offsets if source.start_offset <= o < source.end_offset]
    held = [o for o in drifty_offsets if o <= trigger][-1_000:]  # the window at the trigger
    assert in_range == held and request.n_events == len(held)
    assert request.details.features and request.detector == "adwin"


def test_requests_do_not_depend_on_batch_boundaries() -> None:
    recs = mixed_stream()
    runs = [run(IngestCore(config(cold_start=True)), recs, batch=b) for b in (1, 97, 4_500)]
    # One cold start each; the drift comes while drifty's cold start is still in flight.
    assert [r.reason for r in runs[0]] == ["cold_start"] * 3
    assert runs[0] == runs[1] == runs[2]


def test_cold_start_needs_both_classes_and_is_not_repeated_within_cooldown() -> None:
    core = IngestCore(config(cold_start=True, cold_start_min_per_class=5))
    values = telemetry_values("acme", 600, seed=5)
    only_healthy = [v.replace(b'"sla_breached": true', b'"sla_breached": false') for v in values]
    assert run(core, records([("acme", v) for v in only_healthy]), batch=50) == []
    core = IngestCore(config(cold_start=True, cold_start_min_per_class=5))
    requests = run(core, records([("acme", v) for v in values]), batch=50)
    assert [r.reason for r in requests] == ["cold_start"]
    assert requests[0].n_events == 200 and requests[0].source[0].end_offset == 200


def test_replayed_offsets_rebuild_state_but_emit_nothing_again() -> None:
    recs = mixed_stream()
    full = run(IngestCore(config()), recs, batch=300)
    (drift,) = full
    trigger = drift.source[0].end_offset - 1
    # Replaying past the trigger: the request was already sent, so nothing is emitted,
    # yet the gate remembers it and the window is rebuilt.
    core = IngestCore(config())
    assert run(core, recs, batch=300, replay_below=trigger + 1) == []
    assert core.tenant("drifty") is not None and len(core.tenant("drifty").window) == 1_000  # type: ignore[union-attr]
    assert core.tenant("drifty").gate.in_flight  # type: ignore[union-attr]
    # Replaying up to just before it: the same request, same id, is emitted once.
    again = run(IngestCore(config()), recs, batch=300, replay_below=trigger)
    assert again == full
    bad = [RawRecord(b"x", b"{", 0, 5), RawRecord(b"x", b"{", 0, 50)]
    assert len(IngestCore(config()).process(bad, {0: 10}).dead_letters) == 1


def test_a_held_tenant_is_never_evicted_for_a_newcomer_who_is_dead_lettered_instead() -> None:
    core = IngestCore(config(max_tenants=3))
    for n, tenant in enumerate(["t1", "t2", "t3", "t1", "t4"]):
        result = core.process(
            [RawRecord(tenant.encode(), telemetry_values(tenant, 1, seed=n)[0], 0, n)]
        )
    assert len(core) == 3
    assert all(core.tenant(t) is not None for t in ("t1", "t2", "t3"))
    assert core.tenant("t4") is None
    (letter,) = result.dead_letters
    assert letter.reason is RejectReason.TENANT_CAPACITY and letter.value is not None
    assert "max_tenants=3" in DeadLetter.from_headers(letter.headers).detail
    assert (result.valid, result.invalid) == (0, 1)
    assert core.replay_start(0) == 0  # t1's first event is the oldest still held


def test_idle_tenants_expire_on_the_consumer_clock_probation_ones_first() -> None:
    core = IngestCore(config(max_tenants=3, probation_idle_s=600, tenant_idle_s=7_200))
    clock = START.timestamp() + 20 * 60  # after the 20 events, one a minute
    real = telemetry_values("real", 20, seed=0)
    core.process([RawRecord(b"real", v, 0, i) for i, v in enumerate(real)], now=clock)
    for n, junk in enumerate(["j1", "j2"]):
        core.process(
            [RawRecord(junk.encode(), telemetry_values(junk, 1, seed=n)[0], 1, n)], now=clock
        )
    # Ten minutes on, junk on probation has gone; the protected tenant stays.
    result = core.process(
        [RawRecord(b"new", telemetry_values("new", 1, seed=9)[0], 1, 5)], now=clock + 601
    )
    assert result.dead_letters == [] and core.tenant("new") is not None
    assert core.tenant("j1") is None and core.tenant("j2") is None
    assert core.tenant("real") is not None and core.expired == 2
    # Two hours without an event: the protected tenant leaves too.
    core.process(
        [RawRecord(b"new", telemetry_values("new", 1, seed=9)[0], 1, 6)], now=clock + 7_000
    )
    core.process(
        [RawRecord(b"new", telemetry_values("new", 1, seed=9)[0], 1, 7)], now=clock + 7_300
    )
    assert core.tenant("real") is None and core.tenant("new") is not None


def test_new_tenants_are_admitted_at_a_bounded_rate_but_a_replay_is_not_held_to_it() -> None:
    core = IngestCore(config(max_new_tenants_per_min=2))
    clock = START.timestamp()
    recs = [
        RawRecord(f"t{i}".encode(), telemetry_values(f"t{i}", 1, seed=i)[0], 0, i) for i in range(4)
    ]
    result = core.process(recs, now=clock)
    assert [t.tenant for t in core.tenants()] == ["t0", "t1"]
    assert [d.reason for d in result.dead_letters] == [RejectReason.TENANT_CAPACITY] * 2
    assert (
        "max_new_tenants_per_min=2"
        in DeadLetter.from_headers(result.dead_letters[0].headers).detail
    )
    # Half a minute later, one more is due.
    later = [
        RawRecord(f"u{i}".encode(), telemetry_values(f"u{i}", 1, seed=i)[0], 1, i) for i in range(2)
    ]
    assert len(core.process(later, now=clock + 30).dead_letters) == 1
    # A restart's replay rebuilds every tenant it held, however many.
    successor = IngestCore(config(max_new_tenants_per_min=2))
    replay = successor.process(recs, {0: 4}, now=clock)
    assert len(successor) == 4 and replay.dead_letters == []


def test_the_allow_list_refuses_other_tenants_and_the_operator_list_is_always_admitted() -> None:
    core = IngestCore(
        config(tenant_allow=r"acme|globex-[a-z]+", max_tenants=1, tenant_admit=frozenset({"vip"}))
    )
    recs = [
        RawRecord(name.encode(), telemetry_values(name, 1, seed=i)[0], 0, i)
        for i, name in enumerate(["acme", "globex-eu", "acme-x", "vip"])
    ]
    result = core.process(recs, now=START.timestamp())
    assert [d.reason for d in result.dead_letters] == [
        RejectReason.TENANT_CAPACITY,  # globex-eu: allowed, but max_tenants=1 is held
        RejectReason.TENANT_NOT_ALLOWED,
    ]
    assert sorted(t.tenant for t in core.tenants()) == ["acme", "vip"]
    settings = ConsumerSettings(tenant_allow="acme|globex-[a-z]+", tenant_admit="vip, ops")
    assert core_config(settings).tenant_admit == frozenset({"vip", "ops"})
    with pytest.raises(ValueError, match="tenant_allow"):
        ConsumerSettings(tenant_allow="acme(")


def test_a_record_on_another_partition_is_dead_lettered_and_the_window_is_kept() -> None:
    core = IngestCore(config())
    own = telemetry_values("b", 600, seed=0)
    core.process([RawRecord(b"b", v, 3, i) for i, v in enumerate(own)])
    stray = telemetry_values("b", 2, seed=1, start_index=600)
    result = core.process([RawRecord(b"b", stray[0], 5, 0), RawRecord(b"b", stray[1], 3, 600)])
    assert [d.reason for d in result.dead_letters] == [RejectReason.WRONG_PARTITION]
    assert DeadLetter.from_headers(result.dead_letters[0].headers).source_partition == 5
    state = core.tenant("b")
    assert state is not None and state.partition == 3 and len(state.window) == 601
    assert result.next_offsets == {3: 601, 5: 1}  # the stray record is consumed too
    # Within one batch too: the first partition seen binds a new tenant.
    fresh = IngestCore(config())
    mixed = [
        RawRecord(b"c", v, p, i)
        for i, (v, p) in enumerate(zip(telemetry_values("c", 3, seed=2), [1, 2, 1], strict=True))
    ]
    result = fresh.process(mixed)
    assert [DeadLetter.from_headers(d.headers).source_offset for d in result.dead_letters] == [1]
    assert len(fresh.tenant("c").window) == 2  # type: ignore[union-attr]


def test_drop_partitions_forgets_their_tenants() -> None:
    core = IngestCore(config())
    core.process([RawRecord(b"a", telemetry_values("a", 1, seed=0)[0], 0, 0)])
    core.process([RawRecord(b"b", telemetry_values("b", 1, seed=1)[0], 1, 0)])
    assert core.drop_partitions([0]) == 1
    assert core.tenant("a") is None and core.tenant("b") is not None
    assert core.replay_start(0) is None and core.replay_start(1) == 0


def test_a_dropped_partition_frees_its_tenants_places() -> None:
    core = IngestCore(config(max_tenants=2))
    core.process([RawRecord(b"gone", telemetry_values("gone", 1, seed=0)[0], 0, 0)])
    core.drop_partitions([0])
    for n, tenant in enumerate(["n1", "n2", "n3"], start=1):
        result = core.process(
            [RawRecord(tenant.encode(), telemetry_values(tenant, 1, seed=n)[0], 1, n)]
        )
    assert len(core) == 2 and core.tenant("n2") is not None and core.tenant("gone") is None
    assert [d.reason for d in result.dead_letters] == [RejectReason.TENANT_CAPACITY]


def test_requests_do_not_depend_on_where_batches_are_cut() -> None:
    """Repeated cold starts (no request held in flight), data drift, several per tenant
    block: the same requests, ids and windows whatever the batching, down to one event."""
    from simulator.model import DriftPlan, TelemetrySimulator

    simulator = TelemetrySimulator(
        3, 5, drifts=[DriftPlan(1, 500, "data", 2.0), DriftPlan(2, 700, "data", 2.0)]
    )
    recs = [
        RawRecord(key, value, 0, i) for i, (key, value, _m) in enumerate(simulator.events(1_200))
    ]
    cfg = config(cold_start=True, request_timeout_s=0.0, window_max_events=2_000, window_span_s=1e7)
    runs = {
        batch: sorted(run(IngestCore(cfg), recs, batch), key=lambda r: r.source[0].end_offset)
        for batch in (len(recs), 997, 64, 1)
    }
    reference = runs.pop(len(recs))
    reasons = [r.reason for r in reference]
    assert reasons.count("cold_start") >= 6 and "data_drift" in reasons  # repeats included
    for batch, requests in runs.items():
        assert requests == reference, f"batch of {batch} differs"


@pytest.mark.parametrize("interval_s", [60.0, 300.0, 900.0], ids=["1min", "5min", "15min"])
def test_default_settings_give_a_first_model_at_common_telemetry_intervals(
    interval_s: float,
) -> None:
    settings = ConsumerSettings()
    core = IngestCore(core_config(settings))
    sim = TelemetrySimulator(1, seed=3, interval_s=interval_s)
    recs = [RawRecord(key, value, 0, meta.position) for key, value, meta in sim.events(800)]
    cold = [r for r in run(core, recs, batch=200) if r.reason == "cold_start"]
    assert cold and cold[0].n_events == settings.cold_start_min_events
    held = core.tenant(sim.tenants[0])
    # A week of 15-minute events (673) is under 800: the span binds there, not below.
    expected = min(800, int(settings.window_span_s // interval_s) + 1)
    assert held is not None and len(held.window) == expected >= settings.cold_start_min_events


def test_a_request_names_the_tenants_own_offsets_whatever_else_shares_the_partition() -> None:
    core = IngestCore(config(cold_start=True, request_timeout_s=0.0))
    own = telemetry_values("acme", 400, seed=0)
    noise = telemetry_values("noisy", 4_000, seed=1)
    recs, offset, mine = [], 0, []
    for i, value in enumerate(own):
        for j in range(10):
            recs.append(RawRecord(b"noisy", noise[10 * i + j], 0, offset))
            offset += 1
        recs.append(RawRecord(b"acme", value, 0, offset))
        mine.append(offset)
        offset += 1
    requests = [r for r in run(core, recs, batch=500) if r.tenant == "acme"]
    assert requests, "acme asked for its cold start"
    (span,) = requests[0].source
    named = span.own_offsets()
    assert named is not None and named == mine[: len(named)]
    assert span.size() == requests[0].n_events < (span.end_offset - span.start_offset) / 10


def test_a_batch_spanning_more_than_the_idle_span_keeps_its_tenants() -> None:
    """A backtest's chunk covers days of event time: its tenants are not idle."""
    core = IngestCore(config(tenant_idle_s=3_600.0, probation_idle_s=600.0))
    values = telemetry_values("acme", 300, seed=0, interval_s=300.0)  # 25 hours
    clock = START.timestamp()
    for lo in range(0, 300, 100):
        batch = [RawRecord(b"acme", v, 0, lo + i) for i, v in enumerate(values[lo : lo + 100])]
        clock += 100 * 300.0
        core.process(batch, now=clock)
    state = core.tenant("acme")
    assert state is not None and len(state.window) == 300 and core.expired == 0


class _Watching(RawRecord):
    """A record that notes whether the cyclic collector runs while the core reads it."""

    seen: list[bool] = []

    def value(self) -> bytes | None:
        _Watching.seen.append(gc.isenabled())
        return self.value_


def test_the_collector_is_paused_for_a_batch_and_left_as_the_caller_had_it() -> None:
    pairs = [("acme", v) for v in telemetry_values("acme", 20, seed=1)]
    recs = [_Watching(r.key_, r.value_, 0, r.offset_) for r in records(pairs)]
    core = IngestCore(config())
    assert gc.isenabled()
    result = core.process(recs[:10])
    assert result.valid == 10
    assert _Watching.seen == [False] * 10  # paused while the batch was read
    assert gc.isenabled()  # and running again after it
    gc.disable()
    try:
        core.process(recs[10:])
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()
    assert _Watching.seen == [False] * 20
