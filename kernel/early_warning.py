"""What a warning is worth to an on-call engineer: the definitions, in one place.

Every count of early warning in slaops (the warning policy a retrain tunes, the card,
the consumer's live false-warning budget, `slaops backtest`, `bench_early_warning`)
comes from these functions, so the figures in a card, a report and a benchmark mean
the same thing.

* An **interval** is one event of the tenant. A **breach onset** is the first breaching
  interval of a run; a **fresh onset** has no breach in the `QUIET` intervals before it
  (a new incident, not a flicker).
* An onset is **warned at lead >= L** when the warning is on at some non-breaching
  interval in ``[onset - QUIET, onset - L]``; its **lead** is how far ahead the earliest
  such interval is.
* A **notification** is the warning's rising edge and, while it stays on, every
  `REPEAT` intervals (as Alertmanager's ``repeat_interval`` re-sends). A **false
  warning** is a notification with no breach in the `QUIET` intervals after it.
* The **budget** is false warnings per tenant-day.

>>> labels = np.array([0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], bool)
>>> fresh_onsets(labels, quiet=3).tolist()
[4]
>>> on = np.zeros(20, bool); on[1:3] = True
>>> leads(on, labels, fresh_onsets(labels, quiet=3), quiet=3).tolist()
[3]
>>> notifications(np.array([0, 1, 1, 1, 1, 0, 1], bool), repeat=3).nonzero()[0].tolist()
[1, 4, 6]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Intervals without a breach before a fresh onset; also the furthest lead counted and
#: how far after a notification a breach makes it a true one.
QUIET: Final = 12
#: A warning left on re-notifies every this many intervals.
REPEAT: Final = 12
#: The leads every report gives (intervals ahead of the onset).
REPORTED_LEADS: Final = (1, 3)
_DAY_S: Final = 86_400.0

Flags = NDArray[np.bool_]


def _flags(values: ArrayLike) -> Flags:
    return np.asarray(values).astype(bool, copy=False).reshape(-1)


def onsets(labels: ArrayLike) -> NDArray[np.int64]:
    """Indices of the first breaching interval of each run of breaches."""
    flags = _flags(labels)
    start = flags.copy()
    start[1:] &= ~flags[:-1]
    return np.flatnonzero(start).astype(np.int64)


def fresh_onsets(labels: ArrayLike, quiet: int = QUIET) -> NDArray[np.int64]:
    """Onsets with no breach in the `quiet` intervals before them (and that many seen).

    An onset closer than `quiet` to the start of the stream is not counted: what came
    before it is unknown.
    """
    flags = _flags(labels)
    found = onsets(flags)
    if not len(found):
        return found
    before = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    quiet_before = before[found] - before[np.maximum(found - quiet, 0)] == 0
    return found[quiet_before & (found >= quiet)]


def leads(
    on: ArrayLike, labels: ArrayLike, at: NDArray[np.int64], quiet: int = QUIET
) -> NDArray[np.int64]:
    """For each onset in `at`: the longest lead the warning gave it (0: not warned).

    The lead counts intervals from the earliest non-breaching interval in
    ``[onset - quiet, onset - 1]`` at which the warning was on.
    """
    warned = _flags(on) & ~_flags(labels)
    out = np.zeros(len(at), dtype=np.int64)
    for i, onset in enumerate(at.tolist()):
        lo = max(onset - quiet, 0)
        hit = np.flatnonzero(warned[lo:onset])
        if len(hit):
            out[i] = onset - (lo + int(hit[0]))
    return out


def notifications(on: ArrayLike, repeat: int = REPEAT) -> Flags:
    """Where a notification goes out: each rising edge, then every `repeat` while on."""
    flags = _flags(on)
    n = len(flags)
    if n == 0:
        return flags.copy()
    index = np.arange(n)
    rise = flags.copy()
    rise[1:] &= ~flags[:-1]
    start = np.maximum.accumulate(np.where(rise, index, 0))
    out: Flags = flags & ((index - start) % repeat == 0)
    return out


def false_warnings(notified: ArrayLike, labels: ArrayLike, quiet: int = QUIET) -> Flags:
    """Notifications with no breach in the `quiet` intervals after them.

    A notification fewer than `quiet` intervals before the end cannot be judged yet and
    is not counted (the live loop counts it once its labels arrive).
    """
    flags = _flags(labels)
    sent = _flags(notified)
    n = len(flags)
    after = np.concatenate((np.cumsum(flags[::-1], dtype=np.int64)[::-1], [0]))
    index = np.arange(n)
    ahead = after[np.minimum(index + 1, n)] - after[np.minimum(index + 1 + quiet, n)]
    out: Flags = sent & (ahead == 0) & (index + quiet < n)
    return out


def span_days(ts: ArrayLike) -> float:
    """Days the events cover, counting one typical interval for the last event."""
    stamps = np.asarray(ts, dtype=np.float64).reshape(-1)
    if len(stamps) < 2:
        return 0.0
    step = float(np.median(np.diff(stamps)))
    return max(float(stamps[-1] - stamps[0]) + max(step, 0.0), 0.0) / _DAY_S


@dataclass(frozen=True, slots=True)
class WarningRecord:
    """What a warning series did on a stretch of one tenant's events."""

    fresh_onsets: int
    #: Fresh onsets warned at lead >= 1 and >= 3 intervals.
    warned_1: int
    warned_3: int
    notifications: int
    false_warnings: int
    days: float
    #: Median lead (intervals) of the onsets warned at lead >= 1; None when none were.
    median_lead: float | None

    @property
    def recall_1(self) -> float | None:
        return self.warned_1 / self.fresh_onsets if self.fresh_onsets else None

    @property
    def recall_3(self) -> float | None:
        return self.warned_3 / self.fresh_onsets if self.fresh_onsets else None

    @property
    def false_per_day(self) -> float:
        return self.false_warnings / self.days if self.days > 0 else 0.0

    def __add__(self, other: WarningRecord) -> WarningRecord:
        """Pooled over streams (medians cannot pool: the larger side's stands)."""
        median = self.median_lead if self.warned_1 >= other.warned_1 else other.median_lead
        return WarningRecord(
            self.fresh_onsets + other.fresh_onsets,
            self.warned_1 + other.warned_1,
            self.warned_3 + other.warned_3,
            self.notifications + other.notifications,
            self.false_warnings + other.false_warnings,
            self.days + other.days,
            median if median is not None else self.median_lead or other.median_lead,
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "fresh_onsets": self.fresh_onsets,
            "warned_lead_1": self.warned_1,
            "warned_lead_3": self.warned_3,
            "recall_lead_1": self.recall_1,
            "recall_lead_3": self.recall_3,
            "notifications": self.notifications,
            "false_warnings": self.false_warnings,
            "false_per_day": self.false_per_day,
            "days": self.days,
            "median_lead": self.median_lead,
        }


