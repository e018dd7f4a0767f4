"""Live recalibration: the probability a tenant is sent follows the outcomes it gets.

A forecaster is calibrated on its training window's folds. When a tenant's days turn
calmer or busier than that window, its forecasts keep the old level: on NAB's
disk-write c0d644 the quiet rows were forecast at 0.375 on average where breaches
followed 0.108 of them, and the forecasts lost to the base rate (log-loss skill
-0.19). Labels come `horizon` intervals late, so the consumer can see it.

Each scored forecast (its logit and its outcome) joins a ring of the tenant's last
`recalibration_events` scored forecasts of the same head: quiet (no breach in the last
`QUIET` intervals, where a warning can come early) or not. Every `horizon` events each
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

from dataclasses import dataclass, field
from typing import Final

import numpy as np

#: Weight of the prior at offset 0, in rows.
PRIOR_ROWS: Final = 5.0
#: Fewest scored forecasts in a head's ring for its offset to be fitted.
MIN_ROWS: Final = 24
#: The offset is clipped to this many log odds.
MAX_OFFSET: Final = 3.0
_NEWTON_STEPS: Final = 8
_CLIP: Final = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1.0 - _CLIP)
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
        n = len(proba)
        if self.recent <= 0 or not n:
            self.seen += n
            return proba
        refits = np.flatnonzero((self.seen + np.arange(n)) % horizon == 0)
        shift = np.zeros(n)
        for head in (0, 1):
            mine = (made_quiet.astype(bool) == bool(head)) & np.isfinite(made)
            at = scored[mine]
            z = np.concatenate((self.logits[head], logit(made[mine])))
            y = np.concatenate((self.outcomes[head], outcome[mine].astype(np.float64)))
            kept = len(self.logits[head])
            if len(refits):
                ends = kept + np.searchsorted(at, refits, side="right")
                fitted = _fit(z, y, ends, self.recent)
                # Each event carries the offset of the newest refit at or before it.
                last = np.searchsorted(refits, np.arange(n), side="right") - 1
                head_shift = np.where(last >= 0, fitted[np.maximum(last, 0)], self.offsets[head])
                self.offsets[head] = float(fitted[-1])
            else:
                head_shift = np.full(n, self.offsets[head])
            shift = np.where(quiet.astype(bool) == bool(head), head_shift, shift)
            self.logits[head] = z[-self.recent :]
            self.outcomes[head] = y[-self.recent :]
        self.seen += n
        with np.errstate(over="ignore"):
            out: np.ndarray = 1.0 / (1.0 + np.exp(-(logit(proba) + shift)))
        return np.where(np.isfinite(proba), out, proba)


def _fit(z: np.ndarray, y: np.ndarray, ends: np.ndarray, recent: int) -> np.ndarray:
    """The penalised offset on `z[end - recent : end]` for each of `ends`, at once."""
    index = ends[:, None] - recent + np.arange(recent)
    mask = (index >= 0).astype(np.float64)
    index = np.maximum(index, 0)
    if not len(z):
        return np.zeros(len(ends))
    zs, ys = z[index], y[index]
    offset = np.zeros(len(ends))
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(zs + offset[:, None])))
        gradient = ((ys - p) * mask).sum(axis=1) - PRIOR_ROWS * offset
        curvature = (p * (1.0 - p) * mask).sum(axis=1) + PRIOR_ROWS
        offset = np.clip(offset + gradient / curvature, -MAX_OFFSET, MAX_OFFSET)
    enough = mask.sum(axis=1) >= MIN_ROWS
    out: np.ndarray = np.where(enough, offset, 0.0)
    return out
