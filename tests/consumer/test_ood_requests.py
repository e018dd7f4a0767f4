"""Inputs out of the live forecaster's training range ask for a retrain (issue 21, item 8).

A gated forecaster, its training range set on a tenant's normal regime; then the
tenant's latencies and errors shift to a level training never saw. The forecast is
already shrunk toward the prior inside the module; the consumer asks for a forecaster
trained on the new level once the inputs stay out for `ood_events` events.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import torch

from consumer.core import CoreConfig, IngestCore
from consumer.live_model import LiveModel
from consumer.ood import OOD_SCORE
from consumer.performance import PerformanceConfig
from kernel.artifacts import ModelCard
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP
from schemas import FEATURES, RetrainRequested, retrain_event_id
from testkit.streams import RawRecord, telemetry_values

TOPIC = "sla.telemetry"
TENANT = "acme"
SHIFT_AT = 1_000


def columns(values: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    events = [json.loads(v) for v in values]
    ts = np.array([datetime.fromisoformat(e["ts"]).timestamp() for e in events])
    metrics = np.array([[e[f] for f in FEATURES] for e in events], dtype=np.float64)
    labels = np.array([e["sla_breached"] for e in events], dtype=bool)
    return ts, metrics, labels


def gated_model(training: list[bytes]) -> LiveModel:
    """A gated forecaster whose training range is that of `training` (the normal regime)."""
    spec = FeatureSpec()
    names = spec.names()
    X = spec.transform(*columns(training))[spec.history :]
    torch.manual_seed(0)
    module = SlaMLP(n_features=len(names), hidden_layers=0, gated=True)
    module.set_normalization(X.mean(axis=0), X.std(axis=0))
    watch = np.zeros(len(names), np.float32)
    watch[: len(FEATURES)] = 1.0  # the metrics at t, as the retrainer's forecasters watch
    module.set_gate(names.index("quiet"), X.min(axis=0), X.max(axis=0), watch)
    module.eval()
    card = ModelCard(
        architecture=module.architecture(),
        features=spec,
        feature_order=list(names),
        horizon=6,
        threshold=1.0,
        metrics={},
        cv_table=[],
        lineage={},
        files={},
        target="within",
    )
    return LiveModel(TENANT, "1" * 40, 1, "0" * 32, module, card)


def core_with(model: LiveModel, **changes: object) -> IngestCore:
    base: dict[str, object] = {
        "telemetry_topic": TOPIC,
        "data_drift": False,
        "performance": PerformanceConfig(performance_warmup=10**9),
    }
    base.update(changes)
    core = IngestCore(CoreConfig(**base))  # type: ignore[arg-type]
    core.apply_model(model)
    return core


def run(core: IngestCore, values: list[bytes], batch: int) -> list[RetrainRequested]:
    recs = [RawRecord(TENANT.encode(), v, 0, i) for i, v in enumerate(values)]
    requests: list[RetrainRequested] = []
    for lo in range(0, len(recs), batch):
        requests += core.process(recs[lo : lo + batch]).requests
    return requests


def test_a_level_shift_asks_once_after_ood_events_out_of_range() -> None:
    training = telemetry_values(TENANT, 1_000, seed=21)
    model = gated_model(training)
    live = telemetry_values(TENANT, 2_000, seed=22, shift_at=SHIFT_AT)
    # The oracle: the module's own score of each live event.
    spec = model.features
    X = spec.transform(*columns(live))
    scores = model.module.ood_score(torch.from_numpy(X)).numpy()
    assert (scores[:SHIFT_AT] < OOD_SCORE).all() and (scores[SHIFT_AT:] >= OOD_SCORE).all()
    config = CoreConfig().ood_events
    for batch in (2_000, 37):
        (request,) = run(core_with(model), live, batch)
        at = SHIFT_AT + config - 1
        assert request.reason == "data_drift" and request.detector == "out_of_distribution"
        assert request.source[0].end_offset == at + 1
        assert request.event_id == retrain_event_id(TENANT, "data_drift", TOPIC, 0, at)
        assert request.details.features == ["ood_score"]
        assert request.details.statistic["ood_events"] == config


def test_a_spike_shorter_than_ood_events_asks_nothing() -> None:
    model = gated_model(telemetry_values(TENANT, 1_000, seed=21))
    normal = telemetry_values(TENANT, 1_500, seed=23)
    spike = telemetry_values(TENANT, 20, seed=24, shift_at=0, start_index=1_500)
    after = telemetry_values(TENANT, 500, seed=25, start_index=1_520)
    assert run(core_with(model), normal + spike + after, 100) == []
    # The same spike, asked about after 10 events: one request at its 10th event.
    (request,) = run(core_with(model, ood_events=10), normal + spike + after, 100)
    assert request.source[0].end_offset == 1_510
    assert run(core_with(model, ood_events=0), normal + spike + after, 100) == []
