"""Live models in the consumer: what a `ModelPublished` may make us load, and how.

An announcement is input like any other, so it is checked before anything is read:
it must name our store, the tenant's own HMAC path, and hashes that the downloaded
bytes match. Weights load through the one safe loader (safetensors only here), so an
announcement can never make the consumer unpickle anything.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

import numpy as np
from pydantic import SecretStr

from kernel.artifacts import ArtifactError, ModelCard, load_model, predict_proba, sha256_hex
from kernel.errors import SlaopsError
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP
from kernel.store import ModelStore, StoreError, model_paths
from kernel.tenant_hash import tenant_hash
from schemas import ModelPublished

log = logging.getLogger(__name__)


#: A tenant's events as columns: epoch-second ts (n,), metrics (n, 6), breach labels (n,).
Events = tuple[np.ndarray, np.ndarray, np.ndarray]


class ModelRefused(SlaopsError):
    """An announced model that the consumer will not load; the message says why."""


@dataclass(frozen=True, eq=False)
class LiveModel:
    tenant: str
    revision: str
    version: int
    request_event_id: str
    module: SlaMLP
    card: ModelCard

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
        return self.features.transform(*parts)[len(parts[0]) - len(block[0]) :]

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
        """P(breach `horizon` events later) for each event of `block`, in one call."""
        return predict_proba(self.module, self.inputs(history, block))


def load_live_model(
    event: ModelPublished, *, store: ModelStore, store_uri: str, tenant_key: SecretStr
) -> LiveModel:
    """Check an announcement and load its model, or raise `ModelRefused`."""
    if event.store_uri != store_uri:
        raise ModelRefused(f"names store {event.store_uri!r}, not ours")
    expected_hash = tenant_hash(event.tenant, tenant_key)
    if not hmac.compare_digest(event.tenant_hash, expected_hash):
        raise ModelRefused("tenant_hash is not this tenant's")
    expected_paths = model_paths(expected_hash)
    if dict(event.paths) != expected_paths:
        raise ModelRefused("paths are not this tenant's model paths")
    try:
        card_bytes = store.read(expected_paths["card"], revision=event.revision)
        if sha256_hex(card_bytes) != event.sha256.get("card"):
            raise ModelRefused("card does not match its announced sha256")
        weights = store.read(expected_paths["safetensors"], revision=event.revision)
        if sha256_hex(weights) != event.sha256.get("safetensors"):
            raise ModelRefused("weights do not match their announced sha256")
        module, card = load_model(card_bytes, weights, "safetensors")
    except (StoreError, ArtifactError, ValueError) as exc:
        if isinstance(exc, ModelRefused):
            raise
        raise ModelRefused(f"cannot load revision {event.revision!r}: {exc}") from exc
    return LiveModel(
        tenant=event.tenant,
        revision=event.revision,
        version=event.model_version,
        request_event_id=event.request_event_id,
        module=module,
        card=card,
    )
