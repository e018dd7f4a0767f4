"""Capped exponential backoff: how long to wait before the next try of a failed operation."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """`base_s * 2**attempt`, at most `max_s`; raises ValueError on a bad policy.

    >>> [Backoff(5.0, 300.0).delay_s(a) for a in (0, 1, 2, 10)]
    [5.0, 10.0, 20.0, 300.0]
    """

    base_s: float = 5.0
    max_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s, got {self.base_s}, {self.max_s}")

    def delay_s(self, attempt: int) -> float:
        """The pause after `attempt` earlier failures (0: the first retry)."""
        return min(self.max_s, self.base_s * 2.0 ** min(attempt, 64))

    def jittered_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """`delay_s` times a uniform draw from [0.5, 1): members that failed together
        (one outage) do not all come back at the same instant.

        >>> 2.5 <= Backoff(5.0, 300.0).jittered_s(0) < 5.0
        True
        """
        draw = (rng or _RNG).random()
        return self.delay_s(attempt) * (0.5 + 0.5 * draw)


_RNG = random.Random()  # noqa: S311 - backoff jitter, not security
