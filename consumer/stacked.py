"""A batch's live forecasts at once: features in one pass per chunk of tenants, few forwards
per architecture.

Forecasting tenant by tenant pays a feature transform and a small torch forward for each
tenant in each batch, for a handful of rows each: call overhead, not arithmetic. Here the
tenants held with a live model at the start of a batch are forecast together, a chunk of
one `FeatureSpec`'s tenants at a time (`chunks`: a few thousand events), so a batch holds
one chunk's inputs at most, however many tenants it has:

- Their inputs: each tenant's window tail (up to `history - 1` events) then its block,
  the chunk's tenants concatenated and transformed in one call, with each event's
  series start (`FeatureSpec.transform(starts=)`): no row reads another tenant's
  events, however young the tenant, and each row is what the tenant's own transform
  gives, bit for bit (the features sum each window on its own).
- Their forecasts: `StackedMLP` forwards per architecture over padded inputs, read
  from the `ModelBank` the registry keeps each live model's weights in (the only copy:
  the tenant's own module reads the same slot), a page of slots at a time, so a batch
  allocates a page's worth at most, not a copy of every tenant's weights. Members are
  cut into forwards by their rows (`forward_parts`): padding stays bounded by the real
  rows, however uneven the tenants' blocks.

A tenant's forecast equals its own model's to float32 rounding (tested to 1e-6).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch

from consumer.batch import TenantState
from consumer.live_model import Events, LiveModel
from kernel.mlp import StackedMLP

__all__ = [
    "BatchForecasts",
    "ModelBank",
    "StackCache",
    "architecture_key",
    "chunks",
    "forward_parts",
]

#: Fewer tenants than this in a group: the per-tenant path is as cheap.
MIN_GROUP = 2
#: Slots a page of a `ModelBank` holds (a 2 x 64 MLP on 88 inputs: 10 MB a page), and
#: events (tails and blocks) one feature transform reads (`chunks`: ~230 tenants of a
#: one-event block, a few MB of transform temporaries): both bound what a batch
#: allocates for its forecasts, whatever the number of tenants.
PAGE_SLOTS = 256
CHUNK_EVENTS = 16_384
#: A forward's padded input rows (members x their longest block): at most twice the real
#: rows plus `PAD_ROWS`, and at most `FORWARD_ROWS` but for a member alone
#: (`forward_parts`): a batch's inputs and activations stay a few MB, however skewed.
PAD_ROWS = 64
FORWARD_ROWS = 8192


class ModelBank:
    """The weights of one architecture's live models, each stored once, in pages of slots.

    `adopt` copies a model's module into a free slot and makes the module's tensors
    views of it (`StackedMLP.put(..., share=True)`): the module forecasts alone as before,
    and a batch's forecasts read the pages directly, so the weights are never copied
    again. A page never moves; `release` frees a slot (the module it held gets copies of
    its own back, in case someone still holds it) for the next model to reuse.
    """

    def __init__(self, page_slots: int | None = None) -> None:
        self._page_slots = PAGE_SLOTS if page_slots is None else page_slots
        self._pages: list[StackedMLP] = []
        self._free: list[int] = []  # a heap: the lowest free slot first
        #: Slots holding a live model.
        self.live = 0

    def adopt(self, model: LiveModel) -> int:
        """Store `model`'s weights in a free slot (its module now reads them from there)."""
        if not self._free:
            first = len(self._pages) * self._page_slots
            self._pages.append(StackedMLP.empty(model.module, self._page_slots))
            self._free.extend(range(first, first + self._page_slots))  # already a heap
        slot = heapq.heappop(self._free)
        page, index = divmod(slot, self._page_slots)
        try:
            self._pages[page].put(index, model.module, share=True)
        except BaseException:
            heapq.heappush(self._free, slot)
            raise
        object.__setattr__(model, "stored", (self, slot))
        self.live += 1
        return slot

    def release(self, slot: int, model: LiveModel) -> None:
        """Free `slot`, which `model` was adopted into; its module keeps its weights."""
        page, index = divmod(slot, self._page_slots)
        self._pages[page].detach(index, model.module)
        if model.stored == (self, slot):
            object.__setattr__(model, "stored", None)
        heapq.heappush(self._free, slot)
        self.live -= 1

    def scores(
        self, slots: Sequence[int], X: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`StackedMLP.scores` of the models in `slots`, page by page, each page's members
        in slot order (consecutive slots are read in place)."""
        where = torch.tensor(slots, dtype=torch.int64)
        order = torch.argsort(where)
        ranked = where[order]
        bounds = torch.searchsorted(ranked, torch.arange(len(self._pages) + 1) * self._page_slots)
        out = torch.empty(X.shape[:2], dtype=X.dtype)
        ood: torch.Tensor | None = None
        edges = bounds.tolist()
        for page, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            if lo == hi:
                continue
            members: torch.Tensor | slice = order[lo:hi]
            first = int(order[lo])
            if bool((order[lo:hi] == torch.arange(first, first + hi - lo)).all()):
                members = slice(first, first + hi - lo)  # rows in order: no gather, no scatter
            index = ranked[lo:hi] - page * self._page_slots
            logits, shares = self._pages[page].scores(index, X[members], rows[members])
            out[members] = logits
            if shares is not None:
                if ood is None:
                    ood = torch.empty(X.shape[:2], dtype=shares.dtype)
                ood[members] = shares
        return out, ood


class StackCache:
    """Where a batch's stacked forward finds its models' weights.

    Models made live by `consumer.tenants.TenantRegistry` are in its `ModelBank`s; a
    group of models that are not (or not all in one bank) is stacked for the batch
    only, never kept.
    """

    def scores(
        self, models: Sequence[LiveModel], X: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`StackedMLP.scores` of `models` (one architecture) on their padded inputs."""
        stored = [model.stored for model in models]
        first = stored[0]
        if first is not None and all(s is not None and s[0] is first[0] for s in stored):
            return first[0].scores([s[1] for s in stored if s is not None], X, rows)
        stack = StackedMLP([model.module for model in models])
        return stack.scores(torch.arange(len(models)), X, rows)


class BatchForecasts:
    """The forecasts of a batch's tenants computed together, each claimed by its block,
    and a gated model's OOD scores of the same rows (`consumer.ood`)."""

    def __init__(self) -> None:
        #: Each tenant's state, model, and where its forecasts are: its forward's (members,
        #: rows) probabilities, its row there and its count (copied out when claimed).
        self._proba: dict[str, tuple[TenantState, LiveModel, np.ndarray, int, int]] = {}
        #: The same for the OOD scores of a gated model's rows.
        self._ood: dict[str, tuple[TenantState, LiveModel, np.ndarray, int, int]] = {}

    def take(self, state: TenantState) -> np.ndarray | None:
        """The tenant's forecasts, if they were computed for this state and its model."""
        return _claim(self._proba, state, np.float32)

    def take_ood(self, state: TenantState) -> np.ndarray | None:
        """The tenant's OOD scores (float64), if its gated model forecast with the batch."""
        return _claim(self._ood, state, np.float64)

    def compute(self, cache: StackCache, work: Sequence[tuple[TenantState, Events]]) -> None:
        """Forecast each (state, block columns) whose state has a model and a full tail.

        A chunk of tenants at a time (`chunks`): their inputs, then their forwards, so
        a batch holds one chunk's inputs at most. Forgets what an earlier batch left
        unclaimed.
        """
        self._proba.clear()
        self._ood.clear()
        by_spec: dict[Hashable, list[tuple[TenantState, LiveModel, Events]]] = {}
        canonical: dict[Hashable, int] = {}  # each architecture's number
        keys: dict[int, int] = {}  # each model's architecture number
        sizes: dict[int, int] = {}
        for state, block in work:
            model = state.model
            if model is None:
                continue
            by_spec.setdefault(model.features, []).append((state, model, block))
            key = canonical.setdefault(architecture_key(model), len(canonical))
            keys[id(model)] = key
            sizes[key] = sizes.get(key, 0) + 1
        for members in by_spec.values():
            for chunk in chunks(members):
                groups: dict[int, list[tuple[TenantState, LiveModel, np.ndarray]]] = {}
                for state, model, rows in _inputs(chunk):
                    key = keys[id(model)]
                    if sizes[key] >= MIN_GROUP:
                        groups.setdefault(key, []).append((state, model, rows))
                for group in groups.values():
                    counts = [len(rows) for _s, _m, rows in group]
                    for part in forward_parts(counts):
                        self._forward(cache, [group[i] for i in part])

    def _forward(
        self, cache: StackCache, group: list[tuple[TenantState, LiveModel, np.ndarray]]
    ) -> None:
        counts = [len(rows) for _s, _m, rows in group]
        width = group[0][2].shape[1]
        X = np.zeros((len(group), max(counts), width), dtype=np.float32)
        for i, (_s, _m, rows) in enumerate(group):
            X[i, : len(rows)] = rows
        with torch.inference_mode():
            logits, shares = cache.scores(
                [m for _s, m, _r in group],
                torch.from_numpy(X),
                torch.tensor(counts, dtype=torch.int64),
            )
            proba = torch.sigmoid(logits).numpy()
        for i, (state, model, _rows) in enumerate(group):
            self._proba[state.tenant] = (state, model, proba, i, counts[i])
        if shares is not None:
            ood = shares.numpy()
            for i, (state, model, _rows) in enumerate(group):
                self._ood[state.tenant] = (state, model, ood, i, counts[i])


def _claim(
    found_in: dict[str, tuple[TenantState, LiveModel, np.ndarray, int, int]],
    state: TenantState,
    dtype: type[np.floating],
) -> np.ndarray | None:
    """The tenant's row of a forward's output (a copy), if it was computed for this state
    and its model."""
    found = found_in.pop(state.tenant, None)
    if found is None or found[0] is not state or found[1] is not state.model:
        return None
    _state, _model, values, row, count = found
    out: np.ndarray = values[row, :count].astype(dtype)
    return out


def chunks(
    members: Sequence[tuple[TenantState, LiveModel, Events]],
) -> Iterator[Sequence[tuple[TenantState, LiveModel, Events]]]:
    """Consecutive runs of `members` (of one feature spec) whose tails and blocks hold
    `CHUNK_EVENTS` events at most together (a member alone may hold more): what one
    feature transform reads."""
    start, events = 0, 0
    for i, (state, model, block) in enumerate(members):
        own = min(model.features.history - 1, len(state.window)) + len(block[0])
        if i > start and events + own > CHUNK_EVENTS:
            yield members[start:i]
            start, events = i, 0
        events += own
    if start < len(members):
        yield members[start:]


def forward_parts(counts: Sequence[int]) -> list[list[int]]:
    """The members (indices into `counts`, each member's real rows) of each forward.

    A forward pads its members' inputs to its longest member's rows: members in order
    of their rows, cut wherever the padded rows would pass twice the real ones plus
    `PAD_ROWS`, or `FORWARD_ROWS` (a member alone is never cut: its rows stay together).
    One tenant with a long block among many with a few then costs its own rows, not
    its rows for every tenant. Members of equal rows keep their order (their slots are
    read in place where they are consecutive).
    """
    parts: list[list[int]] = []
    part: list[int] = []
    real = 0
    for i in sorted(range(len(counts)), key=counts.__getitem__):
        padded = (len(part) + 1) * counts[i]  # the sort puts the longest last
        if part and (padded > 2 * (real + counts[i]) + PAD_ROWS or padded > FORWARD_ROWS):
            parts.append(part)
            part, real = [], 0
        part.append(i)
        real += counts[i]
    if part:
        parts.append(part)
    return parts


def _inputs(
    members: Sequence[tuple[TenantState, LiveModel, Events]],
) -> list[tuple[TenantState, LiveModel, np.ndarray]]:
    """Every member's input rows for its block, from one transform of their concatenation.

    The members' window tails are read here, a chunk at a time: never all of a batch's
    at once.
    """
    spec = members[0][1].features
    parts = [(state.window.tail(spec.history - 1), block) for state, _m, block in members]
    columns = [
        np.concatenate([part for past, block in parts for part in (past[c], block[c])])
        for c in range(3)
    ]
    wanted, starts = [], []
    start = 0
    for past, block in parts:
        begin = start + len(past[0])
        end = begin + len(block[0])
        wanted.append(np.arange(begin, end))
        starts.append(np.full(end - start, start))
        start = end
    del parts
    rows = spec.transform(*columns, rows=np.concatenate(wanted), starts=np.concatenate(starts))
    out = []
    start = 0
    for state, model, block in members:
        out.append((state, model, rows[start : start + len(block[0])]))
        start += len(block[0])
    return out


def architecture_key(model: LiveModel) -> Hashable:
    """Models whose weights stack together (one `ModelBank` each)."""
    return tuple(sorted(model.module.architecture().items()))
