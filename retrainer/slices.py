"""Where a forecaster is weak: its headline figures by slice, beside the baselines.

One aggregate hides where a model fails: good at night and useless at peak, or good
before a change and wrong after it. The card (`retrainer.pipeline.card_fields`, on the
out-of-fold rows its headline figures come from) and `slaops backtest`
(`slaops.backtest_table`, on each tenant's test part) both slice here, so the two
mean the same thing:

* by **6-hour band** of the day in UTC (``00-06 UTC`` ...);
* by **load tercile** (``rps``; the edges come from the training part, never from
  the rows judged);
* **before and after** the newest detected change, where there is one.

Each slice gives, for the forecaster and for each baseline on the same rows: log loss
of "a breach within the horizon" (None for a rule that gives no probability),
fresh onsets warned at lead >= 1 (`kernel.early_warning`'s definitions; onsets, leads
and notifications are found on the whole series, then counted in the slice of their
row), and false warnings a day. A slice with fewer than `MIN_SLICE_ROWS` rows or
`MIN_SLICE_ONSETS` fresh onsets is **insufficient evidence** and is not judged;
otherwise it is flagged (`loses_to`) where the forecaster has a clearly higher log loss
than a baseline, warns of fewer fresh onsets than it, or of no more for more false
warnings (see `_losses`). Cheap: aggregations of predictions already made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import log_loss

from kernel.artifacts import MIN_SLICE_ONSETS, MIN_SLICE_ROWS
from kernel.early_warning import false_warnings, fresh_onsets, leads, notifications

#: A log loss this much (relative) above a baseline's is a loss; less is noise.
LOG_LOSS_TOLERANCE: Final = 0.02
#: Hours of one band of the day (UTC).
BAND_HOURS: Final = 6
LOAD_TERCILES: Final = ("low", "mid", "high")
#: The requests whose detection time is a change (a schedule's or a person's is not).
CHANGE_REASONS: Final = frozenset({"data_drift", "performance_drift"})
_DAY_S: Final = 86_400.0

Flags = NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Alerting:
    """One forecaster's output on the judged rows: its warning and its probability."""

    on: Flags
    #: P(a breach within the horizon) per row; None for a rule that gives none.
    proba: NDArray[np.float64] | None = None


@dataclass(frozen=True, eq=False)
class JudgedRows:
    """The rows every alerting is judged on, in time order within each segment."""

    ts: NDArray[np.float64]
    #: Each row's own breach flag (what onsets and false warnings are counted on).
    breach: Flags
    #: "A breach within the horizon" (what log loss is of).
    y: NDArray[np.float64]
    #: Contiguous segments (the folds): onsets and leads never reach across an edge.
    segments: NDArray[np.int64]
    #: Rows log loss is computed on (all when None: rows without a forecast are left out).
    scored: Flags | None = None

    @classmethod
    def of(
        cls,
        ts: ArrayLike,
        breach: ArrayLike,
        y: ArrayLike,
        segments: ArrayLike | None = None,
        scored: ArrayLike | None = None,
    ) -> JudgedRows:
        stamps = np.asarray(ts, dtype=np.float64).reshape(-1)
        ids = np.zeros(len(stamps), np.int64) if segments is None else np.asarray(segments)
        return cls(
            ts=stamps,
            breach=np.asarray(breach).astype(bool).reshape(-1),
            y=np.asarray(y, dtype=np.float64).reshape(-1),
            segments=ids.astype(np.int64).reshape(-1),
            scored=None if scored is None else np.asarray(scored).astype(bool).reshape(-1),
        )

    def __len__(self) -> int:
        return len(self.ts)

    def parts(self) -> list[NDArray[np.int64]]:
        edges = np.flatnonzero(np.diff(self.segments)) + 1
        return [p for p in np.split(np.arange(len(self)), edges) if len(p)]

    @property
    def step_s(self) -> float:
        """The typical interval (median step within segments), 0 with too few rows."""
        same = np.diff(self.segments) == 0
        steps = np.diff(self.ts)[same]
        return float(np.median(steps)) if len(steps) else 0.0


@dataclass(frozen=True, slots=True)
class Slice:
    family: str
    name: str
    mask: Flags