EMPTY: Final = WarningRecord(0, 0, 0, 0, 0, 0.0, None)


def score_warnings(
    on: ArrayLike, labels: ArrayLike, ts: ArrayLike, *, days: float | None = None
) -> WarningRecord:
    """The record of the warning series `on` against the breach flags `labels`."""
    flags = _flags(labels)
    warning = _flags(on)
    if warning.shape != flags.shape:
        raise ValueError(f"on {warning.shape} and labels {flags.shape} differ in length")
    fresh = fresh_onsets(flags)
    got = leads(warning, flags, fresh)
    sent = notifications(warning)
    false = false_warnings(sent, flags)
    hits = got[got >= 1]
    return WarningRecord(
        fresh_onsets=len(fresh),
        warned_1=int(np.count_nonzero(got >= 1)),
        warned_3=int(np.count_nonzero(got >= 3)),
        notifications=int(np.count_nonzero(sent)),
        false_warnings=int(np.count_nonzero(false)),
        days=span_days(ts) if days is None else days,
        median_lead=float(np.median(hits)) if len(hits) else None,
    )


def score_segments(
    on: ArrayLike, labels: ArrayLike, ts: ArrayLike, segments: ArrayLike
) -> WarningRecord:
    """`score_warnings` summed over contiguous segments (e.g. the folds of a CV).

    Onsets, leads and false warnings never reach across a segment's edge.
    """
    ids = np.asarray(segments).reshape(-1)
    flags, warning = _flags(labels), _flags(on)
    stamps = np.asarray(ts, dtype=np.float64).reshape(-1)
    total = EMPTY
    edges = np.flatnonzero(np.diff(ids)) + 1
    for part in np.split(np.arange(len(ids)), edges):
        if len(part):
            total = total + score_warnings(warning[part], flags[part], stamps[part])
    return total


@dataclass(frozen=True, slots=True)
class WarningPolicy:
    """A threshold on a forecaster's probability and what it gave where it was tuned."""

    threshold: float
    budget_per_day: float
    record: WarningRecord
    #: False when no threshold met the budget (the policy then warns of nothing).
    within_budget: bool


