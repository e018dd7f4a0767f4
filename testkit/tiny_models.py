"""Untrained live models for tests and benchmarks of the consumer core (no search, no store).

Forecasting costs the same whatever the weights are; `poisoned` gives a model whose
every forecast is NaN (what a model with finite but absurd weights can do).
`load_live_model` loads an announced model from a store, for tests of the refusals.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import SecretStr

from consumer.live_model import LiveModel
from kernel.artifacts import ModelCard
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP
from kernel.model_follower import ModelAuthority, ModelRefused
from kernel.store import ModelStore
from schemas import FEATURES, ModelPublished

#: An out-of-fold calibration table (ten bins of forecasts, each with its record).
_SERVED_CALIBRATION = [
    {
        "lower": i / 10,
        "upper": (i + 1) / 10,
        "n": 200.0,
        "mean_proba": (i + 0.5) / 10,
        "observed_rate": (i + 0.5) / 10,
    }
    for i in range(10)
]


def tiny_live_model(
    tenant: str,
    *,
    hidden_layers: int = 1,
    width: int = 8,
    threshold: float = 0.5,
    version: int = 1,
    poisoned: bool = False,
    seed: int = 0,
    served: bool = False,
) -> LiveModel:
    """An untrained model; `served` gives it the shape the retrainer publishes (a gated
    forecaster watching the metrics at t, a "within" card of horizon 6 with an out-of-fold
    calibration table), so the consumer serves it on the path production models take:
    OOD scores, the gate, the calibration watch."""
    spec = FeatureSpec()
    names = spec.names()
    torch.manual_seed(seed)
    module = SlaMLP(
        n_features=len(names), hidden_layers=hidden_layers, width=width, gated=served
    ).eval()
    module.set_normalization(np.zeros(len(names)), np.ones(len(names)))
    if served:
        watch = np.zeros(len(names), dtype=bool)
        watch[: len(FEATURES)] = True
        low, high = np.full(len(names), -1e3), np.full(len(names), 1e3)
        module.set_gate(names.index("quiet"), low, high, watch)
    if poisoned:
        with torch.no_grad():
            module.head.bias.fill_(float("nan"))
    card = ModelCard(
        architecture=module.architecture(),
        features=spec,
        feature_order=list(names),
        horizon=6 if served else 1,
        target="within" if served else "at",
        threshold=threshold,
        metrics={"log_loss": 0.3} if served else {},
        calibration=_SERVED_CALIBRATION if served else [],
        cv_table=[],
        lineage={},
        files={},
    )
    return LiveModel(tenant, f"{version:040x}", version, "0" * 32, module=module, card=card)


def load_live_model(
    event: ModelPublished, *, store: ModelStore, store_uri: str, tenant_key: SecretStr
) -> LiveModel:
    """The store's newest model of the announced tenant, or raise `ModelRefused`.

    The announcement is only a hint: it must pass the cheap checks (our store, the
    tenant's own HMAC hash and paths); the store's newest revision is read and verified
    against the store's card and the announced sha256s, and refused unless it is the
    announced revision. (The consumer's follower instead loads the store's newest
    whatever revision the hint names.)
    """
    authority = ModelAuthority(store, store_uri, tenant_key)
    authority.check(event)
    verified = authority.newest(event.tenant, announced=event)
    if verified is None:  # pragma: no cover - newest() refuses an announced empty tenant
        raise ModelRefused("the store holds no version of this tenant", "not_in_store")
    if verified.revision != event.revision:
        raise ModelRefused(
            f"revision {event.revision!r} is not the store's newest ({verified.revision})",
            "not_newest",
        )
    return LiveModel.from_verified(verified, event.request_event_id)
