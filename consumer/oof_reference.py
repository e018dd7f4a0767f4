"""What a live forecast should cost, by its forecaster's own out-of-fold record.

A format-3 card (target "within") carries the forecaster's reliability table out of
fold (`calibration`: per probability bin, its rows, the mean forecast and how often
a breach followed within the horizon). So for a live forecast p the card says how
often a forecast near p came true out of fold, f(p), and what such a forecast cost
there on average: the cross-entropy `-(f log p + (1 - f) log(1 - p))`. Averaged over
the out-of-fold rows, that is the card's own `metrics["log_loss"]`: the reference is
the card's out-of-fold error, spread over the forecasts by what each one said.

Why per forecast and not the card's one number: a tenant's loss swings with its day
(near 0 at night, high at the peak), so a constant reference reads every busy
afternoon as a degradation. A forecast of p costs what p costs whatever the hour, so
a forecaster that still earns its out-of-fold record has an excess near 0 at every
hour, and one that lost its edge (a changed rule: its confident forecasts now miss)
pays more than its record at every p.

Sparse bins are shrunk toward the bin's mean forecast (`PRIOR_ROWS` pseudo-rows), and
a forecast in a bin that out of fold never produced is held to its own promise
(f = p, the entropy H(p)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from kernel.artifacts import ModelCard

#: Pseudo-rows that pull a bin's observed rate toward its mean forecast.
PRIOR_ROWS: Final = 20.0


@dataclass(frozen=True, slots=True)
class OutOfFoldReference:
    """Per probability bin (upper bounds `uppers`), the breach rate seen out of fold.

    `rates` is NaN for a bin with no out-of-fold rows. `log_loss` is the card's own
    out-of-fold log loss (reported in signals). Never raises on a finite forecast.
    """

    uppers: np.ndarray
    rates: np.ndarray
    log_loss: float

    @classmethod
    def of(cls, card: ModelCard) -> OutOfFoldReference | None:
        """The card's reference, or None for a card that has none (format 2, no table)."""
        log_loss = card.metrics.get("log_loss")
        if card.target != "within" or not card.calibration or log_loss is None:
            return None
        if not math.isfinite(log_loss):
            return None
        table = sorted(card.calibration, key=lambda row: row["upper"])
        uppers = np.array([row["upper"] for row in table], dtype=np.float64)
        n = np.array([row["n"] for row in table], dtype=np.float64)
        mean = np.array([row["mean_proba"] for row in table], dtype=np.float64)
        seen = np.array([row["observed_rate"] for row in table], dtype=np.float64)
        rates = (n * seen + PRIOR_ROWS * mean) / (n + PRIOR_ROWS)
        lowers = np.array([row["lower"] for row in table], dtype=np.float64)
        # A gap between two listed bins is a bin with no rows: held to its promise.
        edges, values = [], []
        previous = 0.0
        for low, high, rate in zip(lowers.tolist(), uppers.tolist(), rates.tolist(), strict=True):
            if low > previous:
                edges.append(low)
                values.append(math.nan)
            edges.append(high)
            values.append(rate)
            previous = high
        if previous < 1.0:
            edges.append(1.0)
            values.append(math.nan)
        return cls(np.array(edges), np.array(values), float(log_loss))

    def rate(self, proba: np.ndarray) -> np.ndarray:
        """f(p): how often a forecast in p's bin came true out of fold (p where unseen)."""
        p = np.asarray(proba, dtype=np.float64)
        index = np.minimum(self.uppers.searchsorted(p, side="right"), len(self.rates) - 1)
        rate = self.rates[index]
        return np.where(np.isnan(rate), p, rate)

    def loss(self, proba: np.ndarray, clip: float) -> np.ndarray:
        """Per forecast: the log loss its out-of-fold record says it earns.

        >>> ref = OutOfFoldReference(np.array([0.5, 1.0]), np.array([0.25, np.nan]), 0.5)
        >>> ref.loss(np.array([0.25, 0.9]), 0.01).round(3)  # f = p: the entropy H(p)
        array([0.562, 0.325])
        """
        p = np.minimum(np.maximum(np.asarray(proba, dtype=np.float64), clip), 1.0 - clip)
        f = self.rate(p)
        out: np.ndarray = -(f * np.log(p) + (1.0 - f) * np.log1p(-p))
        return out
