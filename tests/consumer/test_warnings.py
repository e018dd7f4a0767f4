"""Live warnings in the pure core: edges and ids, replays, swaps, evictions, the live budget.

The model is real (`tests.warning_models`: a logistic map of p99 latency in an
`SlaMLP`, round-tripped through the artifact loader), so each stream's p99 column says
where the warning is on: the definitions are `kernel.early_warning`'s.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from consumer.core import BatchResult, CoreConfig, IngestCore
from consumer.live_model import LiveModel
from consumer.observability import ConsumerMetrics
from consumer.warnings import LiveWarnings, live_threshold, quiet_flags, quiet_flags_many
from kernel.artifacts import load_model
from retrainer.pipeline import TrainingConfig, train_and_decide
from retrainer.search import SearchConfig
from schemas import Forecast, WarningCleared, WarningRaised, warning_event_id
from testkit.retrain_data import request_for, telemetry_messages, tenant_rows
from testkit.streams import RawRecord
from testkit.warning_models import POLICY, START, p99_for, p99_model, telemetry

TOPIC = "sla.telemetry"
CALM, HOT = 100.0, 300.0


@dataclass
class Run:
    """What a core emitted over several batches."""

    edges: list[dict[str, Any]] = field(default_factory=list)
    forecasts: list[Forecast] = field(default_factory=list)
    raised: int = 0
    cleared: list[str] = field(default_factory=list)
    false_warnings: int = 0
    errors: int = 0
    scored: int = 0

    def add(self, result: BatchResult) -> None:
        keys = {key for key, _value in result.warnings}
        assert keys <= {b"acme", b"other"}
        self.edges += [json.loads(value) for _key, value in result.warnings]
        self.forecasts += [Forecast.model_validate_json(v) for _k, v in result.forecasts]
        self.raised += result.warnings_raised
        self.cleared += result.warnings_cleared
        self.false_warnings += result.false_warnings
        self.errors += result.forecast_errors
        self.scored += result.forecasts_scored

    def raises(self) -> list[WarningRaised]:
        return [WarningRaised.model_validate_json(json.dumps(e)) for e in self.of("raised")]

    def clears(self) -> list[WarningCleared]:
        return [WarningCleared.model_validate_json(json.dumps(e)) for e in self.of("cleared")]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.edges if e["kind"] == kind]


def make_core(**config: Any) -> IngestCore:
    return IngestCore(CoreConfig(cold_start=False, data_drift=False, **config))


def records(values: list[bytes], tenant: str = "acme", partition: int = 0) -> list[RawRecord]:
    return [RawRecord(tenant.encode(), v, partition, i) for i, v in enumerate(values)]


def feed(
    core: IngestCore,
    recs: list[RawRecord],
    cuts: list[int] | None = None,
    replay_below: dict[int, int] | None = None,
    now: float | None = None,
) -> Run:
    run = Run()
    edges = [0, *(cuts or []), len(recs)]
    for lo, hi in zip(edges, edges[1:], strict=False):
        if hi > lo:
            run.add(core.process(recs[lo:hi], replay_below, now=now))
    return run


def incident_stream(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A warned incident (hot from 100, breaching 105-109) and a false alarm at 200-203."""
    p99, breached = np.full(n, CALM), np.zeros(n, bool)
    p99[100:110] = HOT
    breached[105:110] = True
    p99[200:204] = HOT
    return p99, breached


def wid(model: LiveModel, offset: int, tenant: str = "acme") -> str:
    return warning_event_id(tenant, model.revision, TOPIC, 0, offset)


