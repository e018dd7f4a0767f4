"""Performance drift: is the live model still as good as it promised to be?

Each forecast p of a tenant's live model is scored when the outcome it forecast is
known. Three references, the first one the card allows:

- **Its own out-of-fold record** (format-3 cards, target "within": P(a breach within
  the next `horizon` intervals)). The card's reliability table says what a forecast
  of p cost out of fold (`consumer.oof_reference`); the monitor watches the live loss
  minus that, per forecast, so the daily swing of the loss (a forecast of 0.6 at the
  peak costs what it costs) cancels and what is left is whether the forecaster still
  earns its record. A forecaster whose edge is gone -- a changed rule, after which its
  confident forecasts miss -- pays more than its record at every p, and the CUSUM
  fires. Persistence is no reference for these: where breaches last (samples held
  for several intervals) a model whose rule changed under it can still be about as
  good as persistence, and never alarm.
- **Persistence** (format-2 cards, target "at"). The consumer passes, beside each
  forecast, persistence's forecast for the same event (P(breach next | breach now)
  from the model's training rows). The monitor watches the model's loss minus
  persistence's: breach onsets and ends cost both, so the daily swing cancels, and
  what is left is the skill over persistence the model showed on its holdout to go
  live (negative excess). When the model loses it the excess turns positive.
- **The forecast's own promise**, without either: were the model as good as it
  claims (calibrated), the loss of an event would average the entropy H(p), whatever
  the mix of calm and busy hours.

All three are absolute: a model that goes live after a change (a backlog processed
before it loaded, a restart, a hot swap) is judged from its first forecast, not
against its own start, so it alarms too.

- **Calibration, beside the loss.** A forecaster can lose its edge while its loss
  falls: where breaches grow more frequent, outcomes grow more certain. With an
  out-of-fold record, a `consumer.calibration.CalibrationWatch` also watches whether
  breaches still come at the record's rate (relative to the offset seen at go-live);
  its alarms are signals with feature "calibration", the loss watch's "log_loss".
- **Within the horizon.** `consumer.forecasting` is the one home of outcomes: for a
  "within" card the outcome of the forecast made at t is any breach in
  t+1 .. t+horizon, scored there; the monitor takes outcomes as given.
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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from consumer.calibration import CalibrationWatch
from consumer.detectors import Detector, DetectorKind, DriftSignal, detector_spec, make_detector
from consumer.oof_reference import OutOfFoldReference
from consumer.strides import stride_means
from kernel.artifacts import ModelCard

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
    performance_stride: int = 64
    #: Scored forecasts of a new model before any is fed to the detector.
    performance_warmup: int = 100
    #: Events between an alarm and its request: a window cut right at the alarm would
    #: hold almost only pre-change rows, and the retrained model would learn the past.
    performance_settle_events: int = 240
    #: The calibration watch (`consumer.calibration`, for cards with an out-of-fold
    #: record): its Bernoulli CUSUM threshold (0: off), and the scored forecasts that
    #: measure the record's offset at go-live.
    performance_calibration_threshold: float = 12.0
    performance_calibration_warmup: int = 1_000
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
        threshold = self.performance_calibration_threshold
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"performance_calibration_threshold must be >= 0, got {threshold!r}")
        if self.performance_calibration_warmup < 0:
            raise ValueError(
                "performance_calibration_warmup must be >= 0, got "
                f"{self.performance_calibration_warmup!r}"
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


def _log_loss(proba: np.ndarray, outcome: np.ndarray, clip: float) -> np.ndarray:
    """Per event: the log loss alone, as `_losses` computes it (same operations)."""
    p = np.minimum(np.maximum(proba.astype(np.float64), clip), 1.0 - clip)  # np.clip, faster
    y = outcome.astype(np.float64)
    loss: np.ndarray = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return loss


def _losses(proba: np.ndarray, outcome: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """Per event: the log loss, and the entropy H(p) that the forecast p promised."""
    p = np.minimum(np.maximum(proba.astype(np.float64), clip), 1.0 - clip)  # np.clip, faster
    log_p, log_q = np.log(p), np.log1p(-p)
    y = outcome.astype(np.float64)
    loss = -(y * log_p + (1.0 - y) * log_q)
    entropy = -(p * log_p + (1.0 - p) * log_q)
    return loss, entropy


class PerformanceMonitor:
    """Per tenant and live model: a `consumer.detectors.DriftMonitor` over forecasts.

    `update(block)` takes an (n, 2) or (n, 3) float array, one row per scored forecast
    in event order: the probability, the outcome (0 or 1) and, in a third column, a
    reference forecast for the same event (persistence's). With an out-of-fold
    `reference` (see `for_card`) the excess is the loss minus what the forecaster's
    record says that forecast earns, and the third column is ignored; else with the
    column, the model's loss minus persistence's; else the loss minus the entropy
    H(p) the forecast promised. `promised` is the live model's card metrics; only
    reported in signals.
    Raises ValueError on a malformed block.
    """

    __slots__ = (
        "config",
        "promised",
        "reference",
        "_calibration",
        "_observed",
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
        self,
        config: PerformanceConfig,
        promised: Mapping[str, float] | None = None,
        *,
        reference: OutOfFoldReference | None = None,
        outcome_span: int = 1,
    ) -> None:
        if outcome_span < 1:
            raise ValueError(f"outcome_span must be >= 1, got {outcome_span!r}")
        self.config = config
        self.promised = dict(promised or {})
        self.reference = reference
        self._absolute = detector_spec(config.performance_detector).absolute
        #: Outcomes scored since the model went live, and of those, breaches.
        self._observed = [0, 0]
        threshold = config.performance_calibration_threshold
        #: Outcomes of forecasts `outcome_span` apart share no interval: the watch sums those.
        self._calibration = (
            CalibrationWatch(threshold, config.performance_calibration_warmup, outcome_span)
            if reference is not None and threshold > 0
            else None
        )
        self.reset()

    @classmethod
    def for_card(cls, config: PerformanceConfig, card: ModelCard) -> PerformanceMonitor:
        """The monitor a live model's card calls for: its out-of-fold record if it has one.

        Outcomes of a "within" card's forecasts overlap over its horizon (the
        calibration watch sums those `horizon` apart).
        """
        return cls(
            config,
            card.metrics,
            reference=OutOfFoldReference.of(card),
            outcome_span=card.horizon if card.target == "within" else 1,
        )

    def reset(self) -> None:
        """Forget everything: a fresh detector, a new warmup."""
        self._detector = self.config.make()
        self._pending = np.empty((0, 2))  # (excess, loss) not yet in a full block
        self._seen = 0  # scored forecasts since the reset
        self._fed = 0  # of which fed to the detector (past the warmup)
        self._excess_sum = self._loss_sum = 0.0
        self._recent: list[tuple[float, float]] = []  # the latest block means
        if self._calibration is not None:
            self._calibration.reset()

    def update(self, block: np.ndarray) -> list[DriftSignal]:
        """Consume scored forecasts; every confirmed degradation, in event order."""
        rows = np.asarray(block, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] not in (2, 3):
            raise ValueError(f"block must have shape (n, 2) or (n, 3), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("block must be finite")
        proba, outcome = rows[:, 0], rows[:, 1]
        self._observed[0] += len(outcome)
        self._observed[1] += int(np.count_nonzero(outcome))
        clip = self.config.clip
        if self.reference is not None:
            loss = _log_loss(proba, outcome, clip)
            reference = self.reference.loss(proba, clip)
        elif rows.shape[1] == 3:  # the model's and persistence's losses in one pass
            both = _log_loss(rows[:, ::2], outcome[:, None], clip)
            loss, reference = both[:, 0], both[:, 1]
        else:
            loss, reference = _losses(proba, outcome, clip)
        excess = loss - reference
        values = np.empty((len(rows), 2))
        values[:, 0] = excess
        values[:, 1] = loss
        rate = None if self.reference is None else self.reference.rate(proba)
        signals: list[DriftSignal] = []
        start = 0
        while start < len(rows):
            found = self._next(values, outcome, rate, start)
            if found is None:
                break
            signals.append(found)
            self.reset()
            start = found.index + 1
        return signals

    def _next(
        self, values: np.ndarray, outcome: np.ndarray, rate: np.ndarray | None, start: int
    ) -> DriftSignal | None:
        """The first alarm of either watch from `start` on; each has seen up to it."""
        watch = self._calibration
        if watch is None or rate is None:
            return self._feed(values[start:], start)
        trial = watch.copy()
        at = trial.first(outcome[start:], rate[start:])
        stop = len(values) if at is None else start + at + 1
        found = self._feed(values[start:stop], start)
        if found is not None:  # the loss alarmed first: the watch sees up to it only
            watch.first(outcome[start : found.index + 1], rate[start : found.index + 1])
            return found
        self._calibration = trial
        return None if at is None else self._calibration_signal(start + at)

    @property
    def breach_rate(self) -> float:
        """The rate of the outcomes scored since the model went live (NaN before any)."""
        n, breaches = self._observed
        return breaches / n if n else math.nan

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

    def _calibration_signal(self, index: int) -> DriftSignal:
        watch = self._calibration
        assert watch is not None  # noqa: S101 - only called with a watch
        statistic = {
            "scored": float(self._seen),
            "calibration_direction": float(watch.direction),
            "odds_ratio_at_go_live": watch.odds_ratio,
            "change_events_ago": float(watch.change_ago),
        }
        if self._fed:
            statistic["log_loss"] = self._loss_sum / self._fed
        if self.reference is not None:
            statistic["card_log_loss"] = self.reference.log_loss
        statistic = {name: round(value, _DIGITS) for name, value in statistic.items()}
        return DriftSignal(index=index, features=("calibration",), statistic=statistic)

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
        if self.reference is not None:
            statistic["card_log_loss"] = self.reference.log_loss
        # Rounded: a forward pass over another batch size may differ in the last float32
        # bits, and a request must not depend on where the poll cut the stream.
        statistic = {name: round(value, _DIGITS) for name, value in statistic.items()}
        return DriftSignal(index=index, features=("log_loss",), statistic=statistic)
