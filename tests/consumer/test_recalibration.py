"""Live recalibration: published probabilities follow the outcomes; warnings do not move."""

from __future__ import annotations

import json
import math

import numpy as np
from confluent_kafka import Message

from consumer.core import IngestCore
from consumer.recalibration import (
    _FIT_ROWS,
    MIN_ROWS,
    Recalibration,
    RecalibrationPlan,
    _fit,
    finish_all,
    solve,
)
from testkit.live_models import LEARNT_MS, Published, core_with, load, messages
from testkit.retrain_data import tenant_rows

HORIZON = 6
#: A calmer tenant: the same metrics breach only above a higher p99 than acme learnt.
CALMER_MS = 1.4 * LEARNT_MS


def scored_stream(recal: Recalibration, p: np.ndarray, y: np.ndarray, quiet: np.ndarray) -> None:
    """Feed forecasts `p` (made at each event) whose outcomes `y` arrive HORIZON later."""
    n = len(p)
    scored = np.arange(HORIZON, n)
    recal.apply(
        p, quiet, scored, p[scored - HORIZON], quiet[scored - HORIZON], y[scored - HORIZON], HORIZON
    )


def test_the_offset_is_the_log_odds_the_outcomes_moved_and_zero_when_they_did_not() -> None:
    rng = np.random.default_rng(0)
    n = 3_000
    p = np.full(n, 0.4)
    quiet = np.ones(n, bool)
    over = Recalibration(288)
    scored_stream(over, p, (rng.random(n) < 0.1).astype(float), quiet)
    moved = math.log(0.1 / 0.9) - math.log(0.4 / 0.6)
    assert abs(over.offsets[1] - moved) < 0.45 and over.offsets[0] == 0.0  # no busy rows
    held = Recalibration(288)
    scored_stream(held, p, (rng.random(n) < 0.4).astype(float), quiet)
    assert abs(held.offsets[1]) < 0.35


def test_many_tenants_refitted_together_get_what_each_gets_alone() -> None:
    # Tenants of different histories, one with nothing scored yet (an empty ring, last).
    rng = np.random.default_rng(1)
    streams = []
    for n, rate in ((700, 0.1), (90, 0.5), (400, 0.02)):
        p = rng.uniform(0.05, 0.6, n)
        streams.append((p, (rng.random(n) < rate).astype(float), rng.random(n) < 0.7))
    fresh = np.full(5, 0.3)
    alone, together = [], []
    for p, y, quiet in streams:
        recal = Recalibration(288)
        scored_stream(recal, p[:-50], y[:-50], quiet[:-50])
        alone.append((recal, p[-50:], y[-50:], quiet[-50:]))
        twin = Recalibration(288)
        scored_stream(twin, p[:-50], y[:-50], quiet[:-50])
        together.append(twin)
    expected = [recal.apply(p, q, np.arange(50), p, q, y, HORIZON) for recal, p, y, q in alone] + [
        Recalibration(288).apply(
            fresh, np.ones(5, bool), np.arange(0), fresh[:0], fresh[:0], fresh[:0], HORIZON
        )
    ]
    plans = [
        twin.plan(p, q, np.arange(50), p, q, y, HORIZON)
        for twin, (_r, p, y, q) in zip(together, alone, strict=True)
    ]
    plans.append(
        Recalibration(288).plan(
            fresh, np.ones(5, bool), np.arange(0), fresh[:0], fresh[:0], fresh[:0], HORIZON
        )
    )
    solve(plans)
    for plan, want in zip(plans, expected, strict=True):
        np.testing.assert_allclose(plan.finish(), want, rtol=0, atol=1e-12)
    assert any(abs(o) > 0.1 for recal, *_ in alone for o in recal.offsets)


