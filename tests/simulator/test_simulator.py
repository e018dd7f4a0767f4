"""`slaops simulate`: seeded, valid where it should be, drifting exactly where planned."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kernel.errors import ConfigError
from kernel.settings import load_settings
from schemas import FEATURES, InvalidTelemetry, TelemetryEvent, parse_telemetry
from simulator.main import Pacer, build_simulator
from simulator.malformed import EXPECTED_REJECT, MalformedKind
from simulator.model import DriftPlan, EventMeta, TelemetrySimulator
from simulator.settings import DriftSpec, SimulatorSettings
from slaops.runner import run_simulator
from testkit.kafka_helpers import read_topic

Record = tuple[bytes, bytes, EventMeta]
N = 2_000
AT = 1_000


def records(sim: TelemetrySimulator, n: int = N) -> list[Record]:
    return list(sim.events(n))


def parsed(recs: list[Record], tenant: str) -> list[TelemetryEvent]:
    return [parse_telemetry(k, v) for k, v, m in recs if m.tenant == tenant]


def column(events: list[TelemetryEvent], name: str) -> np.ndarray:
    return np.array([getattr(e, name) for e in events], dtype=float)


def metrics(event: TelemetryEvent) -> dict[str, object]:
    return event.model_dump(exclude={"sla_breached"})


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def stream(seed: int, n: int = 300) -> list[tuple[bytes, bytes]]:
        sim = TelemetrySimulator(3, seed, malformed_rate=0.1, drifts=[DriftPlan(1, 100)])
        return [(k, v) for k, v, _ in sim.events(n)]

    assert stream(7) == stream(7)
    assert stream(7) != stream(8)
    assert stream(7, 900)[:900] == stream(7)  # a shorter stream is a prefix of a longer one


def test_round_robin_tenants_in_event_time() -> None:
    sim = TelemetrySimulator(3, 0, interval_s=30.0)
    metas = [m for _, _, m in sim.events(4)]
    assert [m.tenant for m in metas[:3]] == ["tenant-000", "tenant-001", "tenant-002"]
    assert [m.position for m in metas] == list(range(12))
    assert [m.index for m in metas[::3]] == [0, 1, 2, 3]
    assert metas[3].ts - metas[0].ts == sim.event_time(1) - sim.event_time(0)
    assert (sim.event_time(1) - sim.event_time(0)).total_seconds() == 30.0


def test_valid_records_parse_and_malformed_ones_are_rejected_for_their_reason() -> None:
    sim = TelemetrySimulator(3, 1, malformed_rate=0.2)
    recs = records(sim, 700)
    malformed = [m.malformed for _, _, m in recs if m.malformed is not None]
    assert 0.17 < len(malformed) / len(recs) < 0.23
    assert set(malformed) == set(MalformedKind)  # every kind shows up
    for key, value, meta in recs:
        if meta.malformed is None:
            event = parse_telemetry(key, value)
            assert event.tenant == meta.tenant and event.ts == meta.ts
            assert event.sla_breached == meta.breached
        else:
            with pytest.raises(InvalidTelemetry) as info:
                parse_telemetry(key, value)
            assert info.value.reason == EXPECTED_REJECT[meta.malformed], meta


def test_malformed_records_leave_the_valid_stream_untouched() -> None:
    clean = records(TelemetrySimulator(3, 2), 500)
    dirty = records(TelemetrySimulator(3, 2, malformed_rate=0.3), 500)
    assert [m.position for *_, m in dirty] == [m.position for *_, m in clean]
    for (k, v, m), (ck, cv, _) in zip(dirty, clean, strict=True):
        if m.malformed is None:
            assert (k, v) == (ck, cv)


@pytest.mark.parametrize("seed", range(5))
def test_breach_rate_is_moderate_for_every_tenant(seed: int) -> None:
    sim = TelemetrySimulator(3, seed)
    recs = records(sim)
    for tenant in sim.tenants:
        rate = float(np.mean(column(parsed(recs, tenant), "sla_breached")))
        assert 0.05 < rate < 0.40, (tenant, rate)


@pytest.mark.parametrize("seed", range(3))
def test_next_breach_is_predictable_from_current_metrics(seed: int) -> None:
    sim = TelemetrySimulator(3, seed)
    recs = records(sim)
    for tenant in sim.tenants:
        events = parsed(recs, tenant)
        x = np.log1p(np.column_stack([column(events, f) for f in FEATURES]))[:-1]
        y = column(events, "sla_breached")[1:]
        model = make_pipeline(StandardScaler(), LogisticRegression())
        # Contiguous folds, never shuffled: no peeking at neighbouring intervals.
        scores = cross_val_predict(model, x, y, cv=KFold(5), method="predict_proba")[:, 1]
        assert roc_auc_score(y, scores) > 0.75, tenant


def test_concept_drift_changes_only_the_drifted_tenants_labels_after_at_event() -> None:
    base = records(TelemetrySimulator(3, 3))
    drifted = records(TelemetrySimulator(3, 3, drifts=[DriftPlan("tenant-001", AT, "concept")]))
    labels, base_labels = [], []
    for (k, v, m), (bk, bv, bm) in zip(drifted, base, strict=True):
        event, before = parse_telemetry(k, v), parse_telemetry(bk, bv)
        assert metrics(event) == metrics(before)  # the metric distribution is unchanged
        if m.tenant != "tenant-001" or m.index < AT:
            assert (k, v) == (bk, bv) and m.drift is None
        else:
            assert m.drift == "concept"
            labels.append(m.breached)
            base_labels.append(bm.breached)
    rate, base_rate = float(np.mean(labels)), float(np.mean(base_labels))
    assert rate > base_rate + 0.2, (rate, base_rate)


def test_data_drift_shifts_the_drifted_tenants_metrics_after_at_event() -> None:
    base = records(TelemetrySimulator(3, 4))
    drifted = records(TelemetrySimulator(3, 4, drifts=[DriftPlan(2, AT, "data", 1.0)]))
    for (k, v, m), (bk, bv, _) in zip(drifted, base, strict=True):
        if m.tenant != "tenant-002" or m.index < AT:
            assert (k, v) == (bk, bv) and m.drift is None
        else:
            assert m.drift == "data"
    for tenant in ("tenant-000", "tenant-001", "tenant-002"):
        now = parsed(drifted, tenant)[AT:]
        then = parsed(base, tenant)[AT:]
        ratio = column(now, "latency_p50_ms").mean() / column(then, "latency_p50_ms").mean()
        errors = column(now, "error_rate").mean() / column(then, "error_rate").mean()
        if tenant == "tenant-002":
            assert ratio == pytest.approx(1.6, rel=0.01) and errors > 2.5
        else:
            assert ratio == 1.0 and errors == 1.0


def test_both_kinds_and_the_schedule_say_where_drift_starts() -> None:
    sim = TelemetrySimulator(3, 5, drifts=[DriftPlan(0, 300, "both"), DriftPlan(2, 100, "data")])
    first: dict[str, EventMeta] = {}
    for _, _, m in sim.events(400):
        if m.drift is not None:
            first.setdefault(m.tenant, m)
    schedule = sim.schedule()
    assert [s.tenant for s in schedule] == ["tenant-002", "tenant-000"]  # stream order
    for planned in schedule:
        meta = first[planned.tenant]
        assert (meta.index, meta.ts, meta.position) == (
            planned.at_event,
            planned.ts,
            planned.position,
        )
        assert meta.drift == planned.kind


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drifts": [DriftPlan(3, 10)]}, "tenant 3"),
        ({"drifts": [DriftPlan("tenant-x", 10)]}, "tenant-x"),
        ({"malformed_rate": 1.5}, "malformed_rate"),
        ({"interval_s": 0.0}, "interval_s"),
    ],
)
def test_simulator_refuses_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TelemetrySimulator(3, 0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "match"),
    [((1, -1), "at_event"), ((1, 5, "sideways"), "kind"), ((1, 5, "data", 0.0), "magnitude")],
)
def test_drift_plan_refuses_bad_values(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DriftPlan(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"tenants": 0}, "tenants"),
        ({"malformed_rate": 1.5}, "malformed_rate"),
        ({"rate": -1}, "rate"),
        ({"interval_s": 0}, "interval_s"),
        ({"start": "2026-01-01T00:00:00"}, "start"),
        ({"telemetry_topic": "no spaces"}, "telemetry_topic"),
        ({"drift": [{"tenant": 3, "at_event": 1}]}, "drift .*tenants are 0..2"),
        ({"drift": [{"tenant": "tenant-007", "at_event": 1}]}, "drift .*tenant-007"),
        ({"drift": [{"tenant": 0, "at_event": 2_000}]}, "drift .*never happens"),
        ({"drift": [{"tenant": 0, "at_event": 1, "kind": "sideways"}]}, "drift"),
        ({"drift": [{"tenant": 0, "at_event": 1, "magnitude": 3}]}, "drift"),
        ({"drift": [{"tenant": 0, "at_event": 1, "when": "now"}]}, "drift"),
    ],
)
def test_bad_settings_fail_naming_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(SimulatorSettings, overrides)


def test_drift_comes_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLAOPS_DRIFT", '[{"tenant": "tenant-001", "at_event": 5, "kind": "both"}]')
    settings = load_settings(SimulatorSettings, {})
    assert settings.drift_plans() == [DriftPlan("tenant-001", 5, "both", 1.0)]


def test_pacer_holds_the_rate() -> None:
    pacer, stop = Pacer(500.0), threading.Event()
    started = time.monotonic()
    assert all(pacer.acquire(stop) for _ in range(200))
    assert time.monotonic() - started >= (200 - pacer.burst) / 500.0 * 0.9
    stop.set()
    assert not pacer.acquire(stop) and not Pacer(0.0).acquire(stop)


@pytest.mark.integration
def test_run_simulator_sends_every_record_keyed_by_tenant(
    bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = SimulatorSettings(
        bootstrap_servers=bootstrap,
        telemetry_topic=unique_name("telemetry"),
        telemetry_partitions=2,
        tenants=3,
        events_per_tenant=200,
        seed=11,
        malformed_rate=0.05,
        drift=[DriftSpec(tenant=1, at_event=100)],
    )
    assert run_simulator(settings, threading.Event()) == 0
    expected = records(build_simulator(settings), 200)
    assert sum(m.malformed is not None for *_, m in expected) > 10
    found = read_topic(bootstrap, settings.telemetry_topic, expect=600, partitions=2)
    # Every record arrives once, byte for byte (an empty value reads back as None).
    assert Counter((m.key(), m.value() or b"") for m in found) == Counter(
        (k, v) for k, v, _ in expected
    )
    partitions: dict[bytes | None, set[int | None]] = {}
    for message in found:
        partitions.setdefault(message.key(), set()).add(message.partition())
    assert set(partitions) == {b"tenant-000", b"tenant-001", b"tenant-002"}
    assert all(len(p) == 1 for p in partitions.values())  # a tenant stays on one partition
