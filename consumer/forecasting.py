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
from typing import Final

import numpy as np

from consumer.batch import BatchResult, Block, CoreConfig, TenantState
from consumer.detectors import DriftSignal
from consumer.live_model import Events, LiveModel
from consumer.ood import ood_scores, watched_inputs
from consumer.recalibration import RecalibrationPlan, finish_all, solve
from consumer.stacked import BatchForecasts, StackCache
from consumer.warnings import LiveWarnings, quiet_flags, quiet_flags_many
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
        #: Each prepared tenant's block quiet flags, for the state they were computed in.
        self._quiet: dict[str, tuple[TenantState, np.ndarray]] = {}
        #: Persistence's forecast after a calm and after a breached interval, per model.
        self._persistence: dict[str, tuple[LiveModel, np.ndarray]] = {}

    def emit(self, result: BatchResult) -> None:
        """Publish the batch's forecasts, in block order, once every block is forecast."""
        pending, self._unpublished = self._unpublished, []
        plans = [plan for _b, _m, plan, _on in pending]
        solve(plans)
        sent = finish_all(plans)
        emit_forecasts(
            [(b, m, p, on) for (b, m, _plan, on), p in zip(pending, sent, strict=True)], result
        )

    def prepare(self, work: Sequence[tuple[TenantState, Events]]) -> None:
        """Forecast a batch's held tenants together, before their blocks come one by one.

        Each (state, block columns) is a tenant held at the batch's start; `forecast`
        then takes its block's forecasts and quiet flags from here (`consumer.stacked`,
        `quiet_flags_many`), or computes them alone for a tenant that was not prepared.
        """
        self._batch.compute(self._stacks, work)
        known = self._persistence
        self._persistence = {
            state.tenant: found
            for state, _block in work
            if (found := known.get(state.tenant)) is not None and found[0] is state.model
        }
        befores = [state.window.tail_labels(QUIET - 1) for state, _block in work]
        flags = quiet_flags_many(befores, [block[2] for _state, block in work])
        self._quiet = {
            state.tenant: (state, quiet) for (state, _block), quiet in zip(work, flags, strict=True)
        }

    def ood_scores(self, block: Block) -> np.ndarray | None:
        """The block's OOD scores (`consumer.ood.ood_scores`, None for a model that has
        none): the batch's forward computed them where the model forecast with the batch
        (the gate scores the same rows), else they are computed alone."""
        state = block.state
        model = state.model
        if model is None:
            return None
        scores = self._batch.take_ood(state)
        if scores is None or len(scores) != len(block):
            return ood_scores(model, state.window, block.events)
        return scores if watched_inputs(model) is not None else None

    def _quiet_flags(self, block: Block) -> np.ndarray:
        state = block.state
        found = self._quiet.pop(state.tenant, None)
        if found is not None and found[0] is state and len(found[1]) == len(block):
            return found[1]
        return quiet_flags(state.window.tail_labels(QUIET - 1), block.labels)

    def _persisted(self, model: LiveModel, labels: np.ndarray) -> np.ndarray:
        """`model.persistence(labels)`, from its two values (a model's are fixed)."""
        found = self._persistence.get(model.tenant)
        if found is None or found[0] is not model:
            found = (model, model.persistence(np.array([False, True])))
            self._persistence[model.tenant] = found
        out: np.ndarray = found[1][labels.astype(np.intp)]
        return out

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
        quiet = self._quiet_flags(block)
        # The pending forecasts, then the block's: each the model's, then what persistence
        # forecast for the same event (the monitor watches the model's loss against it:
        # both suffer the same hard hours), then whether the tenant was quiet.
        horizon = model.horizon
        pending = state.pending_proba
        pend = len(pending)
        combined = np.empty((pend + len(labels), 3))
        combined[:pend] = pending
        combined[pend:, 0] = proba
        combined[pend:, 1] = self._persisted(model, labels)
        combined[pend:, 2] = quiet
        flags = np.concatenate((state.pending_labels, labels))
        scored = np.arange(max(0, horizon - pend), len(labels))
        made = combined[pend + scored - horizon]
        outcomes = np.empty((len(scored), 3))
        outcomes[:, 0] = made[:, 0]
        outcomes[:, 1] = _outcomes(model, flags, pend, scored)
        outcomes[:, 2] = made[:, 1]
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


