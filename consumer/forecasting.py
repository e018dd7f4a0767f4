"""Live forecasts of a block: one model call, scoring of earlier forecasts, warnings, emission.

The forecast made at event t is scored when event t + horizon's label arrives, in this
block or a later one (the tenant's `pending_proba` and `pending_labels` carry the last
`horizon` forecasts across blocks): against that one label for a card whose `target`
is "at" (format 2), against "any breach in t+1 .. t+horizon" for "within" (format 3).
Scored forecasts feed the tenant's performance monitor, whose alarms come back to the
core as triggers. Every forecast also drives the tenant's warning (`consumer.warnings`),
whose edges are emitted whenever the tenant has a live model; a published forecast's
`breach_expected` says whether the warning is on, and its probability carries the
tenant's live offset (`consumer.recalibration`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from consumer.batch import BatchResult, Block, CoreConfig, TenantState
from consumer.detectors import DriftSignal
from consumer.live_model import Events, LiveModel
from consumer.recalibration import RecalibrationPlan, solve
from consumer.stacked import BatchForecasts, StackCache
from consumer.warnings import LiveWarnings, quiet_flags
from kernel.early_warning import QUIET


class Forecaster:
    """Forecasts, scores and (with `publish_forecasts`) emits a block's live forecasts.

    Holds no state of its own: each tenant's model, monitor, pending forecasts and
    warning are in its `TenantState`. A non-finite forecast is neither scored nor
    published, and never a warning.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._warnings = LiveWarnings(config)
        self._stacks = StackCache()
        self._batch = BatchForecasts()
        self._unpublished: list[tuple[Block, LiveModel, RecalibrationPlan, np.ndarray]] = []

    def emit(self, result: BatchResult) -> None:
        """Publish the batch's forecasts, in block order, once every block is forecast."""
        pending, self._unpublished = self._unpublished, []
        solve([plan for _b, _m, plan, _on in pending])
        for block, model, plan, on in pending:
            _emit(block, model, plan.finish(), on, result)

    def prepare(self, work: Sequence[tuple[TenantState, Events]]) -> None:
        """Forecast a batch's held tenants together, before their blocks come one by one.

        Each (state, block columns) is a tenant held at the batch's start; `forecast`
        then takes its block's forecasts from here (`consumer.stacked`), or computes
        them alone for a tenant that was not prepared.
        """
        self._batch.compute(self._stacks, work)

    def forecast(self, block: Block, result: BatchResult) -> list[DriftSignal]:
        """Forecast the block (with the batch, or alone), and score earlier forecasts.

        Returns the performance monitor's alarms, each `index` an event of the block.
        """
        state = block.state
        model = state.model
        monitor = state.performance
        if model is None or monitor is None:
            return []
        labels = block.labels
        proba = self._batch.take(state)
        if proba is None:  # not forecast with the batch: alone, from its window's tail
            proba = model.forecast(state.window.tail(model.features.history - 1), block.events)
        quiet = quiet_flags(state.window.tail(QUIET - 1)[2], labels)
        # Beside each forecast, what persistence forecast for the same event: the monitor
        # watches the model's loss against it (both suffer the same hard hours).
        made_now = np.column_stack((proba, model.persistence(labels), quiet))
        horizon = model.horizon
        pending = state.pending_proba
        combined = np.concatenate((pending, made_now)) if len(pending) else made_now
        flags = np.concatenate((state.pending_labels, labels))
        scored = np.arange(max(0, horizon - len(pending)), len(labels))
        made = combined[len(pending) + scored - horizon]
        outcomes = np.column_stack(
            (made[:, 0], _outcomes(model, flags, len(pending), scored), made[:, 1])
        )
        state.pending_proba = combined[-horizon:]
        state.pending_labels = flags[-horizon:]
        on = self._warnings.update(block, model, proba, result, quiet)
        if self.config.publish_forecasts:
            # Only what is published carries the offset: without publishing, no refit.
            # The batch's refits are fitted together, and its forecasts emitted, in `emit`.
            plan = state.recalibration.plan(
                proba, quiet, scored, made[:, 0], made[:, 2], outcomes[:, 1], horizon
            )
            self._unpublished.append((block, model, plan, on))
        # A non-finite forecast is no forecast: never scored, never published.
        usable = np.isfinite(outcomes[:, 0])
        if not usable.all():
            scored, outcomes = scored[usable], outcomes[usable]
        _count(block, model, proba, outcomes, scored, result)
        return [replace(a, index=int(scored[a.index])) for a in monitor.update(outcomes)]


