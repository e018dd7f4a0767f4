"""The backtest's table: the definitions of `kernel.early_warning` on each tenant's test part."""

from __future__ import annotations

import numpy as np

from kernel.early_warning import score_warnings
from slaops.backtest import ForecastSeries
from slaops.backtest_records import TenantEvents
from slaops.backtest_table import RuleInput, pooled, score_tenant, training_part

N = 2_000
STEP_S = 300.0


def tenant(name: str, onsets: list[int]) -> TenantEvents:
    events = TenantEvents(name)
    for i in range(N):
        events.offsets.append(i)
        events.stamps.append(1.6e9 + STEP_S * i)
        breach = any(o <= i < o + 3 for o in onsets)
        events.rows.append((50.0, 90.0, 400.0 if breach else 100.0, 0.01, 0.3, 100.0))
        events.flags.append(breach)
    events.finish()
    return events


def warned_ahead(events: TenantEvents, onsets: list[int], lead: int) -> ForecastSeries:
    series = ForecastSeries.empty(N)
    series.made[N // 4 :] = True
    for onset in onsets:
        series.on[onset - lead : onset] = True
    return series


def test_slaops_is_judged_on_the_test_part_with_leads_in_intervals_and_minutes() -> None:
    onsets = [300, 700, 1_100, 1_500, 1_800]
    events = tenant("acme", onsets)
    score = score_tenant(events, warned_ahead(events, onsets, 2), None, 1.0)
    start = training_part(N)
    assert score.test_events == N - start == 1_000 and score.coverage == 1.0
    assert set(score.by_alerting) == {"slaops", "persistence"}  # no metric: no rules
    slaops = score.by_alerting["slaops"]
    assert slaops.record.fresh_onsets == 3  # 1,100, 1,500 and 1,800 are after the start
    assert slaops.record.warned_1 == 3 and slaops.record.warned_3 == 0
    assert slaops.median_lead == 2 and slaops.median_lead_minutes == 2 * STEP_S / 60
    truth = events.labels[start:]
    persistence = score.by_alerting["persistence"].record
    assert persistence == score_warnings(truth, truth, events.ts[start:])
    assert persistence.warned_1 == 0


def test_rules_are_tuned_on_the_training_part_and_judged_after_it() -> None:
    onsets = [300, 700, 1_100, 1_500, 1_800]
    events = tenant("acme", onsets)
    p99 = events.column("latency_p99_ms")
    score = score_tenant(events, warned_ahead(events, onsets, 2), RuleInput(p99, 300.0), 1.0)
    assert set(score.by_alerting) == {
        "slaops",
        "persistence",
        "static_threshold",
        "predict_linear",
        "burn_rate",
    }
    # The metric jumps with the breach itself: no rule can warn ahead of it.
    for rule in ("static_threshold", "predict_linear", "burn_rate"):
        assert score.by_alerting[rule].record.warned_1 == 0


def test_pooled_medians_are_over_every_warned_onset() -> None:
    a_onsets, b_onsets = [1_100, 1_500, 1_800], [1_200]
    a, b = tenant("a", a_onsets), tenant("b", b_onsets)
    scores = [
        score_tenant(a, warned_ahead(a, a_onsets, 2), None, 1.0),
        score_tenant(b, warned_ahead(b, b_onsets, 6), None, 1.0),
    ]
    total = pooled(scores)["slaops"]
    assert total.record.fresh_onsets == 4 and total.record.warned_1 == 4
    assert sorted(total.leads.tolist()) == [2, 2, 2, 6] and total.median_lead == 2
    assert np.isclose(total.record.days, sum(s.by_alerting["slaops"].record.days for s in scores))