def emit_forecasts(
    published: Sequence[tuple[Block, LiveModel, np.ndarray, np.ndarray]], result: BatchResult
) -> None:
    """One `sla.forecasts` record per fresh, finite forecast of each (block, model,
    published probabilities, warning on), in block order then event order.

    Encoded in one pass for the batch: the times formatted by numpy in one call (or two:
    a block with a fractional second has its times to the microsecond, one without to
    the second), the probabilities rounded and written in one (`probability_texts`),
    and each record built from its block's prefix. A `json.dumps` per event, or the
    numpy calls per block, would cost more than the forecast.
    """
    heads: list[tuple[bytes, str, int]] = []
    times, chosen, warned = [], [], []
    for block, model, proba, on in published:
        fresh = (block.offsets >= block.replay_limit) & np.isfinite(proba)
        count = int(np.count_nonzero(fresh))
        if not count:
            continue
        tenant = block.state.tenant
        head = (
            f'{{"tenant": {json.dumps(tenant)}, "horizon": {model.horizon}, '
            f'"model_revision": {json.dumps(model.revision)}, '
            f'"model_version": {model.version}, "ts": "'
        )
        heads.append((tenant.encode(), head, count))
        if count == len(fresh):
            times.append(block.ts)
            chosen.append(proba)
            warned.append(on)
        else:
            times.append(block.ts[fresh])
            chosen.append(proba[fresh])
            warned.append(on[fresh])
    if not heads:
        return
    micros = np.round(np.concatenate(times) * 1e6).astype("datetime64[us]")
    sizes = np.fromiter((count for _k, _h, count in heads), np.int64, len(heads))
    fractional = (micros.astype(np.int64) % 1_000_000) != 0
    whole = np.repeat(~np.logical_or.reduceat(fractional, np.cumsum(sizes) - sizes), sizes)
    if whole.all():
        stamps = np.datetime_as_string(micros, unit="s", timezone="UTC").tolist()
    else:
        mixed = np.empty(len(micros), dtype=object)
        mixed[whole] = np.datetime_as_string(micros[whole], unit="s", timezone="UTC")
        mixed[~whole] = np.datetime_as_string(micros[~whole], unit="us", timezone="UTC")
        stamps = mixed.tolist()
    probabilities = probability_texts(np.round(np.concatenate(chosen).astype(np.float64), 6))
    expected = np.concatenate(warned).tolist()
    out = result.forecasts
    end = 0
    for key, head, count in heads:
        begin, end = end, end + count
        out.extend(
            [
                (
                    key,
                    f'{head}{stamp}", "probability": {probability}, '
                    f'"breach_expected": {"true}" if breach else "false}"}'.encode(),
                )
                for stamp, probability, breach in zip(
                    stamps[begin:end], probabilities[begin:end], expected[begin:end], strict=True
                )
            ]
        )


#: Each of 0 ... 999 as three digit characters, and its trailing zeros (3 for 0).
_DIGITS3: Final = np.array([[ord(c) for c in f"{j:03d}"] for j in range(1000)], dtype=np.uint32)
_ZEROS3: Final = np.array(
    [3 if j == 0 else 3 - len(f"{j:03d}".rstrip("0")) for j in range(1000)], dtype=np.int64
)
#: Which of "0.dddddd"'s eight characters a text with L digits after the point keeps.
_KEEP: Final = (np.arange(8) < 2 + np.arange(7)[:, None]).astype(np.uint32)


def probability_texts(rounded: np.ndarray) -> list[str]:
    """`repr` of each probability rounded to 6 decimals (in [0, 1]), as `json.dumps`
    writes it, from its millionths in a few array operations.

    A float's `repr` costs more than the rest of its record. Every value k / 10**6 is
    written "0." and its six digits without trailing zeros, which is its shortest
    repr; below 1e-4 (an exponent) and at 1 the few values take `repr`. Tested on every
    k from 0 to 10**6.
    """
    millionths = np.rint(rounded * 1e6).astype(np.int64)
    np.clip(millionths, 0, 999_999, out=millionths)
    high, low = np.divmod(millionths, 1000)
    chars = np.empty((len(rounded), 8), dtype=np.uint32)
    chars[:, 0], chars[:, 1] = ord("0"), ord(".")
    chars[:, 2:5] = _DIGITS3[high]
    chars[:, 5:] = _DIGITS3[low]
    zeros = _ZEROS3[low]
    whole = low == 0
    zeros[whole] += _ZEROS3[high[whole]]
    chars *= _KEEP[6 - np.minimum(zeros, 6)]
    texts: list[str] = chars.view("<U8").ravel().tolist()  # trailing NULs are dropped
    for i in np.flatnonzero((rounded < 1e-4) | (rounded >= 1.0)).tolist():
        texts[i] = repr(float(rounded[i]))
    return texts