@pytest.mark.parametrize(
    "cuts", [[], [1, 50, 100, 101, 105, 150, 203, 204, 250], list(range(7, 300, 7))]
)
def test_edges_their_ids_and_contents_do_not_depend_on_the_batching(cuts: list[int]) -> None:
    model = p99_model("acme")
    core = make_core(publish_forecasts=True)
    core.apply_model(model)
    recs = records(telemetry("acme", *incident_stream()))
    run = feed(core, recs, cuts)

    assert [(e["kind"], e["warning_id"]) for e in run.edges] == [
        ("raised", wid(model, 100)),
        ("cleared", wid(model, 100)),
        ("raised", wid(model, 200)),
        ("cleared", wid(model, 200)),
    ]
    first, second = run.raises()
    assert first.ts == START + timedelta(minutes=100)
    assert first.probability >= 0.99 and first.tenant == "acme"
    assert (first.horizon, first.horizon_s, first.forecaster) == (6, 360.0, "mlp")
    assert (first.model_revision, first.model_version) == (model.revision, 1)
    record = POLICY["out_of_fold"]
    assert first.policy.model_dump() == {
        "threshold": 0.5,
        "recall_lead_1": record["recall_lead_1"],
        "recall_lead_3": record["recall_lead_3"],
        "median_lead": record["median_lead"],
        "false_per_day": record["false_per_day"],
    }
    breach, passed = run.clears()
    assert (breach.reason, breach.ts) == ("breach_started", START + timedelta(minutes=105))
    assert (passed.reason, passed.ts) == ("risk_passed", START + timedelta(minutes=204))
    assert passed.model_revision == model.revision
    assert (run.raised, run.cleared) == (2, ["breach_started", "risk_passed"])
    # The notification at 200 had no breach in the 12 intervals after it; 100's had.
    assert run.false_warnings == 1
    # `breach_expected` is the warning: on at 100-104 and 200-203 only.
    expected = [f.ts for f in run.forecasts if f.breach_expected]
    on = [*range(100, 105), *range(200, 204)]
    assert expected == [START + timedelta(minutes=i) for i in on]
    assert len(run.forecasts) == 300


def test_a_policy_that_never_warns_and_an_old_card_without_a_quiet_feature() -> None:
    never = make_core(publish_forecasts=True)
    never.apply_model(p99_model("acme", threshold=1.0))
    run = feed(never, records(telemetry("acme", *incident_stream())))
    assert run.edges == [] and not any(f.breach_expected for f in run.forecasts)

    old = p99_model("acme", target="at")
    assert old.card.format_version == 2 and "quiet" not in old.card.feature_order
    core = make_core()
    core.apply_model(old)
    run = feed(core, records(telemetry("acme", *incident_stream())), [104, 106])
    assert [(e["kind"], e["warning_id"]) for e in run.edges] == [
        ("raised", wid(old, 100)),
        ("cleared", wid(old, 100)),
        ("raised", wid(old, 200)),
        ("cleared", wid(old, 200)),
    ]
    (raised, _later) = run.raises()
    # A card without a policy: the facts are its threshold and nothing measured.
    assert raised.policy.model_dump() == {
        "threshold": 0.5,
        "recall_lead_1": None,
        "recall_lead_3": None,
        "median_lead": None,
        "false_per_day": None,
    }


@pytest.mark.parametrize("cuts", [[], [1, 7, 44, 45, 49, 50, 51, 94]])
def test_a_within_card_is_scored_against_any_breach_within_the_horizon(cuts: list[int]) -> None:
    p99, breached = np.full(100, HOT), np.zeros(100, bool)
    breached[50] = True
    results = {}
    for target in ("within", "at"):
        core = make_core()
        core.apply_model(p99_model("acme", target=target, horizon=6))
        run = feed(core, records(telemetry("acme", p99, breached)), cuts)
        results[target] = (run.scored, run.errors)
    # Every forecast is >= the threshold. 94 are scored (the last 6 wait for labels):
    # "within", those made at 44-49 saw the breach at 50 within 6; "at", only 44's.
    assert results == {"within": (94, 94 - 6), "at": (94, 94 - 1)}


def test_replayed_events_rebuild_the_warning_and_send_nothing_again() -> None:
    model = p99_model("acme")
    recs = records(telemetry("acme", *incident_stream()))
    ours = make_core()
    ours.apply_model(model)
    before = feed(ours, recs[:202], [60, 130])
    assert ours.tenant("acme").warning.on  # type: ignore[union-attr]
    # A restart: a new core replays the partition from the start; offsets below 202
    # were handled before it.
    restarted = make_core()
    restarted.apply_model(model)
    after = feed(restarted, recs, [101, 202], replay_below={0: 202})
    assert [e["reason"] for e in after.edges] == ["risk_passed"]
    assert after.edges[0]["warning_id"] == wid(model, 200)
    assert after.raised == 0 and after.false_warnings == 1  # known at 212, after the restart
    oracle_core = make_core()
    oracle_core.apply_model(model)
    oracle = feed(oracle_core, recs)
    assert before.edges + after.edges == oracle.edges


