"""Performance drift: a River detector on a live model's error stream.

Each forecast of a tenant's live model is scored when the interval it forecast
arrives; the detector watches the resulting 0/1 misclassifications. ADWIN (default)
reacts to a change of the error rate in either direction, so an alarm counts only when
the recent error rate is above the rate before it: a model getting better is no reason
to retrain. DDM and HDDM_W watch for increases by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
from river import drift
from river.drift import binary

from consumer.detectors import DriftSignal

PerformanceDetector = Literal["adwin", "ddm", "hddm_w"]
_CLASSES: Final = {"adwin": drift.ADWIN, "ddm": binary.DDM, "hddm_w": binary.HDDMW}


@dataclass(frozen=True, slots=True)
class PerformanceConfig:
    detector: PerformanceDetector = "adwin"
    params: Mapping[str, float] = field(default_factory=dict)
    #: Scored forecasts of a new model before alarms count: its first errors are noisy.
    warmup: int = 100
    #: Events between an alarm and its request: a window cut right at the alarm would
    #: hold almost only pre-change rows, and the retrained model would learn the past.
    settle_events: int = 240

    def __post_init__(self) -> None:
        if self.detector not in _CLASSES:
            raise ValueError(f"performance detector must be one of {sorted(_CLASSES)}")
        if self.warmup < 0:
            raise ValueError("performance warmup must be >= 0")
        if self.settle_events < 0:
            raise ValueError("performance settle_events must be >= 0")
        self.make()

    def make(self) -> Any:
        try:
            return _CLASSES[self.detector](**dict(self.params))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params rejected by River {self.detector}: {exc}") from exc


class ErrorRateMonitor:
    """Per tenant and live model; implements `consumer.detectors.PerformanceMonitor`."""

    __slots__ = ("config", "_detector", "_seen", "_errors")

    def __init__(self, config: PerformanceConfig) -> None:
        self.config = config
        self._detector = config.make()
        self._seen = 0
        self._errors = 0

    @property
    def error_rate(self) -> float:
        return self._errors / self._seen if self._seen else 0.0

    def update(self, errors: np.ndarray) -> list[DriftSignal]:
        """Feed misclassifications (bool, event order); every confirmed degradation.

        After an alarm the detector starts afresh on the rest of the block, so the
        alarms do not depend on where blocks are cut.
        """
        signals: list[DriftSignal] = []
        warmup = self.config.warmup
        adwin = self.config.detector == "adwin"
        detector = self._detector
        for index, error in enumerate(errors.tolist()):
            detector.update(error)
            self._seen += 1
            self._errors += error
            if not detector.drift_detected or self._seen <= warmup:
                continue
            overall = self._errors / self._seen
            recent = float(detector.estimation) if adwin else overall
            if adwin and recent <= overall:
                continue  # the model got better, not worse
            signals.append(
                DriftSignal(
                    index=index,
                    features=("error_rate",),
                    statistic={
                        "scored": float(self._seen),
                        "error_rate": overall,
                        "error_rate_recent": recent,
                    },
                )
            )
            self.reset()
            detector = self._detector
        return signals

    def reset(self) -> None:
        self._detector = self.config.make()
        self._seen = self._errors = 0
