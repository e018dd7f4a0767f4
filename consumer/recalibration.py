"""Live recalibration: the probability a tenant is sent follows the outcomes it gets.

A forecaster is calibrated on its training window's folds. When a tenant's days turn
calmer or busier than that window, its forecasts keep the old level: on NAB's
disk-write c0d644 the quiet rows were forecast at 0.375 on average where breaches
followed 0.108 of them, and the forecasts lost to the base rate (log-loss skill
-0.19). Labels come `horizon` intervals late, so the consumer can see it.

Each scored forecast (its logit and its outcome) joins a ring of the tenant's last
`recalibration_events` scored forecasts of the same head: quiet (no breach in the last
`QUIET` intervals, where a warning can come early) or not. Every `REFIT_EVENTS` events
(or `horizon`, if longer: no outcome is newer than that) each
head's log-odds offset is refitted on its ring by penalised maximum likelihood (Newton
from 0, a Gaussian prior worth `PRIOR_ROWS` rows at offset 0), and the forecasts
published until the next refit carry it. With fewer than `MIN_ROWS` scored forecasts
in a ring, the head's offset is 0.

What the shift leaves alone: the warning (the policy's threshold on the forecaster's
own score; shifting the score and the threshold alike changes no edge) and the
performance monitor, which judges the forecaster's own forecasts against their
out-of-fold record. Refits happen at fixed event counts since go-live and read only
outcomes already known, so any split of the stream into blocks, and a restart's
replay, give the same probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

#: Weight of the prior at offset 0, in rows.
PRIOR_ROWS: Final = 5.0
#: Fewest scored forecasts in a head's ring for its offset to be fitted.
MIN_ROWS: Final = 24
#: The offset is clipped to this many log odds.
MAX_OFFSET: Final = 3.0
#: Events between refits (at least): the ring moves little in that time, and each refit
#: costs `_NEWTON_STEPS` passes over the ring.
REFIT_EVENTS: Final = 24
_NEWTON_STEPS: Final = 8
_CLIP: Final = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    # np.minimum(np.maximum(..)) is np.clip's arithmetic without its Python dispatch.
    q = np.minimum(np.maximum(np.asarray(p, dtype=np.float64), _CLIP), 1.0 - _CLIP)
    out: np.ndarray = np.log(q) - np.log1p(-q)
    return out


def _empty() -> list[np.ndarray]:
    return [np.zeros(0), np.zeros(0)]


@dataclass(slots=True)
class Recalibration:
    """One live model's offsets: per head (0 busy, 1 quiet) its ring and current offset."""

    recent: int
    logits: list[np.ndarray] = field(default_factory=_empty)
    outcomes: list[np.ndarray] = field(default_factory=_empty)
    offsets: list[float] = field(default_factory=lambda: [0.0, 0.0])
    #: Events forecast since the model went live (the refits' phase).
    seen: int = 0

    def apply(
        self,
        proba: np.ndarray,
        quiet: np.ndarray,
        scored: np.ndarray,
        made: np.ndarray,
        made_quiet: np.ndarray,
        outcome: np.ndarray,
        horizon: int,
    ) -> np.ndarray:
        """The block's forecasts `proba` as published, and the rings moved on.

        `quiet` is each block event's head; `scored` the block events at which earlier
        forecasts were scored, each with the forecast `made` (raw), its head and its
        `outcome` (0/1). A refit at event t reads the forecasts scored at t or before.
        """
        plan = self.plan(proba, quiet, scored, made, made_quiet, outcome, horizon)
        solve([plan])
        return plan.finish()

    def plan(
        self,
        proba: np.ndarray,
        quiet: np.ndarray,
        scored: np.ndarray,
        made: np.ndarray,
        made_quiet: np.ndarray,
        outcome: np.ndarray,
        horizon: int,
    ) -> RecalibrationPlan:
        """`apply`'s first half: the rings moved on and the block's refits set up.

        `solve` then fits the refits of many tenants' plans at once, and each plan's
        `finish` gives its published forecasts (once per block, in any order).
        """
        n = len(proba)
        plan = RecalibrationPlan(self, proba, quiet)
        if self.recent <= 0 or not n:
            self.seen += n
            return plan
        every = max(horizon, REFIT_EVENTS)
        # The block events at which the count since go-live is a multiple of `every`.
        plan.refits = np.arange((-self.seen) % every, n, every, dtype=np.int64)
        finite = np.isfinite(made)
        quiet_made = made_quiet.astype(bool)
        made_logits = logit(made)
        heads = (~quiet_made & finite, quiet_made & finite)
        for head, mine in enumerate(heads):
            at = scored[mine]
            z = np.concatenate((self.logits[head], made_logits[mine]))
            y = np.concatenate((self.outcomes[head], outcome[mine].astype(np.float64)))
            if len(plan.refits):
                ends = len(self.logits[head]) + at.searchsorted(plan.refits, side="right")
                plan.problems[head] = (z, y, ends)
            self.logits[head] = z[-self.recent :]
            self.outcomes[head] = y[-self.recent :]
        self.seen += n
        return plan


