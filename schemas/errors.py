"""The root of every error slaops raises on purpose.

It lives in the lowest layer so that the contracts (``InvalidTelemetry``) share it
with everything above; ``kernel.errors`` adds one small subclass per area.
"""

from __future__ import annotations

from typing import ClassVar


class SlaopsError(Exception):
    """Root of every error slaops raises on purpose.

    ``transient`` says whether the same operation may succeed if tried again
    unchanged (a broker or store outage, a concurrent writer); retry policies read
    it instead of listing classes.
    """

    transient: ClassVar[bool] = False
