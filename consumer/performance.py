"""Performance drift: is the live model still as good as it promised to be?

Each forecast p of a tenant's live model is scored when the interval it forecast
arrives, with outcome y. Two design choices keep the monitor from crying wolf:

- **A reference that suffers the same hours.** The consumer passes, beside each
  forecast, persistence's forecast for the same event (P(breach next | breach now)
  from the model's training rows). The monitor watches the model's loss minus
  persistence's: breach onsets and ends cost both, so the daily swing cancels, and
  what is left is the skill over persistence the model showed on its holdout to go
  live (negative excess). When the model loses it -- a changed rule, a model loaded
  after the change -- the excess turns positive and the CUSUM fires. Without a
  reference column the monitor falls back to the forecast's own promise:
- **An absolute reference.** A forecast p promises its own expected log loss: were the
  model as good as it claims (calibrated), the loss of that event would average the
  entropy H(p). The monitor watches the excess `log_loss(p, y) - H(p)`, which is 0 on
  average for a model that keeps its promise, whatever the mix of calm and busy hours
  (the loss itself swings with the daily cycle: 0.0 at night, 0.9 nats at the peak,
  on stable simulated tenants). A model that goes live after a change (a backlog
  processed before it loaded, a restart, a hot swap) is judged against its promise
  from its first forecast, not against its own start, so it alarms too. The card's
  holdout log loss is not the reference itself: the holdout is the newest 15% of the
  training window, a few hours of one day, and on stable tenants the live loss over
  whole days was 2 to 3 times it. It travels in the signal (`card_log_loss`) for the
  operator.
- **Blocks, not events.** Misses are autocorrelated (a breach episode spans several
  intervals), so the detector sees means of `performance_stride` consecutive excesses, as the data
  monitor does. Probabilities are clipped to [`clip`, 1 - `clip`], so one flipped label
  under a confident forecast costs at most -log(`clip`).

The default detector is `cusum` (consumer/cusum.py), the registry's one with an
absolute target; River's relative detectors (adwin, page_hinkley, kswin) also work on
the same block means but then only see changes after the model went live. An alarm
counts only when the model got worse, never when it got better.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from consumer.detectors import Detector, DetectorKind, DriftSignal, detector_spec, make_detector
from consumer.strides import stride_means

#: Block means kept for a signal's recent statistics.
_RECENT_BLOCKS: Final = 8
#: Decimals a signal's statistics keep.
_DIGITS: Final = 6


@dataclass(frozen=True, slots=True)
class PerformanceConfig:
    """How each live model's performance monitor is built; validated on construction.

    Each field but `clip` is the `slaops consume` setting of the same name.
    """

    #: A kind of `consumer.detectors.DETECTORS`, tuned by its `performance_params` there.
    performance_detector: DetectorKind = "cusum"
    #: Detector constructor kwargs, over the registry's tuned ones.
    performance_params: Mapping[str, float] = field(default_factory=dict)
    #: Scored forecasts per detector update (their excesses are averaged).
    performance_stride: int = 16
    #: Scored forecasts of a new model before any is fed to the detector.
    performance_warmup: int = 100
    #: Events between an alarm and its request: a window cut right at the alarm would
    #: hold almost only pre-change rows, and the retrained model would learn the past.
    performance_settle_events: int = 240
    #: Probabilities are clipped to [clip, 1 - clip] before scoring.
    clip: float = 0.01

    def __post_init__(self) -> None:
        try:
            detector_spec(self.performance_detector)
        except ValueError as exc:
            raise ValueError(f"performance_{exc}") from None
        stride = self.performance_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"performance_stride must be an int >= 1, got {stride!r}")
        if self.performance_warmup < 0:
            raise ValueError(f"performance_warmup must be >= 0, got {self.performance_warmup!r}")
        if self.performance_settle_events < 0:
            raise ValueError(
                f"performance_settle_events must be >= 0, got {self.performance_settle_events!r}"
            )
        if not 0.0 < self.clip < 0.5:
            raise ValueError(f"performance clip must be in (0, 0.5), got {self.clip!r}")
        object.__setattr__(self, "performance_params", dict(self.performance_params))
        self.make()

    def make(self) -> Detector:
        return make_detector(self.performance_detector, "performance", self.performance_params)


def log_loss_excess(proba: np.ndarray, outcome: np.ndarray, clip: float) -> np.ndarray:
    """Per event: log loss of `proba` on `outcome` minus the loss the forecast promised.

    >>> log_loss_excess(np.array([0.5, 0.9, 0.9]), np.array([1.0, 1.0, 0.0]), 0.01).round(3)
    array([ 0.   , -0.22 ,  1.978])
    """
    loss, entropy = _losses(proba, outcome, clip)
    return loss - entropy


def _losses(proba: np.ndarray, outcome: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """Per event: the log loss, and the entropy H(p) that the forecast p promised."""
    p = np.clip(proba.astype(np.float64), clip, 1.0 - clip)
    log_p, log_q = np.log(p), np.log1p(-p)
    y = outcome.astype(np.float64)
    loss = -(y * log_p + (1.0 - y) * log_q)
    entropy = -(p * log_p + (1.0 - p) * log_q)
    return loss, entropy


class PerformanceMonitor:
    """Per tenant and live model: a `consumer.detectors.DriftMonitor` over forecasts.

    `update(block)` takes an (n, 2) or (n, 3) float array, one row per scored forecast
    in event order: the probability, the outcome (0 or 1) and, in a third column, a
    reference forecast for the same event (persistence's). With the reference, the
    excess is the model's loss minus the reference's: calm and busy hours hit both
    alike, so what is left is whether the model still beats the forecast it beat on
    its holdout. Without it, the reference is the entropy H(p) the forecast promised.
    `promised` is the live model's card metrics; only reported in signals. Raises
    ValueError on a malformed block.
    """

    __slots__ = (
        "config",
        "promised",
        "_detector",
        "_absolute",
        "_pending",
        "_seen",
        "_fed",
        "_excess_sum",
        "_loss_sum",
        "_recent",
    )

    def __init__(
        self, config: PerformanceConfig, promised: Mapping[str, float] | None = None
    ) -> None:
        self.config = config
        self.promised = dict(promised or {})
        self._absolute = detector_spec(config.performance_detector).absolute
        self.reset()

    def reset(self) -> None:
        """Forget everything: a fresh detector, a new warmup."""
        self._detector = self.config.make()
        self._pending = np.empty((0, 2))  # (excess, loss) not yet in a full block
        self._seen = 0  # scored forecasts since the reset
        self._fed = 0  # of which fed to the detector (past the warmup)
        self._excess_sum = self._loss_sum = 0.0
        self._recent: list[tuple[float, float]] = []  # the latest block means

    def update(self, block: np.ndarray) -> list[DriftSignal]:
        """Consume scored forecasts; every confirmed degradation, in event order."""
        rows = np.asarray(block, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] not in (2, 3):
            raise ValueError(f"block must have shape (n, 2) or (n, 3), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("block must be finite")
        loss, entropy = _losses(rows[:, 0], rows[:, 1], self.config.clip)
        if rows.shape[1] == 3:
            reference, _ = _losses(rows[:, 2], rows[:, 1], self.config.clip)
        else:
            reference = entropy
        excess = loss - reference
        signals: list[DriftSignal] = []
        start = 0
        while start < len(rows):
            found = self._feed(np.column_stack((excess[start:], loss[start:])), start)
            if found is None:
                break
            signals.append(found)
            self.reset()
            start = found.index + 1
        return signals

    def _feed(self, values: np.ndarray, offset: int) -> DriftSignal | None:
        skip = min(len(values), max(0, self.config.performance_warmup - self._seen))
        self._seen += skip
        values, offset = values[skip:], offset + skip
        stride = self.config.performance_stride
        pending = len(self._pending)
        means, rest = stride_means(self._pending, values, stride)
        for g, (block_excess, block_loss) in enumerate(means.tolist()):
            self._detector.update(block_excess)
            self._fed += stride
            self._excess_sum += block_excess * stride
            self._loss_sum += block_loss * stride
            self._recent = [*self._recent[-(_RECENT_BLOCKS - 1) :], (block_excess, block_loss)]
            if self._detector.drift_detected and self._worse():
                index = offset + (g + 1) * stride - pending - 1
                self._seen += index - offset + 1
                return self._signal(index)
        self._pending = rest
        self._seen += len(values)
        return None

    def _worse(self) -> bool:
        if self._absolute:  # against the promise: only the upward direction
            return int(getattr(self._detector, "direction", 1)) > 0
        recent = float(np.mean([e for e, _loss in self._recent]))
        return recent > max(0.0, self._excess_sum / self._fed)

    def _signal(self, index: int) -> DriftSignal:
        recent_excess = float(np.mean([e for e, _loss in self._recent]))
        recent_loss = float(np.mean([loss for _e, loss in self._recent]))
        statistic = {
            "scored": float(self._seen),
            "log_loss": self._loss_sum / self._fed,
            "log_loss_recent": recent_loss,
            "log_loss_excess": self._excess_sum / self._fed,
            "log_loss_excess_recent": recent_excess,
        }
        for name in ("log_loss", "brier"):
            if name in self.promised:
                statistic[f"card_{name}"] = float(self.promised[name])
        # Rounded: a forward pass over another batch size may differ in the last float32
        # bits, and a request must not depend on where the poll cut the stream.
        statistic = {name: round(value, _DIGITS) for name, value in statistic.items()}
        return DriftSignal(index=index, features=("log_loss",), statistic=statistic)
