"""Which offsets of a partition may be committed when messages finish out of order.

Requests of different tenants share partitions and are served one tenant at a time, so
a later offset can finish before an earlier one; the committable offset is the first
one received and not yet done.
"""

from __future__ import annotations

from collections.abc import Iterable


class OffsetBook:
    def __init__(self) -> None:
        self._open: dict[int, set[int]] = {}
        self._high: dict[int, int] = {}

    def received(self, partition: int, offset: int) -> None:
        self._open.setdefault(partition, set()).add(offset)
        self._high[partition] = max(self._high.get(partition, -1), offset)

    def done(self, partition: int, offset: int) -> None:
        self._open.get(partition, set()).discard(offset)

    def committable(self) -> dict[int, int]:
        """Per partition, the offset to commit: everything below it is done."""
        result = {}
        for partition, high in self._high.items():
            still_open = self._open.get(partition)
            result[partition] = min(still_open) if still_open else high + 1
        return result

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._open.pop(partition, None)
            self._high.pop(partition, None)
