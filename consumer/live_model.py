"""Live models in the consumer: what a `ModelPublished` may make us load, and how.

An announcement is input like any other and only a hint: it must name our store and
the tenant's own HMAC path before the store is asked anything, and the store, not the
event, decides which revision is the tenant's newest (`kernel.model_follower`).
Weights load through the one safe loader (safetensors only here), so an announcement
can never make the consumer unpickle anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernel.artifacts import ModelCard, predict_proba
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP
from kernel.model_follower import VerifiedModel

__all__ = ["Events", "LiveModel"]

log = logging.getLogger(__name__)


#: A tenant's events as columns: epoch-second ts (n,), metrics (n, 6), breach labels (n,).
Events = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False, slots=True)
class LiveModel:
    """A tenant's live model as the core holds it: the module, its card, the answer it is.

    `version` is the store's count of the tenant's versions (newer wins), and
    `request_event_id` the request it answered (the tenant's gate opens with it).
    Slots, not a `__dict__`: a consumer holds one per tenant (~0.4 KB each less).
    """

    tenant: str
    revision: str
    version: int
    request_event_id: str
    module: SlaMLP
    card: ModelCard
    #: Where the weights live once the model is live (`consumer.stacked.ModelBank`, its
    #: slot): the module's tensors are views of it. Set and cleared by the bank only.
    stored: tuple[Any, int] | None = field(default=None, init=False, repr=False)
    #: Share of the card's holdout rows the model got wrong at its threshold (0: no
    #: confusion counts), the yardstick the live error rate is alerted against.
    holdout_error_rate: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "holdout_error_rate", _holdout_error_rate(self.card))

    @classmethod
    def from_verified(cls, model: VerifiedModel, request_event_id: str) -> LiveModel:
        """The consumer's view of a store-verified model; its version is the store's count."""
        return cls(
            tenant=model.tenant,
            revision=model.revision,
            version=model.version,
            request_event_id=request_event_id,
            module=model.module,
            card=model.card,
        )

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def features(self) -> FeatureSpec:
        return self.card.features

    @property
    def horizon(self) -> int:
        return self.card.horizon

    def inputs(self, history: Events, block: Events) -> np.ndarray:
        """The model's input rows for `block`, computed exactly as training computed them.

        `history` holds the tenant's events just before the block (ts, metrics,
        labels; the window keeps far more than the `features.history - 1` used here).
        """
        keep = self.features.history - 1
        parts = [
            np.concatenate((past[len(past) - min(keep, len(past)) :], now))
            for past, now in zip(history, block, strict=True)
        ]
        total = len(parts[0])
        return self.features.transform(*parts, rows=np.arange(total - len(block[0]), total))

    def persistence(self, labels: np.ndarray) -> np.ndarray:
        """What persistence forecast after each of `labels` (this interval's breach).

        The model's own offset (P(breach next | breach now), counted on its training
        rows) when it has one, else the card's persistence baseline cannot be rebuilt
        and the training breach rate stands in for both flags.
        """
        module = self.module
        if int(module.offset_column) >= 0:
            logits = module.offset_logit.detach().cpu().numpy().astype(np.float64)
        else:
            rate = float(self.card.baselines.get("prior", {}).get("positive_rate", 0.5))
            rate = min(max(rate, 1e-3), 1 - 1e-3)
            logits = np.full(2, np.log(rate / (1 - rate)))
        chosen = logits[np.asarray(labels).astype(bool).astype(np.int64)]
        out: np.ndarray = 1.0 / (1.0 + np.exp(-chosen))
        return out

    def forecast(self, history: Events, block: Events) -> np.ndarray:
        """The card's forecast for each event of `block`, in one call.

        P(a breach within the next `horizon` events) for a "within" card (format 3),
        P(a breach `horizon` events later) for an "at" one.
        """
        return predict_proba(self.module, self.inputs(history, block))


def _holdout_error_rate(card: ModelCard) -> float:
    counts = [card.metrics.get(k, 0.0) for k in ("tn", "fp", "fn", "tp")]
    total = sum(counts)
    if not np.isfinite(total) or total <= 0:
        return 0.0
    return float(min(1.0, max(0.0, (counts[1] + counts[2]) / total)))
