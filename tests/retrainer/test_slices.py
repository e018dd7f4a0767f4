"""Evaluation by slice (`retrainer.slices`): in the card, on the out-of-fold rows its
headline figures come from, and in `slaops backtest`, beside the prior and the best rule,
with sample sizes, and flagged where the forecaster loses."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import numpy as np
import pytest
from rich.console import Console

from kernel.artifacts import ModelCard
from kernel.model_report.markdown import render_markdown
from retrainer.pipeline import TrainingConfig, judge, train
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from retrainer.slices import Alerting, JudgedRows, evaluate_slices, hour_bands
from slaops.backtest import ForecastSeries
from slaops.backtest_records import TenantEvents
from slaops.backtest_table import (
    RuleInput,
    render_slices,
    score_tenant,
    slice_verdict,
    training_part,
)
from testkit.retrain_data import request_for

CONFIG = TrainingConfig(
    search=SearchConfig(
        grid={"lr": [1e-2], "module__hidden_layers": [0], "module__width": [16]},
        n_jobs=1,
        max_epochs=15,
        n_splits=4,
    ),
    min_rows=100,
)
STEP_S = 300.0
DAY = 288  # five-minute intervals
START = 1_777_507_200.0  # a UTC midnight


def switched(n: int, change: int, seed: int) -> TenantRows:
    """The CPU climbs before every breach until `change`; after it the climbs announce
    nothing and the breaches come unannounced (a concept switch)."""
    rng = np.random.default_rng(seed)
    cpu = np.clip(0.3 + rng.normal(0, 0.03, n), 0, 1)
    labels = np.zeros(n, bool)
    s = 100
    while s < n - 40:
        cpu[s : s + 8] = np.linspace(0.35, 0.95, 8)
        cpu[s + 8 : s + 12] = 0.95
        if s < change:
            labels[s + 6 : s + 12] = True
        else:
            labels[s + 30 : s + 35] = True
        s += int(rng.integers(60, 90))
    p50 = 30 + 40 * cpu + rng.normal(0, 2, n)
    metrics = np.column_stack(
        [p50, p50 * 1.8, p50 * 2.4, np.full(n, 0.01), cpu, 200 + 50 * rng.random(n)]
    ).astype(np.float32)
    return TenantRows(START + STEP_S * np.arange(n), metrics, labels, 0, 0)


@pytest.fixture(scope="module")
def cards() -> tuple[ModelCard, ModelCard]:
    """One training on the switched stream, judged for a drift request and a cold start."""
    n, change = 3_000, 2_000
    rows = switched(n, change, seed=1)
    trained = train(rows, CONFIG)
    drift = request_for("acme", offset=n - 1, reason="data_drift").model_copy(
        update={
            "detector": "adwin",
            "detected_at": datetime.fromtimestamp(float(rows.ts[change]), UTC),
        }
    )
    out = []
    for request in (drift, request_for("acme", offset=n - 1)):
        outcome = judge(trained, request, CONFIG, None)
        assert outcome.artifacts is not None
        out.append(outcome.artifacts.card_model)
    return out[0], out[1]


def test_the_card_flags_the_slice_after_a_change_where_the_forecaster_fails(
    cards: tuple[ModelCard, ModelCard],
) -> None:
    card, _ = cards
    by = {(s.family, s.name): s for s in card.slices}
    before, after = by["change", "before"], by["change", "after"]
    assert before.sufficient and after.sufficient
    # Before the change it warns of every incident; after it, of none, and warns falsely.
    assert before.figures["model"].recall_lead_1 == 1.0
    assert after.figures["model"].warned_lead_1 == 0 and after.figures["model"].false_warnings > 0
    assert "prior.false_warnings" in after.loses_to  # the prior never warns: no worse
    assert not any(loss.startswith("prior.") for loss in before.loses_to)
    # Beside the prior and the best rule other than the forecaster, on the same rows.
    names = set(after.figures)
    assert "prior" in names and card.forecaster not in names - {"model"} and len(names) == 3
    markdown = render_markdown(card, "a" * 64, "b" * 64, {}).decode()
    assert "### By slice" in markdown and "**loses to** prior (false warnings)" in markdown


def test_slices_come_from_the_same_rows_as_the_headline_figures(
    cards: tuple[ModelCard, ModelCard],
) -> None:
    card, cold = cards
    record = card.warning_record
    bands = [s for s in card.slices if s.family == "hour_utc"]
    assert [s.name for s in bands] == ["00-06 UTC", "06-12 UTC", "12-18 UTC", "18-24 UTC"]
    assert sum(s.rows for s in bands) == card.evidence["n"]
    assert sum(s.positives for s in bands) == card.evidence["positives"]
    assert sum(s.fresh_onsets for s in bands) == record["fresh_onsets"]
    assert sum(s.figures["model"].warned_lead_1 for s in bands) == record["warned_lead_1"]
    assert sum(s.figures["model"].false_warnings for s in bands) == record["false_warnings"]
    loads = [s for s in card.slices if s.family == "load"]
    assert [s.name for s in loads] == ["low", "mid", "high"]
    assert sum(s.rows for s in loads) == card.evidence["n"]
    # A cold start names no change: no before and after.
    assert {s.family for s in cold.slices} == {"hour_utc", "load"}
    assert card.lineage["change_ts"] is not None and cold.lineage["change_ts"] is None


def test_a_slice_too_small_to_judge_says_insufficient_evidence() -> None:
    n = 300  # five hours of one-minute events: all in the first band
    labels = np.zeros(n, bool)
    for onset in (100, 200):  # two incidents
        labels[onset : onset + 3] = True
    rows = JudgedRows.of(START + 60.0 * np.arange(n), labels, labels)
    never = Alerting(np.zeros(n, bool), np.full(n, 0.5))
    always = Alerting(np.ones(n, bool), np.full(n, 0.01))
    [first, *rest] = evaluate_slices(rows, always, {"prior": never}, hour_bands(rows.ts))
    assert first["rows"] == n and first["fresh_onsets"] == 2
    assert not first["sufficient"] and first["loses_to"] == []  # worse, but too few to say
    assert slice_verdict(first) == "insufficient evidence"
    assert all(s["rows"] == 0 and not s["sufficient"] for s in rest)


def test_an_older_card_without_slices_still_loads(cards: tuple[ModelCard, ModelCard]) -> None:
    document = json.loads(cards[1].model_dump_json())
    del document["slices"]
    assert ModelCard.model_validate_json(json.dumps(document)).slices == []


def banded(n: int) -> tuple[TenantEvents, list[int]]:
    """Five-minute events with one incident in each 6-hour band of every day; the p99
    latency climbs for three intervals before each (a trend rule can warn of all)."""
    onsets = [day * DAY + band * 72 + 36 for day in range(n // DAY) for band in range(4)]
    onsets = [o for o in onsets if o + 6 < n]
    p99 = np.full(n, 100.0)
    labels = np.zeros(n, bool)
    for o in onsets:
        p99[o - 3 : o] = (200.0, 260.0, 320.0)
        p99[o : o + 3] = 400.0
        labels[o : o + 3] = True
    events = TenantEvents("acme")
    for i in range(n):
        events.offsets.append(i)
        events.stamps.append(START + STEP_S * i)
        events.rows.append((50.0, 90.0, float(p99[i]), 0.01, 0.3, 100.0 + (i % 7)))
        events.flags.append(bool(labels[i]))
    events.finish()
    return events, onsets


def test_the_backtest_flags_the_band_of_the_day_where_slaops_fails() -> None:
    n = 4_000
    events, onsets = banded(n)
    # slaops warns two intervals ahead of every incident but those between 00 and 06 UTC.
    series = ForecastSeries.empty(n)
    series.made[:] = True
    series.proba[:] = 0.05
    for o in onsets:
        if (o % DAY) >= 72:
            series.on[o - 2 : o] = True
            series.proba[o - 2 : o] = 0.9
    score = score_tenant(
        events, series, RuleInput(events.column("latency_p99_ms"), 150.0), 1.0, horizon=6
    )
    by = {s["name"]: s for s in score.slices}
    assert set(by) == {"00-06 UTC", "06-12 UTC", "12-18 UTC", "18-24 UTC", "low", "mid", "high"}
    night = by["00-06 UTC"]
    test_days = (n - training_part(n)) * STEP_S / 86_400
    assert night["sufficient"] and night["fresh_onsets"] >= 5 and night["rows"] >= 50
    assert night["days"] == pytest.approx(test_days / 4, rel=0.05)
    rule = next(name for name in night["figures"] if name not in ("model", "prior"))
    assert night["figures"]["model"]["warned_lead_1"] == 0
    assert night["figures"][rule]["warned_lead_1"] == night["fresh_onsets"]
    assert f"{rule}.recall_lead_1" in night["loses_to"]
    assert f"{rule} (onsets warned)" in slice_verdict(night)
    for band in ("06-12 UTC", "12-18 UTC", "18-24 UTC"):
        assert by[band]["sufficient"] and by[band]["loses_to"] == [], by[band]
        assert slice_verdict(by[band]) == "holds"
    # The backtest prints it: one table per tenant, a verdict per slice.
    out = io.StringIO()
    render_slices(Console(file=out, width=200), score)
    printed = out.getvalue()
    assert "acme: slaops by slice" in printed and "00-06 UTC" in printed
    assert f"loses to prior (log loss), {rule} (onsets warned)" in printed
    # No drift request: no change slices; with one, before and after it.
    changed = score_tenant(
        events,
        series,
        None,
        1.0,
        change_ts=float(events.ts[3_000]),
    )
    names = [s["name"] for s in changed.slices if s["family"] == "change"]
    assert names == ["before", "after"]