@dataclass(slots=True, eq=False)
class RecalibrationPlan:
    """One block's refits (per head: logits, outcomes, ring ends) and, once solved, offsets."""

    recalibration: Recalibration
    proba: np.ndarray
    quiet: np.ndarray
    refits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    problems: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    fitted: dict[int, np.ndarray] = field(default_factory=dict)

    def finish(self) -> np.ndarray:
        """The block's published forecasts; the heads' offsets move to their newest refit."""
        return finish_all([self])[0]

    def shift(self) -> np.ndarray | float:
        """Each event's log-odds shift: its head's offset as of the newest refit at or
        before it. Moves the heads' offsets on to their newest refit (call it once)."""
        n, recal = len(self.proba), self.recalibration
        last = np.searchsorted(self.refits, np.arange(n), side="right") - 1 if self.fitted else None
        shifts: list[np.ndarray | float] = []
        for head in (0, 1):
            fitted = self.fitted.get(head)
            if fitted is not None and last is not None:
                shifts.append(np.where(last >= 0, fitted[np.maximum(last, 0)], recal.offsets[head]))
                recal.offsets[head] = float(fitted[-1])
            else:
                shifts.append(recal.offsets[head])
        if not isinstance(shifts[0], np.ndarray) and shifts[0] == shifts[1]:
            return shifts[0]
        out: np.ndarray = np.where(self.quiet.astype(bool), shifts[1], shifts[0])
        return out


def finish_all(plans: Sequence[RecalibrationPlan]) -> list[np.ndarray]:
    """Each plan's published forecasts (`RecalibrationPlan.finish`), shifted in one pass.

    The shift is elementwise, so one pass over the batch's concatenated forecasts gives
    each event what its own block's pass gives, bit for bit.
    """
    out: list[np.ndarray | None] = [None] * len(plans)
    shifted: list[int] = []
    for i, plan in enumerate(plans):
        if plan.recalibration.recent <= 0 or not len(plan.proba):
            out[i] = plan.proba
        else:
            shifted.append(i)
    if shifted:
        proba = np.concatenate([plans[i].proba for i in shifted])
        shift = np.empty(len(proba))
        end = 0
        for i in shifted:
            begin, end = end, end + len(plans[i].proba)
            shift[begin:end] = plans[i].shift()
        with np.errstate(over="ignore"):
            sent = 1.0 / (1.0 + np.exp(-(logit(proba) + shift)))
        sent = np.where(np.isfinite(proba), sent, proba)
        end = 0
        for i in shifted:
            begin, end = end, end + len(plans[i].proba)
            out[i] = sent[begin:end]
    return [p for p in out if p is not None]


