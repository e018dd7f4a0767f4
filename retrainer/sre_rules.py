"""The alerting rules SREs already use, set up as an SRE would, to judge forecasts beside.

Each rule reads ONE metric (the one that defines the breach) and knows its SLO: a
static threshold on the metric, Prometheus's ``predict_linear(v[k], h) > SLO``, and
the SRE workbook's multi-window burn rate; and persistence ("breaching now"). Each is
tuned on a training stretch to warn of the most fresh onsets within a false-warning
budget (`kernel.early_warning.choose_threshold`'s rule, over a small grid of the rule's
own parameters), then scored on data it has not seen.

>>> v = np.array([1.0, 2.0, 3.0, 4.0])
>>> predict_linear(v, k=3, h=2).round(6).tolist()  # the line through the last 3, 2 ahead
[1.0, 4.0, 5.0, 6.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

from kernel.early_warning import WarningRecord, choose_threshold, score_warnings

#: The rules in report order.
RULES: Final = ("persistence", "static_threshold", "predict_linear", "burn_rate")
#: `predict_linear` range (intervals) and how far ahead it projects (intervals).
LINEAR_RANGES: Final = (3, 6, 12, 24, 48)
LINEAR_AHEAD: Final = (1, 2, 3, 6, 12)
#: Burn rate: long windows (the short one is a twelfth, at least 1) and burn factors.
BURN_WINDOWS: Final = (12, 36, 72, 144)
BURN_FACTORS: Final = (1.0, 2.0, 3.0, 6.0, 14.4)

Floats = NDArray[np.float64]


def _padded_windows(values: Floats, k: int) -> NDArray[np.float64]:
    """The last `k` values at each row, the first rows padded with the first value."""
    pad = np.full(k - 1, values[0] if len(values) else 0.0)
    return sliding_window_view(np.concatenate((pad, values)), k)


def predict_linear(values: ArrayLike, k: int, h: float) -> Floats:
    """The least-squares line through the last `k` values, read `h` intervals ahead.

    As Prometheus computes it: the fitted value at the newest sample plus `h` times the
    slope. Rows with fewer than `k` values before them use what there is.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(v)
    if n == 0:
        return v.copy()
    out = np.empty(n)
    head = min(k - 1, n)
    for i in range(head):  # short windows at the start (few rows)
        out[i] = _line_ahead(v[: i + 1], h)
    if n > head:
        windows = sliding_window_view(v, k) if n >= k else np.empty((0, k))
        x = np.arange(k, dtype=np.float64) - (k - 1) / 2.0
        slope = windows @ x / float(x @ x)
        out[head:] = windows.mean(axis=1) + slope * ((k - 1) / 2.0 + h)
    return out


def _line_ahead(window: Floats, h: float) -> float:
    k = len(window)
    if k == 1:
        return float(window[0])
    x = np.arange(k, dtype=np.float64) - (k - 1) / 2.0
    slope = float(window @ x / (x @ x))
    return float(window.mean() + slope * ((k - 1) / 2.0 + h))


def burn_rate(bad: ArrayLike, window: int, budget: float) -> Floats:
    """Share of bad intervals in the last `window` (fewer at the start) over `budget`."""
    flags = np.asarray(bad, dtype=np.float64).reshape(-1)
    if not len(flags):
        return flags.copy()
    sums = np.cumsum(np.concatenate(([0.0], flags)))
    index = np.arange(1, len(flags) + 1)
    lo = np.maximum(index - window, 0)
    rate = (sums[index] - sums[lo]) / (index - lo)
    out: Floats = rate / max(budget, 1e-9)
    return out


@dataclass(frozen=True, slots=True)
class Stretch:
    """One tenant's events for a rule: the breach metric, the flags and the times."""

    value: Floats
    labels: NDArray[np.bool_]
    ts: Floats

    @classmethod
    def of(cls, value: ArrayLike, labels: ArrayLike, ts: ArrayLike) -> Stretch:
        return cls(
            np.asarray(value, dtype=np.float64).reshape(-1),
            np.asarray(labels).astype(bool).reshape(-1),
            np.asarray(ts, dtype=np.float64).reshape(-1),
        )