def test_a_model_swap_clears_the_warning_and_the_new_model_raises_its_own() -> None:
    first, second = p99_model("acme"), p99_model("acme", version=2)
    core = make_core()
    core.apply_model(first)
    recs = records(telemetry("acme", *incident_stream()))
    feed(core, recs[:202])
    core.apply_model(second)
    run = feed(core, recs[202:])
    assert [(e["kind"], e["warning_id"], e.get("reason")) for e in run.edges] == [
        ("cleared", wid(first, 200), "model_swapped"),
        ("raised", wid(second, 202), None),
        ("cleared", wid(second, 202), "risk_passed"),
    ]
    swapped = run.clears()[0]
    assert swapped.model_revision == first.revision
    assert swapped.ts == START + timedelta(minutes=201)  # the tenant's last event
    assert run.cleared == ["model_swapped", "risk_passed"]
    # An older version is no swap: nothing is cleared.
    core.apply_model(first)
    assert core.take_warnings().warnings == []


def test_a_tenant_that_leaves_has_its_warning_cleared_and_a_revoked_one_keeps_it() -> None:
    model = p99_model("acme")
    recs = records(telemetry("acme", *incident_stream()))
    core = make_core(tenant_idle_s=3_600)
    core.apply_model(model)
    last = (START + timedelta(minutes=201)).timestamp()
    feed(core, recs[:202], now=last)
    other = records(telemetry("other", np.full(3, CALM), np.zeros(3, bool)), "other", 1)
    run = feed(core, other, now=last + 3_601)  # acme has been idle for tenant_idle_s
    assert core.tenant("acme") is None
    (cleared,) = run.clears()
    assert (cleared.warning_id, cleared.reason, cleared.tenant) == (
        wid(model, 200),
        "tenant_left",
        "acme",
    )
    assert run.cleared == ["tenant_left"]

    # A revoked partition is no tenant leaving: its warning moves with the partition,
    # and the next owner's replay rebuilds it as on, under the same id, sending nothing.
    core = make_core()
    core.apply_model(model)
    feed(core, recs[:202])
    assert core.drop_partitions([0]) == 1
    assert core.take_warnings().warnings == []
    successor = make_core()
    successor.apply_model(model)
    replayed = successor.process(recs[:202], {0: 202})
    assert replayed.warnings == []
    state = successor.tenant("acme")
    assert state is not None and state.warning.on and state.warning.warning_id == wid(model, 200)


# -- the live budget ----------------------------------------------------------------
#: False alarms: two events at p = 0.7 every 40 events from 50 on, no breach ever.
SPIKES = [50 + 40 * k for k in range(42)]
DAY = 1_440  # one-minute events


def false_alarms(n: int = 1_700) -> list[RawRecord]:
    p99 = np.full(n, CALM)
    for start in SPIKES:
        p99[start : start + 2] = p99_for(0.7)
    return records(telemetry("acme", p99[:n], np.zeros(n, bool)))


def samples(metrics: ConsumerMetrics) -> dict[str, float | None]:
    registry = metrics.registry
    return {
        "false": registry.get_sample_value("slaops_consumer_false_warnings_total"),
        "raised": registry.get_sample_value("slaops_consumer_warnings_raised_total"),
        "over": registry.get_sample_value("slaops_consumer_tenants_over_budget"),
        "risk_passed": registry.get_sample_value(
            "slaops_consumer_warnings_cleared_total", {"reason": "risk_passed"}
        ),
    }


