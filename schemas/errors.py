"""The contracts' errors, and the root of every error slaops raises on purpose.

The root lives in the lowest layer so that the contracts (``InvalidTelemetry``) share
it with everything above; ``kernel.errors`` adds one small subclass per area, and each
service keeps its own in one module (``consumer.errors``, ``retrainer.errors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # the reasons are part of the telemetry contract itself
    from schemas.telemetry import RejectReason

__all__ = ["InvalidTelemetry", "SlaopsError"]


class SlaopsError(Exception):
    """Root of every error slaops raises on purpose.

    ``transient`` says whether the same operation may succeed if tried again
    unchanged (a broker or store outage, a concurrent writer); retry policies read
    it instead of listing classes.
    """

    transient: ClassVar[bool] = False


class InvalidTelemetry(SlaopsError, ValueError):
    """A raw message that is not a valid `TelemetryEvent`.

    `reason` is the stable, machine-readable `RejectReason` the dead-letter topic
    carries; `detail` says which field or check failed, so the producer knows what to
    fix (the message is never retried: the same bytes fail the same way).
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
