"""A batch's stacked forwards pad each member only to rows like its own: one tenant with
a long block among many with a few costs its own rows, not its rows for every tenant."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

import consumer.stacked
from consumer.batch import TenantState
from consumer.core import CoreConfig, IngestCore
from consumer.live_model import Events, LiveModel
from consumer.stacked import PAD_ROWS, BatchForecasts, StackCache, chunks, forward_parts
from testkit.tiny_models import tiny_live_model


class RecordingCache(StackCache):
    """The real cache, noting each forward's padded input shape and real rows."""

    def __init__(self) -> None:
        self.forwards: list[tuple[int, int, int]] = []

    def scores(
        self, models: Sequence[LiveModel], X: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.forwards.append((X.shape[0], X.shape[1], int(rows.sum())))
        return super().scores(models, X, rows)


def _events(rng: np.random.Generator, n: int, start: float) -> Events:
    ts = start + 30.0 * np.arange(n, dtype=np.float64)
    metrics = rng.normal(1.0, 0.2, (n, 6)).astype(np.float32)
    return ts, metrics, rng.random(n) < 0.2


def _tenants(blocks: Sequence[int]) -> list[tuple[TenantState, Events]]:
    """Held tenants with a live model (each its own weights) and 100 events of history."""
    core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry"))
    rng = np.random.default_rng(11)
    work = []
    for i, n in enumerate(blocks):
        tenant = f"tenant-{i:03d}"
        core.apply_model(tiny_live_model(tenant, hidden_layers=2, width=8, seed=i))
        state = core.registry.admit(tenant, 0)
        assert isinstance(state, TenantState)
        history = _events(rng, 100, 0.0)
        state.window.extend(*history, np.arange(100))
        work.append((state, _events(rng, n, 3000.0)))
    return work


@pytest.mark.parametrize("chunk_events", [10**6, 400])
def test_a_long_block_is_not_padded_onto_every_tenant(
    chunk_events: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer.stacked, "FORWARD_ROWS", 512)
    # All in one chunk, or chunks of a few tenants (the long block's alone, over the bound).
    monkeypatch.setattr(consumer.stacked, "CHUNK_EVENTS", chunk_events)
    blocks = [1] * 60 + [2] * 10 + [400] + [3] * 5 + [40]
    work = _tenants(blocks)
    cache, batch = RecordingCache(), BatchForecasts()
    batch.compute(cache, work)
    assert sum(members for members, _r, _real in cache.forwards) == len(blocks)
    for members, rows, real in cache.forwards:
        # One forward for all would pad 77 members to 400 rows: 30,800 for 535 real.
        assert members * rows <= 2 * real + PAD_ROWS or members == 1
        assert members * rows <= 512 or members == 1
    for state, block in work:
        model = state.model
        assert model is not None
        got = batch.take(state)
        assert got is not None and got.shape == (len(block[0]),)
        alone = model.forecast(state.window.tail(model.features.history - 1), block)
        np.testing.assert_allclose(got, alone, atol=1e-6, rtol=0)


def test_forward_parts_bound_the_padding_and_keep_every_member_once() -> None:
    rng = np.random.default_rng(3)
    cases = [
        [1] * 10_000 + [1000],
        [5] * 7,
        list(rng.integers(1, 2000, 300)),
        list(np.concatenate([rng.integers(1, 4, 500), rng.integers(500, 3000, 5)])),
        [2**k for k in range(14)],
        [],
    ]
    for counts in cases:
        parts = forward_parts(counts)
        assert sorted(i for part in parts for i in part) == list(range(len(counts)))
        for part in parts:
            padded = len(part) * max(counts[i] for i in part)
            real = sum(counts[i] for i in part)
            assert padded <= 2 * real + PAD_ROWS or len(part) == 1
            assert padded <= consumer.stacked.FORWARD_ROWS or len(part) == 1
    # Members of equal rows stay in order (consecutive slots are read in place) and
    # share as few forwards as the bound allows.
    assert forward_parts([1] * 10) == [list(range(10))]
    assert forward_parts([3, 1, 3, 1]) == [[1, 3, 0, 2]]


def test_chunks_bound_the_events_one_transform_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer.stacked, "CHUNK_EVENTS", 300)
    blocks = [1, 1, 1, 1, 500, 1, 30, 1, 1, 1, 1, 1]
    members = [(state, state.model, block) for state, block in _tenants(blocks)]
    runs = list(chunks(members))  # type: ignore[arg-type]
    assert [m for run in runs for m in run] == members  # all, in order, once
    for run in runs:
        events = sum(71 + len(block[0]) for _s, _m, block in run)  # 71: each one's tail
        assert events <= 300 or len(run) == 1
    assert [len(run) for run in runs] == [4, 1, 3, 4]