@pytest.mark.parametrize("size", [1_700, 37])
def test_false_warnings_over_budget_raise_the_threshold_and_say_so(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core(warning_budget_per_day=1.0)
    model = p99_model("acme")
    core.apply_model(model)
    metrics = ConsumerMetrics(core=core, refresh_s=0.0)
    recs = false_alarms()
    run = Run()
    caplog.set_level(logging.INFO, logger="consumer.warnings")
    for start in range(0, len(recs), size):
        result = core.process(recs[start : start + size])
        metrics.batch(recs[start : start + size], result, 0.0)
        run.add(result)
        if start + size <= 200 < start + 2 * size:
            assert samples(metrics)["over"] == 1.0
    # The 2nd false warning (known at 102) was over budget: 0.5 -> 0.62 still warns at
    # 0.7; the 3rd (142): 0.73 silences the spikes. A day after that step (1582) the
    # threshold steps back, the spikes warn again, and the 2nd false of that day (1662)
    # raises it once more.
    raised = [int(r.ts.timestamp() - START.timestamp()) // 60 for r in run.raises()]
    assert raised == [50, 90, 130, 1610, 1650]
    assert run.false_warnings == 5
    warning = core.tenant("acme").warning  # type: ignore[union-attr]
    assert warning.steps == 2 and warning.over_budget
    assert samples(metrics) == {"false": 5.0, "raised": 5.0, "over": 1.0, "risk_passed": 5.0}
    steps = [r.getMessage() for r in caplog.records if "warning threshold" in r.getMessage()]
    assert len(steps) == 4
    assert "raised: over budget tenant=acme threshold=0.6225" in steps[0]
    assert "threshold=0.7311" in steps[1] and "false_warnings=3" in steps[1]
    assert "lowered: back within budget tenant=acme threshold=0.6225" in steps[2]
    assert "raised: over budget" in steps[3] and "false_warnings=2" in steps[3]


def test_the_budget_state_is_rebuilt_by_a_replay_and_reset_by_a_swap() -> None:
    recs = false_alarms()
    model = p99_model("acme")
    oracle = make_core()
    oracle.apply_model(model)
    whole = feed(oracle, recs)
    restarted = make_core()
    restarted.apply_model(model)
    after = feed(restarted, recs, [500, 1_000, 1_300], replay_below={0: 1_000})
    assert [e for e in whole.edges if e["ts"] >= after.edges[0]["ts"]] == after.edges
    ours = restarted.tenant("acme").warning  # type: ignore[union-attr]
    theirs = oracle.tenant("acme").warning  # type: ignore[union-attr]
    assert (ours.steps, ours.changed_at, list(ours.false_ts)) == (
        theirs.steps,
        theirs.changed_at,
        list(theirs.false_ts),
    )

    core = make_core()
    core.apply_model(model)
    feed(core, recs[:200])
    assert core.tenant("acme").warning.steps == 2  # type: ignore[union-attr]
    core.apply_model(p99_model("acme", version=2))
    run = feed(core, recs[200:240])
    assert core.tenant("acme").warning.steps == 0  # type: ignore[union-attr]
    assert [e["kind"] for e in run.edges] == ["raised", "cleared"]  # the spike at 210


def test_the_live_threshold_moves_by_logit_steps_and_never_passes_one() -> None:
    assert live_threshold(0.3, 0) == 0.3
    assert live_threshold(0.5, 1) == pytest.approx(1 / (1 + np.exp(-0.5)))
    steps = [live_threshold(0.2, k) for k in range(0, 200, 10)]
    assert steps == sorted(steps) and all(t <= 1.0 for t in steps)
    assert live_threshold(0.0, 3) > 0.0


def test_a_trained_forecaster_warns_by_its_card_and_its_edges_are_its_forecasts_flips() -> None:
    """A card as the retrainer writes it (format 3, its own policy), served live."""
    search = SearchConfig(
        grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [16]},
        n_jobs=1,
        max_epochs=15,
        n_splits=3,
    )
    outcome = train_and_decide(
        tenant_rows(2_000, seed=3), request_for("acme"), TrainingConfig(search, min_rows=100), None
    )
    assert outcome.artifacts is not None
    module, card = load_model(outcome.artifacts.card, outcome.artifacts.safetensors, "safetensors")
    assert card.target == "within" and card.warns
    model = LiveModel("acme", "a" * 40, 1, "0" * 32, module=module, card=card)
    core = make_core(publish_forecasts=True)
    core.apply_model(model)
    messages = telemetry_messages("acme", tenant_rows(3_000, seed=5))
    recs = [RawRecord(key, value, 0, i) for i, (key, value) in enumerate(messages)]
    run = feed(core, recs, list(range(250, 3_000, 250)))
    assert len(run.forecasts) == 3_000 and run.raised > 0
    flags = [False] + [f.breach_expected for f in run.forecasts]
    rises = [run.forecasts[i].ts for i in range(3_000) if flags[i + 1] and not flags[i]]
    falls = [run.forecasts[i].ts for i in range(3_000) if flags[i] and not flags[i + 1]]
    assert [r.ts for r in run.raises()] == rises
    assert [c.ts for c in run.clears()] == falls
    record = card.warning["out_of_fold"]
    for raised in run.raises():
        assert raised.forecaster == card.forecaster and raised.horizon == card.horizon
        assert raised.policy.recall_lead_1 == record["recall_lead_1"]
        assert raised.probability >= card.threshold - 1e-6


def test_quiet_flags_of_many_tenants_at_once_are_each_tenants_own() -> None:
    rng = np.random.default_rng(7)
    for _trial in range(200):
        tenants = int(rng.integers(1, 6))
        befores = [rng.random(int(rng.integers(0, 20))) < 0.2 for _ in range(tenants)]
        blocks = [rng.random(int(rng.integers(1, 30))) < 0.15 for _ in range(tenants)]
        together = quiet_flags_many(befores, blocks)
        assert len(together) == tenants
        for before, labels, flags in zip(befores, blocks, together, strict=True):
            assert flags.tolist() == quiet_flags(before, labels).tolist()


def budget_stream(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Calm stretches with hot spells, some followed by a breach, some not (false ones)."""
    rng = np.random.default_rng(seed)
    p99, breached = np.full(n, CALM), np.zeros(n, bool)
    for start in rng.choice(np.arange(20, n - 30), size=n // 40, replace=False).tolist():
        p99[start : start + int(rng.integers(1, 8))] = HOT
        if rng.random() < 0.4:
            breached[start + 3 : start + 3 + int(rng.integers(1, 4))] = True
    return p99, breached


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_idle_warnings_shortcut_leaves_every_state_and_edge_as_the_full_path(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning off, at the card's threshold, and left off by the block takes a few array
    operations (`LiveWarnings._stays_off`): its state after each batch, every edge, false
    warning and step of the budget, are what the event-by-event path gives."""
    recs = records(telemetry("acme", *budget_stream(seed)))
    rng = np.random.default_rng(seed)
    cuts = sorted(set(rng.integers(1, len(recs), size=40).tolist()))
    runs = []
    for shortcut in (True, False):
        if not shortcut:
            monkeypatch.setattr(LiveWarnings, "_stays_off", lambda *_args: False)
        core = make_core(publish_forecasts=True, warning_budget_per_day=0.0)
        core.apply_model(p99_model("acme"))
        run, states = Run(), []
        for lo, hi in zip([0, *cuts], [*cuts, len(recs)], strict=True):
            run.add(core.process(recs[lo:hi]))
            warning = core.tenant("acme").warning  # type: ignore[union-attr]
            states.append(
                (
                    warning.warning_id,
                    warning.run,
                    warning.steps,
                    warning.changed_at,
                    list(warning.false_ts),
                    warning.recent_sent.tolist(),
                    warning.recent_labels.tolist(),
                    warning.recent_ts.tolist(),
                    warning.last_ts,
                )
            )
        runs.append((run, states))
    (fast, fast_states), (full, full_states) = runs
    assert fast_states == full_states
    assert fast.edges == full.edges and fast.false_warnings == full.false_warnings
    assert [f.model_dump() for f in fast.forecasts] == [f.model_dump() for f in full.forecasts]
    # The stream exercises both paths: warnings raised, judged false, the budget stepped.
    assert fast.raised >= 3 and fast.false_warnings >= 1
    assert max(state[2] for state in fast_states) >= 1
