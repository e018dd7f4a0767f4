"""A rolling per-tenant window of telemetry, columnar in numpy ring buffers.

The consumer keeps one window per tenant, for thousands of tenants, so a window
holds no per-event Python objects: four parallel numpy columns (`ts` float64,
`features` float32, `labels` bool, `offsets` uint32 relative to a base) used as one
ring. A full row costs `8 + 4 * n_features + 1 + 4` bytes (37 for the six metrics), so
10,000 tenants at the default capacity of 1,440 take about 0.50 GiB of buffers (the
README's 983 MiB RSS adds detectors and the interpreter with torch loaded).

Buffers start empty and grow geometrically (doubling) up to `capacity`, never
beyond: quiet tenants stay small, and a full window holds exactly `capacity`
rows. `clear()` gives the memory back.

Eviction is from the front (the oldest *arrival*), by count and by time. The time
bound is relative to the newest timestamp ever appended, not the newest one still
held, so a burst of stale replays cannot stretch the window. Events may arrive
slightly out of order; a late event keeps its arrival position and leaves only
when it reaches the front.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kernel.time_rule import TimeRule
from schemas.telemetry import FEATURES

_S = TypeVar("_S", bound=np.generic)

#: Events per tenant the consumer keeps unless configured otherwise: a day of
#: one-minute intervals, five days of five-minute ones, so that 10,000 full windows
#: (53 KB each) fit in 1 GiB beside their detectors.
DEFAULT_CAPACITY: Final = 1_440
#: Event time a tenant's window spans unless configured otherwise: a week, so that the
#: count bound, not the span, limits the window at every common telemetry interval,
#: and a tenant reporting every 15 minutes (672 events a week) reaches a cold start.
DEFAULT_SPAN_S: Final = TimeRule().span_s
#: Rows allocated on the first append: enough for a handful of batches.
_MIN_ALLOC: Final = 16
_MAX_DELTA: Final = 2**32 - 1


def row_nbytes(n_features: int = len(FEATURES)) -> int:
    """Bytes one event occupies across the four columns (for memory budgets).

    >>> row_nbytes(6), row_nbytes(6) * DEFAULT_CAPACITY
    (37, 53280)
    """
    return 8 + 4 * n_features + 1 + 4


class TenantWindow:
    """The newest events of one tenant, bounded by `capacity` events and `span_s` seconds.

    >>> w = TenantWindow(capacity=3, span_s=10.0, n_features=1)
    >>> w.extend([1.0, 2.0, 3.0, 4.0], [[0], [0], [0], [0]], [0, 1, 0, 1], [10, 11, 12, 13])
    >>> len(w), w.oldest_offset, w.newest_offset, w.n_positive
    (3, 11, 13, 2)
    >>> w.extend([14.5], [[0]], [0], [14])  # 14.5 - 10 = 4.5: 2.0, 3.0 and 4.0 expire
    >>> w.offsets().tolist()
    [14]
    """

    __slots__ = (
        "_capacity",
        "_span_s",
        "_n_features",
        "_ts",
        "_features",
        "_labels",
        "_offsets",
        "_offset_base",
        "_head",
        "_size",
        "_n_positive",
        "_newest_ts",
    )
    _ts: NDArray[np.float64]
    _features: NDArray[np.float32]
    _labels: NDArray[np.bool_]
    #: Offsets minus `_offset_base`, as uint32 (4 bytes a row instead of 8: a tenant's
    #: window spans far fewer than 2**32 offsets of its partition); int64 if ever not.
    _offsets: NDArray[Any]
    _offset_base: int
    _head: int
    _size: int
    _n_positive: int
    _newest_ts: float | None

    def __init__(self, capacity: int, span_s: float, n_features: int = len(FEATURES)) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not span_s > 0:  # also rejects NaN
            raise ValueError(f"span_s must be > 0, got {span_s}")
        if isinstance(n_features, bool) or not isinstance(n_features, int | np.integer):
            raise TypeError(f"n_features must be an int, got {type(n_features).__name__}")
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self._capacity = int(capacity)
        self._span_s = float(span_s)
        self._n_features = int(n_features)
        self._release()

    # -- configuration -------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def span_s(self) -> float:
        return self._span_s

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def allocated(self) -> int:
        """Rows the buffers can hold now (grows up to `capacity`)."""
        return int(self._ts.shape[0])

    # -- mutation ------------------------------------------------------------------

    def extend(
        self,
        ts: ArrayLike,
        features: ArrayLike,
        labels: ArrayLike,
        offsets: ArrayLike,
        *,
        checked: bool = True,
        max_ts: float | None = None,
    ) -> None:
        """Append a block of events in arrival order, then evict by count and by time.

        A block longer than `capacity` keeps only its last `capacity` events (its
        timestamps still all count towards the newest timestamp seen). `checked=False`
        skips the shape and dtype checks for callers that built the arrays themselves:
        float64 ts, float32 features, bool labels, int64 offsets.

        `max_ts` (the caller's clock plus its allowance) caps the time-bound anchor: a
        stamp beyond it cannot move the window's time ahead and expire every real event
        after it, and an anchor already beyond it (a bad stamp from before, a clock set
        back) is pulled back to it.
        """
        if checked:
            ts_a, feat_a, lab_a, off_a = self._coerce(ts, features, labels, offsets)
        else:  # the consumer core hands over arrays it built with the right dtypes
            ts_a, feat_a, lab_a, off_a = ts, features, labels, offsets  # type: ignore[assignment]
        n = ts_a.shape[0]
        if n == 0:
            return
        block_max = float(ts_a.max())
        if self._newest_ts is None or block_max > self._newest_ts:
            self._newest_ts = block_max
        if max_ts is not None and self._newest_ts > max_ts:
            self._newest_ts = float(max_ts)

        m = min(n, self._capacity)
        if m < n:
            ts_a, feat_a, lab_a, off_a = ts_a[-m:], feat_a[-m:], lab_a[-m:], off_a[-m:]
        overflow = self._size + m - self._capacity
        if overflow > 0:
            self._evict(overflow)
        self._reserve(self._size + m)
        self._write(ts_a, feat_a, lab_a, off_a)
        self._evict(self._n_expired(self._newest_ts - self._span_s))

    def clear(self) -> None:
        """Forget every event and the newest timestamp, and free the buffers."""
        self._release()

    # -- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (
            f"TenantWindow(len={self._size}, capacity={self._capacity}, "
            f"span_s={self._span_s}, n_features={self._n_features})"
        )

    @property
    def oldest_offset(self) -> int | None:
        """Offset of the oldest arrival still held: where a replay of this window starts."""
        if self._size == 0:
            return None
        return self._offset_base + int(self._offsets[self._head])

    @property
    def newest_offset(self) -> int | None:
        """Offset of the newest arrival still held."""
        if self._size == 0:
            return None
        return self._offset_base + int(
            self._offsets[(self._head + self._size - 1) % self.allocated]
        )

    @property
    def newest_ts(self) -> float | None:
        """Largest timestamp ever appended (since the last `clear`): the time-bound anchor."""
        return self._newest_ts

    @property
    def n_positive(self) -> int:
        """Events in the window labelled as an SLA breach."""
        return self._n_positive

    @property
    def n_negative(self) -> int:
        return self._size - self._n_positive

    @property
    def nbytes(self) -> int:
        """Bytes held by the four numpy buffers (not the Python object around them)."""
        return int(
            self._ts.nbytes + self._features.nbytes + self._labels.nbytes + self._offsets.nbytes
        )

    def ts(self) -> NDArray[np.float64]:
        """Timestamps (epoch seconds), oldest arrival first, as a fresh contiguous array."""
        return self._ordered(self._ts)

    def features(self) -> NDArray[np.float32]:
        """Feature rows, shape `(len, n_features)`, oldest arrival first, as a copy."""
        return self._ordered(self._features)

    def labels(self) -> NDArray[np.bool_]:
        return self._ordered(self._labels)

    def tail(self, n: int) -> tuple[NDArray[np.float64], NDArray[np.float32], NDArray[np.bool_]]:
        """The newest `n` rows (fewer if the window holds fewer) of ts, features, labels.

        What a live forecast needs of the past: a few rows, copied, not the whole window.

        >>> w = TenantWindow(capacity=3, span_s=100.0, n_features=1)
        >>> w.extend([1.0, 2.0, 3.0, 4.0], [[1], [2], [3], [4]], [0, 1, 0, 1], [0, 1, 2, 3])
        >>> [a.tolist() for a in w.tail(2)]
        [[3.0, 4.0], [[3.0], [4.0]], [False, True]]
        """
        rows = self._tail_rows(n)
        return self._ts[rows], self._features[rows], self._labels[rows]

    def tail_labels(self, n: int) -> NDArray[np.bool_]:
        """The newest `n` labels (fewer if the window holds fewer): `tail(n)[2]`, alone."""
        return self._labels[self._tail_rows(n)]

    def _tail_rows(self, n: int) -> NDArray[np.int64]:
        """Buffer positions of the newest `n` rows (fewer if the window holds fewer)."""
        count = min(max(n, 0), self._size)
        alloc = max(self.allocated, 1)
        rows: NDArray[np.int64] = (self._head + np.arange(self._size - count, self._size)) % alloc
        return rows

    def offsets(self) -> NDArray[np.int64]:
        out = self._ordered(self._offsets).astype(np.int64)
        out += self._offset_base
        return out

    # -- internals -----------------------------------------------------------------

    def _release(self) -> None:
        self._ts = np.empty(0, dtype=np.float64)
        self._features = np.empty((0, self._n_features), dtype=np.float32)
        self._labels = np.empty(0, dtype=np.bool_)
        self._offsets = np.empty(0, dtype=np.uint32)
        self._offset_base = 0
        self._head = 0
        self._size = 0
        self._n_positive = 0
        self._newest_ts = None

    def _coerce(
        self, ts: ArrayLike, features: ArrayLike, labels: ArrayLike, offsets: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float32], NDArray[np.bool_], NDArray[np.int64]]:
        """Check shapes and dtypes once per block, so the ring only ever holds valid rows."""
        ts_a = np.asarray(ts, dtype=np.float64)
        if ts_a.ndim != 1:
            raise ValueError(f"ts must be 1-D, got shape {ts_a.shape}")
        n = ts_a.shape[0]
        feat_a = np.asarray(features, dtype=np.float32)
        if n == 0 and feat_a.size == 0:
            feat_a = feat_a.reshape(0, self._n_features)
        if feat_a.shape != (n, self._n_features):
            raise ValueError(
                f"features must have shape ({n}, {self._n_features}), got {feat_a.shape}"
            )
        lab_raw = np.asarray(labels)
        if lab_raw.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {lab_raw.shape}")
        if n and not (lab_raw.dtype == np.bool_ or np.issubdtype(lab_raw.dtype, np.integer)):
            raise TypeError(f"labels must be bool or integer, got {lab_raw.dtype}")
        off_raw = np.asarray(offsets)
        if off_raw.shape != (n,):
            raise ValueError(f"offsets must have shape ({n},), got {off_raw.shape}")
        if n and not np.issubdtype(off_raw.dtype, np.integer):
            raise TypeError(f"offsets must be integers, got {off_raw.dtype}")
        if n and not np.isfinite(ts_a).all():
            raise ValueError("ts must be finite")
        return ts_a, feat_a, lab_raw.astype(np.bool_), off_raw.astype(np.int64)

    def _reserve(self, rows: int) -> None:
        """Grow the buffers (doubling, capped at capacity) to hold `rows`, unrolling the ring."""
        alloc = self.allocated
        if rows <= alloc:
            return
        new_alloc = min(self._capacity, max(rows, 2 * alloc, _MIN_ALLOC))
        ts_b = np.empty(new_alloc, dtype=np.float64)
        feat_b = np.empty((new_alloc, self._n_features), dtype=np.float32)
        lab_b = np.empty(new_alloc, dtype=np.bool_)
        off_b = np.empty(new_alloc, dtype=self._offsets.dtype)
        size = self._size
        ts_b[:size] = self.ts()
        feat_b[:size] = self.features()
        lab_b[:size] = self.labels()
        off_b[:size] = self._ordered(self._offsets)
        self._ts, self._features, self._labels, self._offsets = ts_b, feat_b, lab_b, off_b
        self._head = 0

    def _write(
        self,
        ts: NDArray[np.float64],
        features: NDArray[np.float32],
        labels: NDArray[np.bool_],
        offsets: NDArray[np.int64],
    ) -> None:
        """Copy a block that fits (after eviction and growth) behind the newest row."""
        offsets = self._relative(offsets)
        alloc = self.allocated
        m = ts.shape[0]
        start = (self._head + self._size) % alloc
        first = min(m, alloc - start)  # rows before the ring wraps
        for buf, block in (
            (self._ts, ts),
            (self._features, features),
            (self._labels, labels),
            (self._offsets, offsets),
        ):
            buf[start : start + first] = block[:first]
            if first < m:
                buf[: m - first] = block[first:]
        self._size += m
        self._n_positive += int(np.count_nonzero(labels))

    def _relative(self, offsets: NDArray[np.int64]) -> NDArray[Any]:
        """`offsets - _offset_base` in the buffer's dtype, rebasing first if they do not fit."""
        lo, hi = int(offsets.min()), int(offsets.max())
        base = self._offset_base
        if self._size == 0 or lo < base or hi - base > _MAX_DELTA:
            held = self.offsets()
            new_base = min(lo, int(held.min())) if len(held) else lo
            top = max(hi, int(held.max())) if len(held) else hi
            dtype = np.uint32 if top - new_base <= _MAX_DELTA else np.int64
            # The whole physical ring shifts; rows outside the live part are never read.
            shifted = self._offsets.astype(np.int64) + (base - new_base)
            self._offsets = shifted.astype(dtype)
            self._offset_base = new_base
        out = offsets - self._offset_base
        return out.astype(self._offsets.dtype, copy=False)

    def _segments(self, count: int) -> tuple[slice, slice]:
        """Physical slices of the `count` oldest rows: up to the buffer end, then wrapped."""
        alloc = self.allocated
        first = min(count, alloc - self._head)
        return slice(self._head, self._head + first), slice(0, count - first)

    def _evict(self, count: int) -> None:
        """Drop the `count` oldest rows (only the label tally needs updating)."""
        if count <= 0:
            return
        if count >= self._size:
            self._head, self._size, self._n_positive = 0, 0, 0
            return
        a, b = self._segments(count)
        self._n_positive -= int(
            np.count_nonzero(self._labels[a]) + np.count_nonzero(self._labels[b])
        )
        self._head = (self._head + count) % self.allocated
        self._size -= count

    def _n_expired(self, cutoff_ts: float) -> int:
        """How many leading rows have `ts < cutoff_ts`: the prefix up to the first survivor."""
        if self._size == 0 or self._ts[self._head] >= cutoff_ts:
            return 0  # the common case: the oldest row is still fresh
        a, b = self._segments(self._size)
        done = 0
        for seg in (a, b):
            alive = self._ts[seg] >= cutoff_ts
            if alive.any():
                return done + int(alive.argmax())
            done += alive.shape[0]
        return self._size

    def _ordered(self, buf: NDArray[_S]) -> NDArray[_S]:
        """The live rows of one column, oldest first, as a fresh contiguous array."""
        a, b = self._segments(self._size)
        if b.stop == 0:
            return buf[a].copy()
        return np.concatenate((buf[a], buf[b]))