def hour_bands(ts: ArrayLike) -> list[Slice]:
    """The four 6-hour bands of the day in UTC (``00-06 UTC`` ...)."""
    stamps = np.asarray(ts, dtype=np.float64).reshape(-1)
    band = ((stamps % _DAY_S) // (BAND_HOURS * 3_600)).astype(np.int64)
    return [
        Slice("hour_utc", f"{k * BAND_HOURS:02d}-{(k + 1) * BAND_HOURS:02d} UTC", band == k)
        for k in range(24 // BAND_HOURS)
    ]


def load_edges(training_load: ArrayLike) -> tuple[float, float] | None:
    """The load terciles' two edges on the training part (None: too few finite values)."""
    values = np.asarray(training_load, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if len(values) < 3:
        return None
    lo, hi = np.quantile(values, [1 / 3, 2 / 3])
    return float(lo), float(hi)


def load_terciles(load: ArrayLike, edges: tuple[float, float]) -> list[Slice]:
    """Rows by load tercile: below the first edge, up to the second, above it."""
    values = np.asarray(load, dtype=np.float64).reshape(-1)
    lo, hi = edges
    masks = (values < lo, (values >= lo) & (values <= hi), values > hi)
    return [Slice("load", name, m) for name, m in zip(LOAD_TERCILES, masks, strict=True)]


def around_change(ts: ArrayLike, change_ts: float) -> list[Slice]:
    """Rows before the change and from it on."""
    stamps = np.asarray(ts, dtype=np.float64).reshape(-1)
    before = stamps < change_ts
    return [Slice("change", "before", before), Slice("change", "after", ~before)]


def standard_slices(
    ts: ArrayLike,
    load: ArrayLike | None,
    edges: tuple[float, float] | None,
    change_ts: float | None,
) -> list[Slice]:
    """The bands, the terciles (with a load and its edges) and the change (with one)."""
    out = hour_bands(ts)
    if load is not None and edges is not None:
        out += load_terciles(load, edges)
    if change_ts is not None and math.isfinite(change_ts):
        out += around_change(ts, change_ts)
    return out


def change_time(
    reason: str, detected_at_s: float, statistic: Mapping[str, float], step_s: float
) -> float | None:
    """When the newest detected change began, for a drift request (None for any other).

    The detection time, or the performance alarm's own time (`alarm_ts`, before the
    settle wait) less how far back the alarm put the change (`change_events_ago`
    intervals), where the request's detail gives them.
    """
    if reason not in CHANGE_REASONS:
        return None
    at = statistic.get("alarm_ts", detected_at_s)
    ago = statistic.get("change_events_ago", 0.0)
    if not (isinstance(at, int | float) and math.isfinite(at)):
        at = detected_at_s
    if isinstance(ago, int | float) and math.isfinite(ago) and ago > 0 and step_s > 0:
        at = float(at) - float(ago) * step_s
    return float(at)


@dataclass(frozen=True, eq=False)
class _Counted:
    """Per row: whether a fresh onset is there and warned at lead >= 1; false warnings."""

    onset: Flags
    warned: Flags
    false: Flags


def _count(rows: JudgedRows, on: Flags) -> _Counted:
    n = len(rows)
    onset, warned, false = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    for part in rows.parts():
        flags = rows.breach[part]
        found = fresh_onsets(flags)
        got = leads(on[part], flags, found)
        onset[part[found]] = True
        warned[part[found[got >= 1]]] = True
        false[part] = false_warnings(notifications(on[part]), flags)
    return _Counted(onset, warned, false)


def _log_loss(y: NDArray[np.float64], p: NDArray[np.float64]) -> float | None:
    if not len(y):
        return None
    q = np.clip(p, 0.0, 1.0)
    return float(log_loss(y.astype(np.int64), q, labels=[0, 1]))


def _figures(
    rows: JudgedRows, alerting: Alerting, counted: _Counted, mask: Flags, days: float
) -> dict[str, Any]:
    onsets = int(np.count_nonzero(counted.onset & mask))
    warned = int(np.count_nonzero(counted.warned & mask))
    false = int(np.count_nonzero(counted.false & mask))
    loss = None
    if alerting.proba is not None:
        scored = mask if rows.scored is None else mask & rows.scored
        loss = _log_loss(rows.y[scored], alerting.proba[scored])
    return {
        "log_loss": loss,
        "warned_lead_1": warned,
        "recall_lead_1": warned / onsets if onsets else None,
        "false_warnings": false,
        "false_per_day": false / days if days > 0 else 0.0,
    }


def _losses(figures: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``baseline.metric`` for each way the model does worse than a baseline in a slice.

    ``log_loss``: higher than the baseline's by more than `LOG_LOSS_TOLERANCE` (relative);
    ``recall_lead_1``: fewer fresh onsets warned at lead >= 1; ``false_warnings``: no
    more onsets warned, yet more false warnings (the baseline's warning is as good for
    less noise: the prior's, which never warns, against a model warning of nothing).
    """
    model = figures["model"]
    out = []
    for name, base in figures.items():
        if name == "model":
            continue
        mine, theirs = model["log_loss"], base["log_loss"]
        if mine is not None and theirs is not None and mine > theirs * (1 + LOG_LOSS_TOLERANCE):
            out.append(f"{name}.log_loss")
        if model["warned_lead_1"] < base["warned_lead_1"]:
            out.append(f"{name}.recall_lead_1")
        elif (
            model["warned_lead_1"] == base["warned_lead_1"]
            and model["false_warnings"] > base["false_warnings"]
        ):
            out.append(f"{name}.false_warnings")
    return out


def evaluate_slices(
    rows: JudgedRows,
    model: Alerting,
    baselines: Mapping[str, Alerting],
    slices: Sequence[Slice],
) -> list[dict[str, Any]]:
    """Each slice's sample size and figures, the model's and each baseline's, flagged.

    The records are what a card's `slices` holds (`kernel.artifacts.SliceRecord`).
    """
    if "model" in baselines:
        raise ValueError("'model' names the forecaster, not a baseline")
    everyone = {"model": model, **baselines}
    counted = {name: _count(rows, a.on) for name, a in everyone.items()}
    step = rows.step_s
    onset_rows = counted["model"].onset  # onsets depend on the breach flags alone
    out = []
    for s in slices:
        mask = s.mask
        n = int(np.count_nonzero(mask))
        days = n * step / _DAY_S
        onsets = int(np.count_nonzero(onset_rows & mask))
        figures = {
            name: _figures(rows, everyone[name], counted[name], mask, days) for name in everyone
        }
        sufficient = n >= MIN_SLICE_ROWS and onsets >= MIN_SLICE_ONSETS
        out.append(
            {
                "family": s.family,
                "name": s.name,
                "rows": n,
                "positives": int(rows.y[mask].sum()),
                "fresh_onsets": onsets,
                "days": days,
                "sufficient": sufficient,
                "figures": figures,
                "loses_to": _losses(figures) if sufficient else [],
            }
        )
    return out
