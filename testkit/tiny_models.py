"""Untrained live models for tests and benchmarks of the consumer core (no search, no store).

Forecasting costs the same whatever the weights are; `poisoned` gives a model whose
every forecast is NaN (what a model with finite but absurd weights can do).
"""

from __future__ import annotations

import numpy as np
import torch

from consumer.live_model import LiveModel
from kernel.artifacts import ModelCard
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP


def tiny_live_model(
    tenant: str,
    *,
    hidden_layers: int = 1,
    width: int = 8,
    threshold: float = 0.5,
    version: int = 1,
    poisoned: bool = False,
    seed: int = 0,
) -> LiveModel:
    spec = FeatureSpec()
    names = spec.names()
    torch.manual_seed(seed)
    module = SlaMLP(n_features=len(names), hidden_layers=hidden_layers, width=width).eval()
    module.set_normalization(np.zeros(len(names)), np.ones(len(names)))
    if poisoned:
        with torch.no_grad():
            module.head.bias.fill_(float("nan"))
    card = ModelCard(
        architecture=module.architecture(),
        features=spec,
        feature_order=list(names),
        horizon=1,
        threshold=threshold,
        metrics={},
        cv_table=[],
        lineage={},
        files={},
    )
    return LiveModel(tenant, f"{version:040x}", version, "0" * 32, module=module, card=card)