def _outcomes(model: LiveModel, flags: np.ndarray, pending: int, scored: np.ndarray) -> np.ndarray:
    """What the forecasts scored at block events `scored` forecast, as 0/1 (vectorised).

    `flags` are the `pending` forecasts' labels, then the block's: block event s is
    `flags` index `pending + s`, and the forecast scored there was made `horizon`
    events earlier. "at": that event's breach; "within": any breach after the forecast
    up to it.
    """
    last = pending + scored
    if model.card.target != "within":
        out: np.ndarray = flags[last].astype(np.float64)
        return out
    breaches = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    within = breaches[last + 1] - breaches[last + 1 - model.horizon]
    return (within > 0).astype(np.float64)


def _count(
    block: Block,
    model: LiveModel,
    proba: np.ndarray,
    outcomes: np.ndarray,
    scored: np.ndarray,
    result: BatchResult,
) -> None:
    """Forecasts made, scored and wrong in a block, of fresh events only (vectorised)."""
    offsets, replay_limit = block.offsets, block.replay_limit
    wrong = (outcomes[:, 0] >= model.threshold) != (outcomes[:, 1] >= 0.5)
    finite = int(np.count_nonzero(np.isfinite(proba)))
    if replay_limit <= int(offsets[0]):  # nothing replayed: the common case
        result.forecasts_made += finite
        result.forecasts_non_finite += len(proba) - finite
        result.forecasts_scored += len(scored)
        result.forecast_errors += int(np.count_nonzero(wrong))
        result.forecast_holdout_errors += model.holdout_error_rate * len(scored)
        return
    fresh = offsets >= replay_limit
    made = int(np.count_nonzero(fresh & np.isfinite(proba)))
    result.forecasts_made += made
    result.forecasts_non_finite += int(np.count_nonzero(fresh)) - made
    judged = fresh[scored]
    result.forecasts_scored += int(np.count_nonzero(judged))
    result.forecast_errors += int(np.count_nonzero(wrong & judged))
    result.forecast_holdout_errors += model.holdout_error_rate * int(np.count_nonzero(judged))


def _emit(
    block: Block, model: LiveModel, proba: np.ndarray, on: np.ndarray, result: BatchResult
) -> None:
    """One `sla.forecasts` record per fresh, finite forecast of the block."""
    fresh = (block.offsets >= block.replay_limit) & np.isfinite(proba)
    if not fresh.any():
        return
    tenant = block.state.tenant
    key = tenant.encode()
    # One JSON object per event, built from a per-block prefix and vectorised time
    # formatting: json.dumps and datetime per event would cost more than the forecast.
    head = (
        f'{{"tenant": {json.dumps(tenant)}, "horizon": {model.horizon}, '
        f'"model_revision": {json.dumps(model.revision)}, '
        f'"model_version": {model.version}, "ts": "'
    )
    micros = np.round(block.ts[fresh] * 1e6).astype("datetime64[us]")
    whole = not (micros.astype(np.int64) % 1_000_000).any()
    stamps = np.datetime_as_string(
        micros,
        unit="s" if whole else "us",
        timezone="UTC",
    ).tolist()
    chosen = proba[fresh]
    expected = on[fresh].tolist()
    probabilities = np.round(chosen.astype(np.float64), 6).tolist()
    out = result.forecasts
    for stamp, probability, breach in zip(stamps, probabilities, expected, strict=True):
        tail = "true}" if breach else "false}"
        value = f'{head}{stamp}", "probability": {probability!r}, "breach_expected": {tail}'
        out.append((key, value.encode()))