def candidate_thresholds(scores: ArrayLike, most: int = 256) -> NDArray[np.float64]:
    """Thresholds worth trying on `scores`: their distinct quantiles, low to high."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if not len(values):
        return np.array([np.inf])
    distinct = np.unique(values)
    if len(distinct) > most:
        distinct = np.unique(np.quantile(values, np.linspace(0.0, 1.0, most)))
    return np.append(distinct, np.inf)


@dataclass(frozen=True, slots=True)
class Sweep:
    """Warning counts at each of many thresholds (`choose_threshold`'s work, vectorised)."""

    thresholds: NDArray[np.float64]
    warned_1: NDArray[np.int64]
    warned_3: NDArray[np.int64]
    false_warnings: NDArray[np.int64]
    days: float


def sweep(
    scores: ArrayLike, labels: ArrayLike, ts: ArrayLike, segments: ArrayLike | None = None
) -> Sweep:
    """What ``scores >= threshold`` warns of, at every threshold worth trying at once.

    The same counts as `score_segments` (a test holds them equal): an onset is warned
    at lead >= L exactly when the highest score at its non-breaching intervals in
    ``[onset - QUIET, onset - L]`` reaches the threshold, and whether a notification is
    false does not depend on the threshold at all.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    flags = _flags(labels)
    stamps = np.asarray(ts, dtype=np.float64).reshape(-1)
    n = len(values)
    ids = np.zeros(n, np.int64) if segments is None else np.asarray(segments).reshape(-1)
    first = np.ones(n, bool)
    first[1:] = ids[1:] != ids[:-1]
    index = np.arange(n)
    start = np.maximum.accumulate(np.where(first, index, 0))
    # Per segment: fresh onsets, the best score before each, and the clean notifications.
    peak_1, peak_3, clean, days = [], [], np.zeros(n, bool), 0.0
    for lo, hi in _bounds(first):
        part = flags[lo:hi]
        days += span_days(stamps[lo:hi])
        clean[lo:hi] = false_warnings(np.ones(hi - lo, bool), part)
        masked = np.where(part, -np.inf, values[lo:hi])
        for onset in fresh_onsets(part).tolist():
            peak_1.append(masked[max(onset - QUIET, 0) : onset].max(initial=-np.inf))
            peak_3.append(masked[max(onset - QUIET, 0) : max(onset - 2, 0)].max(initial=-np.inf))
    thresholds = candidate_thresholds(values)
    sorted_1, sorted_3 = np.sort(peak_1), np.sort(peak_3)
    warned_1 = len(sorted_1) - np.searchsorted(sorted_1, thresholds, side="left")
    warned_3 = len(sorted_3) - np.searchsorted(sorted_3, thresholds, side="left")
    false = np.empty(len(thresholds), np.int64)
    for k, threshold in enumerate(thresholds.tolist()):
        on = values >= threshold
        rise = on & (first | ~np.roll(on, 1))
        run_start = np.maximum.accumulate(np.where(rise, index, 0))
        sent = on & ((index - np.maximum(run_start, start)) % REPEAT == 0)
        false[k] = int(np.count_nonzero(sent & clean))
    return Sweep(thresholds, warned_1.astype(np.int64), warned_3.astype(np.int64), false, days)


def _bounds(first: Flags) -> list[tuple[int, int]]:
    starts = np.flatnonzero(first).tolist()
    if not starts:
        return []
    return list(zip(starts, [*starts[1:], len(first)], strict=True))


def choose_threshold(
    scores: ArrayLike,
    labels: ArrayLike,
    ts: ArrayLike,
    budget_per_day: float,
    segments: ArrayLike | None = None,
) -> WarningPolicy:
    """The threshold that warns of the most fresh onsets at lead >= 1 within the budget.

    Warning is on where ``score >= threshold``. Ties go to the one with more onsets
    warned at lead >= 3, then fewer false warnings, then the higher threshold. With no
    threshold within budget the policy is ``inf`` (never warn) and says so.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    ids = np.zeros(len(values), np.int64) if segments is None else np.asarray(segments)
    found = sweep(values, labels, ts, ids)
    per_day = found.false_warnings / found.days if found.days > 0 else found.false_warnings * 0.0
    within = np.flatnonzero(per_day <= budget_per_day)
    if not len(within):
        never = score_segments(np.zeros(len(values), bool), labels, ts, ids)
        return WarningPolicy(float("inf"), budget_per_day, never, within_budget=False)
    # lexsort: the last key is the primary one; a higher threshold wins the last ties.
    order = np.lexsort(
        (
            found.thresholds[within],
            -found.false_warnings[within],
            found.warned_3[within],
            found.warned_1[within],
        )
    )
    threshold = float(found.thresholds[within[order[-1]]])
    record = score_segments(values >= threshold, labels, ts, ids)
    return WarningPolicy(threshold, budget_per_day, record, within_budget=True)


def warning_on(proba: ArrayLike, quiet: ArrayLike, threshold: float) -> Flags:
    """Where the warning is on: the tenant is quiet and the forecast reaches `threshold`.

    During and just after an incident (not quiet) there is nothing early to warn of:
    the breach itself pages, and a warning left on past it would only re-notify.
    """
    p = np.asarray(proba, dtype=np.float64).reshape(-1)
    out: Flags = _flags(quiet) & (p >= threshold)
    return out
