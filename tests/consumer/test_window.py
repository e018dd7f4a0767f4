"""TenantWindow against a list oracle, plus the bounds, validation and memory budget."""

from __future__ import annotations

import doctest
import math
import tracemalloc
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import consumer.window as window_mod
from consumer.window import DEFAULT_CAPACITY, TenantWindow, row_nbytes

GIB = 1 << 30
N_FEATURES = 6


def block(
    ts: list[float], labels: list[int] | None = None, first_offset: int = 0, n_features: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A block whose features encode the offset, so a misplaced row is easy to see."""
    n = len(ts)
    offsets = np.arange(first_offset, first_offset + n, dtype=np.int64)
    features = np.repeat(offsets.astype(np.float32)[:, None], n_features, axis=1)
    lab = np.zeros(n, dtype=bool) if labels is None else np.asarray(labels, dtype=bool)
    return np.asarray(ts, dtype=np.float64), features, lab, offsets


@dataclass
class Oracle:
    """The same semantics, one Python list entry per event."""

    capacity: int
    span_s: float
    rows: list[tuple[float, np.ndarray, bool, int]] = field(default_factory=list)
    newest_ts: float | None = None

    def extend(
        self, ts: np.ndarray, feats: np.ndarray, labels: np.ndarray, offs: np.ndarray
    ) -> None:
        for i in range(len(ts)):
            self.rows.append(
                (float(ts[i]), feats[i].astype(np.float32), bool(labels[i]), int(offs[i]))
            )
            if self.newest_ts is None or ts[i] > self.newest_ts:
                self.newest_ts = float(ts[i])
        self.rows = self.rows[-self.capacity :]
        if self.newest_ts is not None:
            while self.rows and self.rows[0][0] < self.newest_ts - self.span_s:
                self.rows.pop(0)


def assert_matches(w: TenantWindow, o: Oracle, n_features: int) -> None:
    assert len(w) == len(o.rows)
    assert w.newest_ts == o.newest_ts
    np.testing.assert_array_equal(w.ts(), np.array([r[0] for r in o.rows], dtype=np.float64))
    expected_feats = (
        np.stack([r[1] for r in o.rows]) if o.rows else np.empty((0, n_features), dtype=np.float32)
    )
    np.testing.assert_array_equal(w.features(), expected_feats)
    np.testing.assert_array_equal(w.labels(), np.array([r[2] for r in o.rows], dtype=bool))
    np.testing.assert_array_equal(w.offsets(), np.array([r[3] for r in o.rows], dtype=np.int64))
    assert w.n_positive == sum(r[2] for r in o.rows)
    assert w.n_negative == len(o.rows) - w.n_positive
    assert w.oldest_offset == (o.rows[0][3] if o.rows else None)
    assert w.newest_offset == (o.rows[-1][3] if o.rows else None)
    assert w.allocated <= w.capacity
    assert w.nbytes == w.allocated * row_nbytes(n_features)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 40),
    span_s=st.floats(0.5, 60.0),
    n_features=st.integers(1, 4),
    sizes=st.lists(st.integers(0, 100), min_size=1, max_size=25),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_oracle(
    capacity: int, span_s: float, n_features: int, sizes: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    w = TenantWindow(capacity, span_s, n_features=n_features)
    o = Oracle(capacity, span_s)
    clock_s, next_offset = 1.7e9, 0
    for n in sizes:
        steps = rng.exponential(1.0, n)
        late = rng.random(n) < 0.15  # occasional out-of-order arrivals
        jitter = np.where(late, -rng.uniform(0.0, 2.0 * span_s, n), 0.0)
        ts = clock_s + np.cumsum(steps) + jitter
        clock_s += float(steps.sum())
        feats = rng.normal(size=(n, n_features))
        labels = rng.random(n) < 0.3
        offs = np.arange(next_offset, next_offset + n, dtype=np.int64)
        next_offset += n
        w.extend(ts, feats, labels, offs)
        o.extend(ts, feats, labels, offs)
        assert_matches(w, o, n_features)


def test_count_bound_one_at_a_time_and_as_a_block() -> None:
    one = TenantWindow(capacity=5, span_s=1e9, n_features=1)
    for i in range(12):
        one.extend(*block([float(i)], first_offset=i))
    blk = TenantWindow(capacity=5, span_s=1e9, n_features=1)
    blk.extend(*block([float(i) for i in range(12)]))
    for w in (one, blk):
        assert len(w) == 5
        assert w.offsets().tolist() == [7, 8, 9, 10, 11]
        assert w.features()[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_block_larger_than_capacity_replaces_everything_but_counts_for_newest_ts() -> None:
    w = TenantWindow(capacity=3, span_s=100.0, n_features=1)
    w.extend(*block([0.0, 1.0], labels=[1, 1]))
    w.extend(*block([50.0, 2.0, 3.0, 4.0, 5.0], first_offset=2))
    assert w.offsets().tolist() == [4, 5, 6]
    assert w.newest_ts == 50.0  # the dropped 50.0 still anchors the time bound
    assert w.n_positive == 0


def test_time_bound_is_relative_to_newest_and_keeps_the_boundary() -> None:
    w = TenantWindow(capacity=100, span_s=3.0, n_features=1)
    w.extend(*block([float(i) for i in range(10)]))
    assert w.ts().tolist() == [6.0, 7.0, 8.0, 9.0]  # 6.0 == 9.0 - 3.0 is not older than the span
    w.extend(*block([100.0], first_offset=10))
    assert w.ts().tolist() == [100.0]
    assert w.oldest_offset == w.newest_offset == 10


def test_late_event_in_the_middle_stays_until_it_reaches_the_front() -> None:
    w = TenantWindow(capacity=100, span_s=5.0, n_features=1)
    w.extend(*block([10.0, 11.0, 2.0, 12.0]))  # 2.0 arrives late, already older than 12 - 5
    assert w.ts().tolist() == [10.0, 11.0, 2.0, 12.0]
    # cutoff 12: 10.0 and 11.0 go, and so does the late 2.0 once it is at the front
    w.extend(*block([17.0], first_offset=4))
    assert w.ts().tolist() == [12.0, 17.0]
    assert w.offsets().tolist() == [3, 4]


def test_stale_replay_cannot_move_the_anchor_back() -> None:
    w = TenantWindow(capacity=100, span_s=5.0, n_features=1)
    w.extend(*block([20.0]))
    w.extend(*block([1.0, 2.0], first_offset=1))  # both stale; behind a fresh front row, so kept
    assert w.newest_ts == 20.0
    assert len(w) == 3
    w.extend(*block([30.0], first_offset=3))
    assert w.ts().tolist() == [30.0]


def test_late_events_at_the_front_are_evicted_at_once() -> None:
    w = TenantWindow(capacity=100, span_s=5.0, n_features=1)
    w.extend(*block([20.0]))
    w.extend(*block([21.0], first_offset=1))
    w.clear()
    w.extend(*block([1.0, 20.0]))
    assert w.ts().tolist() == [20.0]


def test_label_counts_follow_eviction_and_wraparound() -> None:
    w = TenantWindow(capacity=4, span_s=1e9, n_features=1)
    labels = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    for i, lab in enumerate(labels):
        w.extend(*block([float(i)], labels=[lab], first_offset=i))
        kept = labels[max(0, i - 3) : i + 1]
        assert (w.n_positive, w.n_negative) == (sum(kept), len(kept) - sum(kept))


def test_offsets_across_wraparound() -> None:
    w = TenantWindow(capacity=4, span_s=1e9, n_features=1)
    for start in range(0, 30, 3):
        w.extend(*block([float(start + j) for j in range(3)], first_offset=start))
        assert w.newest_offset == start + 2
        assert w.oldest_offset == max(0, start + 3 - 4)
        assert w.offsets().tolist() == list(range(w.oldest_offset, start + 3))


def test_empty_window_and_clear() -> None:
    w = TenantWindow(capacity=8, span_s=10.0, n_features=N_FEATURES)
    assert (len(w), w.oldest_offset, w.newest_offset, w.newest_ts) == (0, None, None, None)
    assert w.features().shape == (0, N_FEATURES)
    assert w.nbytes == 0
    w.extend(*block([1.0, 2.0], labels=[1, 0], n_features=N_FEATURES))
    w.clear()
    assert (len(w), w.oldest_offset, w.newest_offset, w.newest_ts) == (0, None, None, None)
    assert (w.n_positive, w.n_negative, w.nbytes) == (0, 0, 0)
    w.extend(*block([0.5], first_offset=7, n_features=N_FEATURES))  # old ts is fine after clear
    assert w.offsets().tolist() == [7]


def test_empty_block_is_a_no_op() -> None:
    w = TenantWindow(capacity=8, span_s=10.0, n_features=2)
    w.extend([], np.empty((0, 2)), [], np.empty(0, dtype=np.int64))
    w.extend([], [], [], [])
    assert len(w) == 0
    assert w.newest_ts is None


def test_accessors_return_independent_contiguous_copies_with_fixed_dtypes() -> None:
    w = TenantWindow(capacity=4, span_s=1e9, n_features=3)
    w.extend(*block([float(i) for i in range(6)], n_features=3))  # wrapped ring
    cols = (w.ts(), w.features(), w.labels(), w.offsets())
    assert [c.dtype for c in cols] == [np.float64, np.float32, np.bool_, np.int64]
    for c in cols:
        assert c.flags.c_contiguous and c.flags.owndata
    cols[0][:] = -1.0
    cols[3][:] = -1
    assert w.ts().tolist() == [2.0, 3.0, 4.0, 5.0]
    assert w.offsets().tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("capacity", "span_s", "n_features", "error"),
    [
        (0, 1.0, 6, ValueError),
        (-3, 1.0, 6, ValueError),
        (1.5, 1.0, 6, TypeError),
        (True, 1.0, 6, TypeError),
        (10, 0.0, 6, ValueError),
        (10, -1.0, 6, ValueError),
        (10, math.nan, 6, ValueError),
        (10, 1.0, 0, ValueError),
    ],
)
def test_constructor_validation(
    capacity: object, span_s: float, n_features: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        TenantWindow(capacity, span_s, n_features)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ts", "features", "labels", "offsets", "error"),
    [
        ([[1.0]], [[0.0, 0.0]], [0], [0], ValueError),  # 2-D ts
        ([1.0, 2.0], [[0.0, 0.0]], [0, 0], [0, 1], ValueError),  # too few feature rows
        ([1.0], [[0.0, 0.0, 0.0]], [0], [0], ValueError),  # wrong n_features
        ([1.0], [[0.0, 0.0]], [0, 1], [0], ValueError),  # labels length
        ([1.0], [[0.0, 0.0]], [0], [0, 1], ValueError),  # offsets length
        ([math.nan], [[0.0, 0.0]], [0], [0], ValueError),
        ([math.inf], [[0.0, 0.0]], [0], [0], ValueError),
        ([1.0], [[0.0, 0.0]], [0], [0.5], TypeError),  # float offsets
        ([1.0], [[0.0, 0.0]], [0.5], [0], TypeError),  # float labels
    ],
)
def test_extend_validation_leaves_the_window_untouched(
    ts: object, features: object, labels: object, offsets: object, error: type[Exception]
) -> None:
    w = TenantWindow(capacity=4, span_s=10.0, n_features=2)
    w.extend([5.0], [[1.0, 2.0]], [True], [9])
    with pytest.raises(error):
        w.extend(ts, features, labels, offsets)  # type: ignore[arg-type]
    assert w.offsets().tolist() == [9]
    assert w.newest_ts == 5.0


def test_full_window_nbytes_is_exact() -> None:
    capacity = 1_000
    w = TenantWindow(capacity, span_s=1e9)
    w.extend(*block([float(i) for i in range(3 * capacity)], n_features=N_FEATURES))
    assert len(w) == capacity
    assert w.nbytes == capacity * (8 + 4 * N_FEATURES + 1 + 4)
    assert row_nbytes() == 37


def test_buffers_grow_geometrically_and_never_past_capacity() -> None:
    w = TenantWindow(capacity=1_000, span_s=1e9)
    w.extend(*block([0.0], n_features=N_FEATURES))
    assert w.allocated < 50  # a quiet tenant stays small
    seen = {w.allocated}
    for i in range(1, 1_000):
        w.extend(*block([float(i)], first_offset=i, n_features=N_FEATURES))
        seen.add(w.allocated)
    assert len(seen) <= 12  # doubling, not one step per event
    assert max(seen) == 1_000
    assert w.offsets().tolist() == list(range(1_000))


def test_ten_thousand_full_default_windows_fit_well_under_a_gib() -> None:
    w = TenantWindow(DEFAULT_CAPACITY, span_s=1e9)
    w.extend(*block([float(i) for i in range(DEFAULT_CAPACITY)], n_features=N_FEATURES))
    assert DEFAULT_CAPACITY == 1_440
    total = 10_000 * w.nbytes
    assert total == 10_000 * 1_440 * 37
    assert total < 0.8 * GIB


def test_no_per_event_python_objects() -> None:
    """What a full window retains is its numpy buffers plus a small constant."""
    capacity = 5_000
    ts, feats, labels, offs = block(
        [float(i) for i in range(capacity)], labels=[1] * capacity, n_features=N_FEATURES
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        w = TenantWindow(capacity, span_s=1e9)
        for lo in range(0, capacity, 250):
            sl = slice(lo, lo + 250)
            w.extend(ts[sl], feats[sl], labels[sl], offs[sl])
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(w) == capacity
    assert w.nbytes <= retained < w.nbytes + 4_096


def test_many_empty_tenants_cost_no_buffer_memory() -> None:
    windows = [TenantWindow(DEFAULT_CAPACITY, span_s=60.0) for _ in range(10_000)]
    assert sum(w.nbytes for w in windows) == 0


def test_docstring_examples() -> None:
    assert doctest.testmod(window_mod).failed == 0


@pytest.mark.parametrize(
    "offsets",
    [
        [5, 2**32 + 9, 2**33],  # wider than uint32 deltas: the window widens its column
        [2**40, 2**40 - 7, 2**40 + 3],  # below the base: the window rebases
        [0, 1, 2**32 - 1],
    ],
)
def test_offsets_survive_rebasing_and_widening(offsets: list[int]) -> None:
    w = TenantWindow(capacity=8, span_s=1e9, n_features=1)
    held: list[int] = []
    for i, offset in enumerate(offsets):
        w.extend([float(i)], [[0.0]], [0], [offset])
        held.append(offset)
        assert w.offsets().tolist() == held
    assert (w.oldest_offset, w.newest_offset) == (offsets[0], offsets[-1])
