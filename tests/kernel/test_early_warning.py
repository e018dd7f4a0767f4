"""The early-warning definitions (`kernel.early_warning`) against a per-interval oracle."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.early_warning import (
    QUIET,
    REPEAT,
    choose_threshold,
    fresh_onsets,
    leads,
    notifications,
    score_segments,
    score_warnings,
    sweep,
    warning_on,
)


def oracle(on: list[bool], labels: list[bool]) -> tuple[list[int], list[int], list[int], int]:
    """Fresh onsets, their leads, notifications and false warnings, the slow way."""
    n = len(labels)
    fresh = [
        i
        for i in range(n)
        if labels[i]
        and (i == 0 or not labels[i - 1])
        and i >= QUIET
        and not any(labels[i - QUIET : i])
    ]
    got = []
    for onset in fresh:
        lead = 0
        for j in range(max(onset - QUIET, 0), onset):
            if on[j] and not labels[j]:
                lead = onset - j
                break
        got.append(lead)
    sent, run = [], 0
    for i in range(n):
        run = run + 1 if on[i] else 0
        if on[i] and (run - 1) % REPEAT == 0:
            sent.append(i)
    false = sum(1 for i in sent if i + QUIET < n and not any(labels[i + 1 : i + 1 + QUIET]))
    return fresh, got, sent, false


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.booleans(), min_size=0, max_size=120),
    on=st.lists(st.booleans(), min_size=120, max_size=120),
)
def test_the_definitions_match_an_interval_by_interval_oracle(
    labels: list[bool], on: list[bool]
) -> None:
    on = on[: len(labels)]
    fresh, got, sent, false = oracle(on, labels)
    flags = np.array(labels, bool)
    assert fresh_onsets(flags).tolist() == fresh
    assert leads(np.array(on, bool), flags, fresh_onsets(flags)).tolist() == got
    assert np.flatnonzero(notifications(np.array(on, bool))).tolist() == sent
    record = score_warnings(on, labels, np.arange(len(labels)) * 300.0)
    assert record.false_warnings == false
    assert record.warned_1 == sum(1 for g in got if g >= 1)
    assert record.warned_3 == sum(1 for g in got if g >= 3)


def test_a_warning_two_intervals_ahead_counts_at_lead_one_not_three() -> None:
    labels = np.zeros(40, bool)
    labels[30:33] = True
    on = np.zeros(40, bool)
    on[28] = True
    record = score_warnings(on, labels, np.arange(40) * 60.0)
    assert (record.fresh_onsets, record.warned_1, record.warned_3) == (1, 1, 0)
    assert record.median_lead == 2.0 and record.false_warnings == 0


def test_a_warning_left_on_renotifies_every_twelve_and_each_quiet_one_is_false() -> None:
    labels = np.zeros(100, bool)
    on = np.zeros(100, bool)
    on[10:40] = True  # 30 intervals: notifications at 10, 22, 34
    record = score_warnings(on, labels, np.arange(100) * 300.0)
    assert record.notifications == 3 and record.false_warnings == 3


def test_the_sweep_counts_what_scoring_each_threshold_counts() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(100, 500))
        labels = np.convolve(rng.random(n) < 0.05, np.ones(3), "same") > 0
        scores = rng.random(n) + 0.4 * np.roll(labels, -3)
        segments = np.sort(rng.integers(0, 3, n))
        ts = np.arange(n) * 300.0
        found = sweep(scores, labels, ts, segments)
        for k in rng.integers(0, len(found.thresholds), 6):
            record = score_segments(scores >= found.thresholds[k], labels, ts, segments)
            assert (record.warned_1, record.warned_3, record.false_warnings) == (
                found.warned_1[k],
                found.warned_3[k],
                found.false_warnings[k],
            )


def test_the_chosen_threshold_stays_within_budget_and_warns_of_the_most_onsets() -> None:
    rng = np.random.default_rng(0)
    n = 2_880  # ten days of five-minute intervals
    labels = np.zeros(n, bool)
    for start in rng.choice(np.arange(50, n - 20), 30, replace=False):
        labels[start : start + 4] = True
    precursor = np.roll(labels, -4) & ~labels  # a signal rises 4 intervals before a breach
    scores = rng.random(n) * 0.5 + precursor * 0.6
    policy = choose_threshold(scores, labels, np.arange(n) * 300.0, budget_per_day=1.0)
    assert policy.within_budget and policy.record.false_per_day <= 1.0
    assert policy.record.recall_1 is not None and policy.record.recall_1 > 0.8
    never = choose_threshold(rng.random(n), labels, np.arange(n) * 300.0, budget_per_day=0.0)
    assert never.record.false_warnings == 0


def test_no_warning_outside_quiet_intervals() -> None:
    on = warning_on([0.9, 0.9, 0.1], [True, False, True], 0.5)
    assert on.tolist() == [True, False, False]
