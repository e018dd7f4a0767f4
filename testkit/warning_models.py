"""A live model whose warnings a test can script, and telemetry that plays the script.

`p99_model` is a real torch forecaster (an `SlaMLP` with no hidden layer: a logistic
map of the p99 latency), serialised and parsed back through `kernel.artifacts` with a
format-3 card ("within" the horizon, a warning policy): its probability is a known
function of one metric, so a stream's p99 column says where its warning comes on
(`p99_for`). `telemetry` writes that stream as producers send it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import torch

from consumer.live_model import LiveModel
from kernel.artifacts import ModelArtifacts, load_model, serialize_model
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP

START = datetime(2026, 11, 1, tzinfo=UTC)
#: The p99 latency (ms) at which the model says 0.5, and how steeply it moves around it.
LEVEL_MS = 200.0
_SCALE = 0.1
_WEIGHT = 1.5
#: What the card's warning policy measured (the layout of `TunedPolicy.as_card`).
POLICY: dict[str, Any] = {
    "threshold": 0.5,
    "budget_per_day": 1.0,
    "silent_share": 0.97,
    "within_budget": True,
    "out_of_fold": {
        "recall_lead_1": 0.6,
        "recall_lead_3": 0.4,
        "median_lead": 4.0,
        "false_per_day": 0.5,
    },
    "unseen_folds": None,
}


def p99_for(probability: float) -> float:
    """The p99 latency at which the model forecasts `probability`."""
    logit = math.log(probability / (1 - probability))
    return math.exp(math.log1p(LEVEL_MS) + _SCALE * logit / _WEIGHT) - 1


def p99_artifacts(
    *, threshold: float = 0.5, horizon: int = 6, target: str = "within"
) -> ModelArtifacts:
    # An old card ("at", format 2) has version 1 features: no `quiet` column among them.
    spec = FeatureSpec() if target == "within" else FeatureSpec(version=1, lags=1)
    names = spec.names()
    column = names.index("log1p_latency_p99_ms")
    module = SlaMLP(n_features=len(names), hidden_layers=0).eval()
    mean, std = np.zeros(len(names)), np.ones(len(names))
    mean[column], std[column] = math.log1p(LEVEL_MS), _SCALE
    module.set_normalization(mean, std)
    with torch.no_grad():
        module.head.weight.zero_()
        module.head.weight[0, column] = _WEIGHT
        module.head.bias.zero_()
    fields: dict[str, Any] = {
        "features": spec,
        "feature_order": list(names),
        "horizon": horizon,
        "threshold": threshold,
        "metrics": {"log_loss": 0.2},
        "cv_table": [],
        "lineage": {"decision": {"published": True, "rule": "scripted", "challenger_score": 0.2}},
        "target": target,
        "horizon_s": 60.0 * horizon,
        "forecaster": "mlp",
        "warning": {**POLICY, "threshold": threshold},
    }
    if target == "at":
        fields["format_version"] = 2
        fields.pop("warning")
    return serialize_model(module, fields)


def p99_model(
    tenant: str,
    *,
    threshold: float = 0.5,
    version: int = 1,
    horizon: int = 6,
    target: str = "within",
) -> LiveModel:
    """The scripted model as the core holds it (revision from its version)."""
    artifacts = p99_artifacts(threshold=threshold, horizon=horizon, target=target)
    module, card = load_model(artifacts.card, artifacts.safetensors, "safetensors")
    return LiveModel(tenant, f"{version:040x}", version, "0" * 32, module=module, card=card)


def telemetry(
    tenant: str, p99: np.ndarray, breached: np.ndarray, *, interval_s: float = 60.0
) -> list[bytes]:
    """One event per p99 value, `breached` its `sla_breached`, `interval_s` apart."""
    values = []
    for i, (latency, breach) in enumerate(zip(p99.tolist(), breached.tolist(), strict=True)):
        event = {
            "tenant": tenant,
            "ts": (START + timedelta(seconds=i * interval_s)).isoformat(),
            "service": "api",
            "latency_p50_ms": 40.0,
            "latency_p95_ms": 80.0,
            "latency_p99_ms": round(float(latency), 4),
            "error_rate": 0.01,
            "cpu_util": 0.5,
            "rps": 200.0,
            "sla_breached": bool(breach),
        }
        values.append(json.dumps(event).encode())
    return values