def test_rings_fitted_a_chunk_at_a_time_get_what_each_gets_alone_bit_for_bit() -> None:
    """More rings than one chunk holds, young and full, each fitted alone for reference:
    which rings share a chunk changes no bit of any offset."""
    rng = np.random.default_rng(7)
    recent = 288
    count = 3 * (_FIT_ROWS // recent) + 5
    sizes = rng.integers(0, 2 * recent, size=count)
    z = rng.normal(-1.0, 2.0, int(sizes.sum()))
    y = (rng.random(len(z)) < 0.2).astype(np.float64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    ends = np.array([int(rng.integers(0, size + 1)) for size in sizes])
    together = _fit(z, y, ends, recent, starts)
    for i in range(count):
        ring = slice(int(starts[i]), int(starts[i] + sizes[i]))
        alone = _fit(z[ring], y[ring], ends[i : i + 1], recent, np.zeros(1, dtype=np.int64))
        assert together[i].tobytes() == alone.tobytes(), i
    assert (together != 0).sum() > count // 2  # most were fitted, not left at 0


def test_fewer_scored_forecasts_than_the_minimum_leave_the_probabilities_alone() -> None:
    recal = Recalibration(288)
    p = np.full(MIN_ROWS + HORIZON - 1, 0.4)
    quiet = np.ones(len(p), bool)
    scored = np.arange(HORIZON, len(p))
    out = recal.apply(
        p,
        quiet,
        scored,
        p[scored - HORIZON],
        quiet[scored - HORIZON],
        np.zeros(len(scored)),
        HORIZON,
    )
    np.testing.assert_array_equal(out, p)
    assert recal.offsets == [0.0, 0.0]


def within(labels: np.ndarray, horizon: int) -> np.ndarray:
    breaches = np.concatenate(([0], np.cumsum(labels)))
    index = np.arange(len(labels))
    return breaches[np.minimum(index + horizon, len(labels) - 1) + 1] - breaches[index + 1] > 0


def read_forecasts(records: list[tuple[bytes, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    documents = [json.loads(value) for _key, value in records]
    return (
        np.array([d["probability"] for d in documents]),
        np.array([d["breach_expected"] for d in documents]),
    )


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(np.where(y, np.log(q), np.log1p(-q))))


def test_a_calmer_tenant_gets_lower_probabilities_and_the_same_warnings(
    published: Published,
) -> None:
    model = load(published)
    n = 1_500
    stream = messages(13, CALMER_MS, n)
    labels = tenant_rows(n, seed=13, threshold_ms=CALMER_MS).labels
    live, live_on = published_of(core_with(model, publish_forecasts=True), stream, n)
    raw, raw_on = published_of(
        core_with(model, publish_forecasts=True, recalibration_events=0), stream, n
    )
    y = within(labels, model.horizon)
    later = slice(600, n - model.horizon)
    # The model learnt a busier rule: its forecasts run high on this tenant, and the
    # published ones, shifted by the outcomes seen, are closer to what comes true.
    assert raw[later].mean() > y[later].mean()
    assert live[later].mean() < raw[later].mean()
    assert log_loss(live[later], y[later]) < log_loss(raw[later], y[later]) - 0.02
    # The warning is the policy's threshold on the forecaster's own score: unchanged.
    assert (live_on == raw_on).all()
    # Until enough outcomes are known, nothing is shifted.
    np.testing.assert_array_equal(live[: MIN_ROWS + model.horizon], raw[: MIN_ROWS + model.horizon])
    # Blocks cut anywhere give the same probabilities (a restart's replay rebuilds them).
    split = core_with(model, publish_forecasts=True)
    records = []
    for start in range(0, n, 97):
        records += split.process(stream[start : start + 97]).forecasts
    np.testing.assert_allclose(read_forecasts(records)[0], live, rtol=0, atol=1e-9)


def published_of(core: IngestCore, stream: list[Message], n: int) -> tuple[np.ndarray, np.ndarray]:
    result = core.process(stream)
    p, on = read_forecasts(result.forecasts)
    assert len(p) == n
    return p, on


def test_young_rings_are_not_fitted_and_leave_the_others_bit_for_bit_alone() -> None:
    """Rings under `MIN_ROWS` get offset 0 without a fit; the rest fitted in one pass are
    exactly what each gets alone (each fit reads its own row of the pass only)."""
    rng = np.random.default_rng(5)
    histories = [(8, 0.3), (400, 0.05), (20, 0.5), (300, 0.4)]
    recals, blocks = [], []
    for n, rate in histories:
        p = rng.uniform(0.05, 0.6, n + 50)
        y = (rng.random(n + 50) < rate).astype(float)
        quiet = rng.random(n + 50) < 0.5
        recal = Recalibration(288)
        scored_stream(recal, p[:n], y[:n], quiet[:n])
        recals.append(recal)
        blocks.append((p[n:], y[n:], quiet[n:]))
    alone = []
    for recal, (p, y, q) in zip(recals, blocks, strict=True):
        twin = Recalibration(recal.recent, [*recal.logits], [*recal.outcomes], [*recal.offsets])
        twin.seen = recal.seen
        alone.append(twin.apply(p, q, np.arange(50), p, q, y, HORIZON))
    plans = [
        recal.plan(p, q, np.arange(50), p, q, y, HORIZON)
        for recal, (p, y, q) in zip(recals, blocks, strict=True)
    ]
    solve(plans)
    for plan, want in zip(plans, alone, strict=True):
        assert np.array_equal(plan.finish(), want)
    young = recals[0]
    assert young.offsets == [0.0, 0.0]
    assert any(abs(offset) > 0.05 for recal in recals[1:] for offset in recal.offsets)


def test_a_batch_of_plans_finished_in_one_pass_gets_what_each_gets_alone() -> None:
    """`finish_all` shifts the batch's forecasts in one pass: each block's published
    probabilities are bit for bit its own `finish`, a NaN forecast stays NaN."""

    def plans() -> list[RecalibrationPlan]:
        out, local = [], np.random.default_rng(11)
        for n in (400, 0, 60, 300):
            p = local.uniform(0.05, 0.6, n + 40)
            p[n + 3] = np.nan
            y = (local.random(n + 40) < 0.2).astype(float)
            q = local.random(n + 40) < 0.5
            recal = Recalibration(288)
            if n:
                scored_stream(recal, p[:n], y[:n], q[:n])
            block = np.arange(40)
            out.append(recal.plan(p[n:], q[n:], block, p[n:], q[n:], y[n:], HORIZON))
        solve(out)
        return out

    alone = [plan.finish() for plan in plans()]
    together = finish_all(plans())
    assert len(together) == len(alone) == 4
    for got, want in zip(together, alone, strict=True):
        assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(together[0][3]) and not np.isnan(together[0]).all()