def solve(plans: list[RecalibrationPlan]) -> None:
    """Fit every refit of `plans` in one vectorised pass (per ring length).

    A tenant's block has a few refits of a few hundred rows: fitted one tenant at a
    time, the calls' overhead costs far more than their arithmetic.
    """
    by_recent: dict[int, list[tuple[RecalibrationPlan, int]]] = {}
    for plan in plans:
        for head in plan.problems:
            by_recent.setdefault(plan.recalibration.recent, []).append((plan, head))
    for recent, members in by_recent.items():
        problems = [plan.problems[head] for plan, head in members]
        counts = [len(ends) for _z, _y, ends in problems]
        sizes = [len(z) for z, _y, _e in problems]
        starts = np.repeat(np.cumsum([0, *sizes[:-1]]), counts)
        fitted = _fit(
            np.concatenate([z for z, _y, _e in problems]),
            np.concatenate([y for _z, y, _e in problems]),
            np.concatenate([ends for _z, _y, ends in problems]),
            recent,
            starts,
        )
        for (plan, head), offsets in zip(
            members, np.split(fitted, np.cumsum(counts)[:-1]), strict=True
        ):
            plan.fitted[head] = offsets


def _fit(
    z: np.ndarray, y: np.ndarray, ends: np.ndarray, recent: int, starts: np.ndarray
) -> np.ndarray:
    """The penalised offset on `z[start + end - recent : start + end]` for each end, at once.

    `starts` is where each end's ring begins in `z` (many rings lie end to end). Rows
    before a ring's start are given a logit of -inf (probability 0, outcome 0): they add
    exactly nothing to the gradient and the curvature, with no mask to apply. Rings are
    fitted `_FIT_ROWS` values at a time, every Newton step of a chunk while it is in
    cache: each ring's steps are the same operations however many share the chunk.
    """
    out = np.zeros(len(ends))
    # A ring of fewer than `MIN_ROWS` rows has offset 0: only the others are fitted (each
    # fit is row by row, so which others share the pass changes none of them).
    fitted = np.flatnonzero(np.minimum(ends, recent) >= MIN_ROWS)
    if not len(z) or not len(fitted):
        return out
    step = max(1, _FIT_ROWS // recent)
    for lo in range(0, len(fitted), step):
        chosen = fitted[lo : lo + step]
        out[chosen] = _newton(z, y, ends[chosen], recent, starts[chosen])
    return out


#: Ring values one `_newton` call holds (a few hundred KB of float64: cache-sized).
_FIT_ROWS: Final = 32_768


def _newton(
    z: np.ndarray, y: np.ndarray, ends: np.ndarray, recent: int, starts: np.ndarray
) -> np.ndarray:
    """`_fit`'s offsets of the rings of `ends` (each with its `MIN_ROWS` at least)."""
    local = ends[:, None] - recent + np.arange(recent)
    before = local < 0
    # A ring with no rows yet may start at len(z): its (masked) rows read z's last.
    index = np.minimum(starts[:, None] + np.maximum(local, 0), len(z) - 1)
    # The rings' logits negated: -(z + offset) is -z - offset exactly (negation is).
    minus, ys = np.negative(z[index]), y[index]
    minus[before] = np.inf
    ys[before] = 0.0
    observed = ys.sum(axis=1)
    offset = np.zeros(len(ends))
    p = np.empty_like(minus)
    for _ in range(_NEWTON_STEPS):
        np.subtract(minus, offset[:, None], out=p)
        with np.errstate(over="ignore"):  # exp(+inf) = inf: probability 0, as meant
            np.exp(p, out=p)
        p += 1.0
        np.reciprocal(p, out=p)
        total = p.sum(axis=1)
        gradient = observed - total - PRIOR_ROWS * offset
        curvature = total - np.einsum("ij,ij->i", p, p) + PRIOR_ROWS
        offset = np.clip(offset + gradient / curvature, -MAX_OFFSET, MAX_OFFSET)
    return offset
