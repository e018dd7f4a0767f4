"""A tenant's place in the request schedule (`consumer.schedule`): plain state.

Kept apart from the schedule's logic so that `consumer.batch.TenantState` can hold it
without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumer.batch import CoreConfig, TenantState, Trigger


@dataclass(slots=True)
class RequestSchedule:
    """One tenant's place in the schedule: what it asked with, and answers without a model."""

    #: The tenant's events ingested since its state was made (a replay counts the same).
    events: int = 0
    #: Answers without a forecaster in a row (reset when a model goes live).
    refusals: int = 0
    #: `events` and the window's size at its latest request; None before any.
    asked_at: int | None = None
    asked_window: int = 0
    #: The rows its latest `more_history` request had, and the model it held then.
    asked_rows: int = 0
    asked_model: str | None = None

    def record(self, state: TenantState, events: int, trigger: Trigger) -> None:
        """A request went out at the tenant's event number `events`."""
        self.asked_at = events
        self.asked_window = len(state.window)
        if trigger.reason == "more_history" and state.model is not None:
            self.asked_rows = rows_of(len(state.window), state)
            self.asked_model = state.model.revision

    def answered(self, state: TenantState) -> None:
        """Its request was answered: one more refusal if the tenant still has no model."""
        if state.model is None:
            self.refusals += 1
        else:
            self.refusals = 0

    def retry_wait(self, config: CoreConfig) -> int:
        """Events since the latest request before a tenant with no forecaster asks again."""
        if self.refusals == 0:
            return 0
        grown = config.retry_after_fraction * max(self.asked_window, 1)
        wait = grown * 2.0 ** (self.refusals - 1)
        return max(1, int(min(wait, config.window_max_events)))


def rows_of(events: Any, state: TenantState) -> Any:
    """The training rows `events` window events give the tenant's live model's spec.

    `events` may be an int or an array of counts (the result is the same kind).
    """
    model = state.model
    if model is None:
        return events
    return events - (model.features.history - 1) - model.horizon
