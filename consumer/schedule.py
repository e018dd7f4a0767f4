"""Requests no detector raises: a tenant's first, its retries, and more history.

Every tenant with enough labelled history gets a forecaster, and early forecasters are
replaced with evidence. Three kinds of request come from the tenant's history alone:

- **The first** (`cold_start`): once the window is trainable (`cold_start_min_events`,
  `cold_start_min_per_class` of each class).
- **Retries** (`cold_start`, detector `retry`): a request answered without a forecaster
  (kept for want of evidence, no model better than the base rate, failed) leaves the
  tenant with none. It asks again once it has added `retry_after_fraction` of the
  window it asked with (half again, by default: that much more evidence), the wait
  doubling after each answer without one, up to a whole window. So a tenant is never
  left without a forecaster for good, and one whose data supports none costs a search
  per window, not one per cooldown.
- **More history** (`more_history`): a tenant whose forecaster was trained on n rows
  asks again when its window would give `more_history_factor` times n (doubled, by
  default), up to the window: a step to the full window is taken when it adds at
  least the square root of that factor (a cold start on 500 events grows to 1,000,
  then to the full 1,440). A kept champion counts as trained on what was asked with,
  so the steps do not repeat.

All three wait while the consumer catches up on a backlog: a tenant whose partition's
newest event in the batch is more than `catch_up_lag_s` behind the caller's clock asks
only once its window is full (`Block.caught_up`), so its first forecaster trains on
the history that is waiting, not on its first 500 events. All three pass the gate
(cooldown, one request in flight), count in the tenant's own events, and fall on the
same event whatever the batches, so a replay rebuilds the same schedule.
"""

from __future__ import annotations

import math

import numpy as np

from consumer.batch import Block, CoreConfig, TenantState, Trigger
from consumer.detectors import DriftSignal
from consumer.tenant_schedule import rows_of


def trainedrows_of(state: TenantState) -> int | None:
    """The rows the live model's card says it was trained on, if it says."""
    model = state.model
    if model is None:
        return None
    for value in (model.card.lineage.get("n_rows"), model.card.evidence.get("n")):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


class Schedule:
    """Finds the first event of a block span at which a scheduled request is due."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config

    def due(self, block: Block, start: int, stop: int) -> Trigger | None:
        """The first scheduled request due in events `[start, stop)` of the block.

        The window is as extended up to `start`. Evictions inside the span are ignored,
        which can only make a request a few events later than exact.
        """
        if stop <= start:
            return None
        state, cfg = block.state, self.config
        window = state.window
        total = np.minimum(len(window) + np.arange(1, stop - start + 1), window.capacity)
        ready = block.state.gate.allows_many(
            block.ts[start:stop], block.now, wall=block.live(start, stop)
        )
        if not block.caught_up:
            ready &= total >= window.capacity
        if state.model is None:
            return self._first(block, start, total, ready) if cfg.cold_start else None
        return self._more_history(block, start, total, ready)

    def _first(
        self, block: Block, start: int, total: np.ndarray, ready: np.ndarray
    ) -> Trigger | None:
        """The cold start, or the retry of a tenant whose answers gave it no forecaster."""
        cfg, state = self.config, block.state
        window, schedule = state.window, state.schedule
        if len(window) + len(total) < cfg.cold_start_min_events:
            return None
        part = block.labels[start : start + len(total)]
        pos = window.n_positive + np.cumsum(part)
        ready = (
            ready
            & (total >= cfg.cold_start_min_events)
            & (pos >= cfg.cold_start_min_per_class)
            & (total - pos >= cfg.cold_start_min_per_class)
        )
        wait = schedule.retry_wait(cfg)
        if wait and schedule.asked_at is not None:
            since = schedule.events + start + np.arange(1, len(total) + 1) - schedule.asked_at
            ready &= since >= wait
        if not ready.any():
            return None
        index = int(np.argmax(ready))
        if not wait:
            return Trigger(start + index, "cold_start", "cold_start", None)
        statistic = {
            "n_events": float(total[index]),
            "n_positive": float(pos[index]),
            "refusals": float(schedule.refusals),
            "wait_events": float(wait),
        }
        return Trigger(start + index, "cold_start", "retry", DriftSignal(index, (), statistic))

    def _more_history(
        self, block: Block, start: int, total: np.ndarray, ready: np.ndarray
    ) -> Trigger | None:
        """A request once the window would give the forecaster's rows times the factor."""
        factor, state = self.config.more_history_factor, block.state
        trained = trainedrows_of(state)
        if factor <= 1.0 or trained is None or state.model is None:
            return None
        base = trained
        if state.schedule.asked_model == state.model.revision:
            base = max(base, state.schedule.asked_rows)
        most = rows_of(state.window.capacity, state)
        target = min(factor * base, most)
        if target < math.sqrt(factor) * base:
            return None  # the window cannot hold a step worth a search
        rows = rows_of(total, state)
        ready = ready & (rows >= target)
        if not ready.any():
            return None
        index = int(np.argmax(ready))
        statistic = {
            "n_events": float(total[index]),
            "rows": float(rows[index]),
            "trained_rows": float(trained),
        }
        signal = DriftSignal(index, (), statistic)
        return Trigger(start + index, "more_history", "more_history", signal)
