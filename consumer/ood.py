"""Out of distribution: a tenant whose inputs stay outside what its forecaster trained on.

A gated forecaster (`kernel.mlp.SlaMLP(gated=True)`) records the range each watched
input (the six metrics at t) took in training, and scores how far a row lies outside
it, in [0, 1] (`ood_score`); it already shrinks that row's forecast toward its prior
by the score, so a level shift never makes it confidently wrong. But a forecast held
at the prior warns of nothing: the tenant needs a forecaster trained on the new level.
When the score stays at or above `OOD_SCORE` for `ood_events` consecutive events, the
tenant asks for a retrain (`data_drift`, detector `out_of_distribution`), once per
such run and live model. A spike of a few events asks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import torch

from consumer.detectors import DriftSignal
from consumer.live_model import Events, LiveModel
from consumer.window import TenantWindow
from schemas.telemetry import FEATURES

#: A row is out of distribution at this score: its forecast is shrunk halfway or more.
OOD_SCORE: Final = 0.5
DETECTOR: Final = "out_of_distribution"


@dataclass(slots=True)
class OodRun:
    """One tenant's current run of out-of-distribution events, and whether it asked."""

    #: The live model the run is measured against (a new model starts over).
    revision: str | None = None
    run: int = 0
    score_sum: float = 0.0
    asked: bool = False


def watched_inputs(model: LiveModel) -> np.ndarray | None:
    """The input columns the model's gate watches, or None where it watches none."""
    module = model.module
    if not module.gated:
        return None
    watched = np.flatnonzero(module.ood_watch.detach().cpu().numpy())
    return watched if len(watched) else None


def ood_scores(model: LiveModel, window: TenantWindow, block: Events) -> np.ndarray | None:
    """Each block event's out-of-distribution score, or None for a model that has none.

    The watched inputs of the pipeline's forecasters are the metrics at t, which each
    row computes from its own event: then only the block's own events are transformed
    (no history), a fraction of what the forecast itself costs. Otherwise the rows are
    computed as the forecast computes them, with the tail of the tenant's `window`.
    """
    watched = watched_inputs(model)
    if watched is None:
        return None
    module = model.module
    if int(watched.max()) < len(FEATURES):
        rows = model.features.transform(*block)
    else:
        rows = model.inputs(window.tail(model.features.history - 1), block)
    with torch.inference_mode():
        scores = module.ood_score(torch.from_numpy(np.ascontiguousarray(rows, np.float32)))
    out: np.ndarray = scores.cpu().numpy().astype(np.float64)
    return out


def ood_alarms(run: OodRun, model: LiveModel, scores: np.ndarray, events: int) -> list[DriftSignal]:
    """The events at which a run of `events` out-of-distribution scores completes.

    `run` carries the run across blocks; `events` 0 asks nothing.
    """
    if run.revision != model.revision:
        run.revision, run.run, run.score_sum, run.asked = model.revision, 0, 0.0, False
    signals: list[DriftSignal] = []
    for index, score in enumerate(scores.tolist()):
        if score < OOD_SCORE:
            run.run, run.score_sum, run.asked = 0, 0.0, False
            continue
        run.run += 1
        run.score_sum += score
        if events > 0 and run.run >= events and not run.asked:
            run.asked = True
            statistic = {
                "ood_events": float(run.run),
                "ood_score_mean": round(run.score_sum / run.run, 6),
                "ood_score_min": OOD_SCORE,
            }
            signals.append(DriftSignal(index, ("ood_score",), statistic))
    return signals
