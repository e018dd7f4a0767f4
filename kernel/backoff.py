"""Capped exponential backoff: how long to wait before the next try of a failed operation."""

from __future__ import annotations

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
