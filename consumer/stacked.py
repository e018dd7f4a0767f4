"""A batch's live forecasts at once: features in one pass per feature spec, one forward per
architecture.

Forecasting tenant by tenant pays a feature transform and a small torch forward for each
tenant in each batch, for a handful of rows each: call overhead, not arithmetic. Here the
tenants held with a live model at the start of a batch are forecast together:

- Their inputs: each tenant's window tail (up to `history - 1` events) then its block,
  all tenants of one `FeatureSpec` concatenated and transformed in one call, with each
  event's series start (`FeatureSpec.transform(starts=)`): no row reads another
  tenant's events, however young the tenant, and each row is what the tenant's own
  transform gives, bit for bit (the features sum each window on its own).
- Their forecasts: one `StackedMLP` forward per architecture over padded inputs. The
  stacks are kept between batches and rebuilt only for a group whose members changed.

A tenant's forecast equals its own model's to float32 rounding (tested to 1e-6).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from consumer.batch import TenantState
from consumer.live_model import Events, LiveModel
from kernel.mlp import StackedMLP

__all__ = ["BatchForecasts", "StackCache"]

#: Fewer tenants than this in a group: the per-tenant path is as cheap.
MIN_GROUP = 2


@dataclass(slots=True)
class _Group:
    """One architecture's members (tenant -> model) and their stack, rebuilt on change."""

    members: dict[str, LiveModel] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)
    stack: StackedMLP | None = None

    def slots_for(self, models: Sequence[LiveModel]) -> tuple[StackedMLP, torch.Tensor]:
        """The group's stack, rebuilt if a model is new to it, and the models' slots."""
        changed = False
        for model in models:
            if self.members.get(model.tenant) is not model:
                self.members[model.tenant] = model
                changed = True
        stack = self.stack
        if changed or stack is None:
            stack = self.stack = StackedMLP([m.module for m in self.members.values()])
            self.slots = {tenant: i for i, tenant in enumerate(self.members)}
        return stack, torch.tensor([self.slots[m.tenant] for m in models], dtype=torch.int64)


class StackCache:
    """The stacked weights of every architecture the consumer has forecast with.

    A group holds the newest model of each tenant it has seen (at most one per tenant,
    as the registry does), so a swap rebuilds that group's stack only.
    """

    def __init__(self) -> None:
        self._groups: dict[Hashable, _Group] = {}

    def logits(
        self, models: Sequence[LiveModel], X: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """`StackedMLP.logits` of `models` (one architecture) on their padded inputs."""
        group = self._groups.setdefault(_architecture_key(models[0]), _Group())
        stack, members = group.slots_for(models)
        return stack.logits(members, X, rows)


class BatchForecasts:
    """The forecasts of a batch's tenants computed together, each claimed by its block."""

    def __init__(self) -> None:
        self._proba: dict[str, tuple[TenantState, LiveModel, np.ndarray]] = {}

    def take(self, state: TenantState) -> np.ndarray | None:
        """The tenant's forecasts, if they were computed for this state and its model."""
        found = self._proba.pop(state.tenant, None)
        if found is None or found[0] is not state or found[1] is not state.model:
            return None
        return found[2]

    def compute(self, cache: StackCache, work: Sequence[tuple[TenantState, Events]]) -> None:
        """Forecast each (state, block columns) whose state has a model and a full tail.

        Forgets what an earlier batch left unclaimed.
        """
        self._proba.clear()
        by_spec: dict[Hashable, list[tuple[TenantState, LiveModel, Events, Events]]] = {}
        for state, block in work:
            model = state.model
            if model is None:
                continue
            past = state.window.tail(model.features.history - 1)
            by_spec.setdefault(model.features, []).append((state, model, past, block))
        by_architecture: dict[Hashable, list[tuple[TenantState, LiveModel, np.ndarray]]] = {}
        for members in by_spec.values():
            for state, model, rows in _inputs(members):
                key = _architecture_key(model)
                by_architecture.setdefault(key, []).append((state, model, rows))
        for group in by_architecture.values():
            if len(group) < MIN_GROUP:
                continue
            self._forward(cache, group)

    def _forward(
        self, cache: StackCache, group: list[tuple[TenantState, LiveModel, np.ndarray]]
    ) -> None:
        counts = [len(rows) for _s, _m, rows in group]
        width = group[0][2].shape[1]
        X = np.zeros((len(group), max(counts), width), dtype=np.float32)
        for i, (_s, _m, rows) in enumerate(group):
            X[i, : len(rows)] = rows
        with torch.inference_mode():
            logits = cache.logits(
                [m for _s, m, _r in group],
                torch.from_numpy(X),
                torch.tensor(counts, dtype=torch.int64),
            )
            proba = torch.sigmoid(logits).numpy()
        for i, (state, model, _rows) in enumerate(group):
            self._proba[state.tenant] = (state, model, proba[i, : counts[i]].copy())


def _inputs(
    members: list[tuple[TenantState, LiveModel, Events, Events]],
) -> list[tuple[TenantState, LiveModel, np.ndarray]]:
    """Every member's input rows for its block, from one transform of their concatenation."""
    spec = members[0][1].features
    columns = [
        np.concatenate([part for _s, _m, past, block in members for part in (past[c], block[c])])
        for c in range(3)
    ]
    wanted, starts = [], []
    start = 0
    for _s, _m, past, block in members:
        begin = start + len(past[0])
        end = begin + len(block[0])
        wanted.append(np.arange(begin, end))
        starts.append(np.full(end - start, start))
        start = end
    rows = spec.transform(*columns, rows=np.concatenate(wanted), starts=np.concatenate(starts))
    out = []
    start = 0
    for state, model, _past, block in members:
        out.append((state, model, rows[start : start + len(block[0])]))
        start += len(block[0])
    return out


def _architecture_key(model: LiveModel) -> Hashable:
    return tuple(sorted(model.module.architecture().items()))
