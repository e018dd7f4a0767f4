"""Every error the retrainer raises on purpose, each under the one root `SlaopsError`.

One module, so a reader sees in one place what serving a request can end in and what
the handler does with it: a `DatasetError` or a `ReplayError` (`RequestRefused`
included) ends the request with a `RetrainFailed` naming the reason; `Cancelled` stops
a run whose partition moved, and is never reported (the new owner serves the request).
None is `transient`: retrying the same request unchanged would fail the same way. Each
message says what to do about it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from schemas.errors import SlaopsError

__all__ = [
    "Cancelled",
    "DatasetError",
    "DatasetReason",
    "ReplayError",
    "RequestRefused",
    "SlaopsError",
]


class DatasetReason(StrEnum):
    """Why a training set could not be built (stable codes for logs and events)."""

    SHAPE = "shape"
    NON_FINITE = "non_finite"
    TOO_FEW_ROWS = "too_few_rows"
    SINGLE_CLASS = "single_class"


#: What to do about each reason, appended to the detail a `RetrainFailed` carries.
_WHAT_TO_DO: Final = {
    DatasetReason.SHAPE: "the replayed rows do not fit the telemetry schema: a bug to report",
    DatasetReason.NON_FINITE: "fix the producer that sends non-finite or out-of-range metrics",
    DatasetReason.TOO_FEW_ROWS: "wait for more of the tenant's telemetry (the next request "
    "names a longer window) or lower min_rows (SLAOPS_MIN_ROWS)",
    DatasetReason.SINGLE_CLASS: "a model needs breaches and healthy intervals in its window; "
    "a later request, on a newer window, may have both",
}


class DatasetError(SlaopsError, ValueError):
    """The replayed rows cannot make a usable supervised set; `reason` says why.

    `detail` says what was found and what to do (`hint`, by default the reason's own).
    """

    def __init__(self, reason: DatasetReason, detail: str, hint: str | None = None) -> None:
        self.reason = reason
        self.found = detail
        self.hint = hint or _WHAT_TO_DO[reason]
        self.detail = f"{detail}; {self.hint}"
        super().__init__(f"{reason}: {self.detail}")

    def __reduce__(self) -> tuple[type[DatasetError], tuple[DatasetReason, str, str]]:
        # Picklable like any exception (joblib and Dask ship errors between processes).
        return (type(self), (self.reason, self.found, self.hint))


class ReplayError(SlaopsError):
    """The offset ranges cannot be read back (they left the topic, or never existed)."""


class RequestRefused(ReplayError):
    """A request names training data it may not have: another topic, too many ranges, or
    more offsets than any window spans. Never retried: the request itself is invalid."""


class Cancelled(SlaopsError):
    """The request's partition moved to another member while it was being served.

    Not a failure: the handler's caller drops the run's result and reports nothing, and
    the partition's new owner serves the request. Never `transient` (it is not retried
    here either).
    """