@dataclass(frozen=True, slots=True)
class TunedRule:
    """A rule with the parameters its training stretch chose, and its record there."""

    name: str
    params: dict[str, float] = field(default_factory=dict)
    train: WarningRecord | None = None


#: A rule's warning series on a stretch for some parameters.
_Warn = Callable[[Stretch, dict[str, float]], NDArray[np.bool_]]


def _persistence(s: Stretch, _: dict[str, float]) -> NDArray[np.bool_]:
    return s.labels.copy()


def _static(s: Stretch, p: dict[str, float]) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = s.value >= p["level"]
    return out


def _linear(s: Stretch, p: dict[str, float]) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = predict_linear(s.value, int(p["range"]), p["ahead"]) > p["slo"]
    return out


def _burn(s: Stretch, p: dict[str, float]) -> NDArray[np.bool_]:
    bad = s.value > p["slo"]
    long = int(p["window"])
    short = max(long // 12, 1)
    factor = p["factor"]
    out: NDArray[np.bool_] = (burn_rate(bad, long, p["budget"]) > factor) & (
        burn_rate(bad, short, p["budget"]) > factor
    )
    return out


_WARN: Final[dict[str, _Warn]] = {
    "persistence": _persistence,
    "static_threshold": _static,
    "predict_linear": _linear,
    "burn_rate": _burn,
}


def warning_series(rule: TunedRule, stretch: Stretch) -> NDArray[np.bool_]:
    """Where `rule` (with its tuned parameters) warns on `stretch`."""
    return _WARN[rule.name](stretch, rule.params)


def _best(name: str, train: Stretch, grid: Iterable[dict[str, float]], budget: float) -> TunedRule:
    """The grid point warning of the most fresh onsets within budget on `train`."""
    best: tuple[tuple[float, ...], TunedRule] | None = None
    fallback: tuple[float, TunedRule] | None = None
    for params in grid:
        record = score_warnings(_WARN[name](train, params), train.labels, train.ts)
        tuned = TunedRule(name, params, record)
        if record.false_per_day <= budget:
            key = (record.warned_1, record.warned_3, -record.false_warnings)
            if best is None or key > best[0]:
                best = (key, tuned)
        elif fallback is None or record.false_per_day < fallback[0]:
            fallback = (record.false_per_day, tuned)
    if best is not None:
        return best[1]
    assert fallback is not None  # noqa: S101 - every grid here is non-empty
    return fallback[1]


def tune_rules(train: Stretch, slo: float, budget_per_day: float) -> list[TunedRule]:
    """Every rule of `RULES`, tuned on `train` for `slo` within `budget_per_day`."""
    bad_share = float(np.mean(train.value > slo)) if len(train.value) else 0.0
    error_budget = min(max(bad_share, 1e-3), 1.0)
    static = choose_threshold(train.value, train.labels, train.ts, budget_per_day)
    level = static.threshold if np.isfinite(static.threshold) else float(np.inf)
    linear = [
        {"range": float(k), "ahead": float(h), "slo": slo}
        for k in LINEAR_RANGES
        for h in LINEAR_AHEAD
    ]
    burn = [
        {"window": float(w), "factor": f, "slo": slo, "budget": error_budget}
        for w in BURN_WINDOWS
        for f in BURN_FACTORS
    ]
    return [
        TunedRule(
            "persistence",
            {},
            score_warnings(train.labels, train.labels, train.ts),
        ),
        TunedRule("static_threshold", {"level": level}, static.record),
        _best("predict_linear", train, linear, budget_per_day),
        _best("burn_rate", train, burn, budget_per_day),
    ]


def score_rules(
    rules: Iterable[TunedRule], stream: Stretch, start: int
) -> dict[str, WarningRecord]:
    """Each tuned rule's warning record on `stream[start:]` (data it was not tuned on).

    The rule runs over the whole stream, so its first tested intervals have the history
    a rule running live would have had.
    """
    out = {}
    for rule in rules:
        on = warning_series(rule, stream)[start:]
        out[rule.name] = score_warnings(on, stream.labels[start:], stream.ts[start:])
    return out
