"""A batch's tenants forecast together give what each tenant's own model gives alone."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from confluent_kafka import Message

import consumer.stacked
from consumer.batch import TenantState
from consumer.core import CoreConfig, IngestCore
from consumer.live_model import Events, LiveModel
from consumer.ood import ood_scores
from consumer.stacked import BatchForecasts, StackCache
from kernel.artifacts import predict_proba
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP, StackedMLP
from testkit.streams import telemetry_bytes
from testkit.tiny_models import tiny_live_model

Records = list[tuple[bytes, bytes]]


def gated_module(n_features: int, seed: int, *, low: float = -1e9, high: float = 1e9) -> SlaMLP:
    """A gated module with random weights, an offset, a gate and a watched input range."""
    torch.manual_seed(seed)
    module = SlaMLP(n_features, hidden_layers=2, width=16, activation="gelu", gated=True).eval()
    rng = np.random.default_rng(seed)
    module.set_normalization(rng.normal(0, 1, n_features), rng.uniform(0.5, 2, n_features))
    module.set_offset(1, rng.normal(0, 1, 2))
    watch = np.zeros(n_features)
    watch[0] = 1.0
    module.set_gate(2, np.full(n_features, low), np.full(n_features, high), watch)
    with torch.no_grad():
        module.prior_logit.fill_(-2.0)
    return module


def test_a_stacked_forward_is_each_members_own_forward() -> None:
    # Members with and without an out-of-range input: one is shrunk toward its prior,
    # the others not, and padding rows (all zeros, out of range for member 2) decide nothing.
    features = 5
    modules = [gated_module(features, seed) for seed in (0, 1)]
    modules.append(gated_module(features, 2, low=0.5))
    rng = np.random.default_rng(7)
    rows = [rng.normal(0, 2, (n, features)).astype(np.float32) for n in (9, 4, 6)]
    rows[0][3, 0] = 1e6  # far out of member 0's range? Its range is huge: not shrunk
    rows[1][:, 2] = rng.choice([0.0, 1.0], 4)  # both sides of the gate
    rows[2][:, 0] = np.abs(rows[2][:, 0]) + 1.0  # in member 2's range, except row 5:
    rows[2][5, 0] = -20.0
    X = np.zeros((3, 9, features), dtype=np.float32)
    for i, r in enumerate(rows):
        X[i, : len(r)] = r
    stack = StackedMLP(modules)
    with torch.inference_mode():
        logits = stack.scores(
            torch.tensor([0, 1, 2]), torch.from_numpy(X), torch.tensor([9, 4, 6])
        )[0]
    together = torch.sigmoid(logits).numpy()
    for i, (module, r) in enumerate(zip(modules, rows, strict=True)):
        alone = predict_proba(module, r)
        np.testing.assert_allclose(together[i, : len(r)], alone, atol=1e-6, rtol=0)
    # The shrinkage did happen for member 2, and only on its out-of-range row.
    assert float(modules[2].ood_score(torch.from_numpy(rows[2]))[5]) > 0
    # Members can be taken in any order and any subset.
    with torch.inference_mode():
        again = stack.scores(torch.tensor([2]), torch.from_numpy(X[2:3, :6]), torch.tensor([6]))[0]
    alone = predict_proba(modules[2], rows[2])
    np.testing.assert_allclose(torch.sigmoid(again).numpy()[0], alone, atol=1e-6, rtol=0)


def test_a_stack_refuses_members_of_different_architectures() -> None:
    with pytest.raises(ValueError, match="one architecture"):
        StackedMLP([SlaMLP(4, width=8), SlaMLP(4, width=16)])


def _models() -> list[LiveModel]:
    """Eight tenants: two architectures, two feature specs (one architecture spans both)."""
    wide = FeatureSpec(rolling_window=12)
    out = []
    for i in range(8):
        model = tiny_live_model(f"tenant-{i:05d}", hidden_layers=1 + i % 2, width=16, seed=i)
        if i % 4 == 0:
            names = wide.names()
            assert len(names) == model.module.n_features  # same architecture, other spec
            card = model.card.model_copy(update={"features": wide, "feature_order": list(names)})
            model = replace(model, card=card)
        out.append(replace(model, card=model.card.model_copy(update={"threshold": 0.45})))
    return out


def _run(batched: bool, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Records, Records]]:
    monkeypatch.setattr(consumer.stacked, "MIN_GROUP", 2 if batched else 10**9)
    alone_calls = []
    own_forecast = LiveModel.forecast

    def counted(model: LiveModel, history: Events, block: Events) -> np.ndarray:
        alone_calls.append(len(history[0]))
        return own_forecast(model, history, block)

    monkeypatch.setattr(LiveModel, "forecast", counted)
    data = telemetry_bytes(8 * 400, 8, seed=3)
    records = [
        Message(topic="sla.telemetry", partition=0, offset=i, key=k, value=v)
        for i, (k, v) in enumerate(data)
    ]
    core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry", publish_forecasts=True))
    models = _models()
    for model in models:
        core.apply_model(model)
    outputs = []
    for step, start in enumerate(range(0, len(records), 8 * 50)):
        if step == 4:  # a hot swap between batches rebuilds its group's stack
            swapped = tiny_live_model("tenant-00003", hidden_layers=1, width=16, seed=99)
            core.apply_model(replace(swapped, version=2))
        result = core.process(records[start : start + 8 * 50])
        outputs.append((result.forecasts, result.warnings))
    # One bank of weights per architecture; the swapped tenant (now 1 layer) left its slot
    # in the other.
    banks = core.registry._banks
    assert sorted(bank.live for bank in banks.values()) == [3, 5]
    # Batched, no tenant is forecast alone: not even in the first batches, while their
    # windows hold less than a row's history (72 events).
    assert (alone_calls == []) if batched else (min(alone_calls) == 0)
    return outputs


def test_batched_forecasts_equal_each_tenants_own(monkeypatch: pytest.MonkeyPatch) -> None:
    together = _run(True, monkeypatch)
    alone = _run(False, monkeypatch)
    assert len(together) == len(alone) == 8
    compared = 0
    for (forecasts, warnings), (forecasts_alone, warnings_alone) in zip(
        together, alone, strict=True
    ):
        assert len(forecasts) == len(forecasts_alone)
        for (key, value), (key_alone, value_alone) in zip(forecasts, forecasts_alone, strict=True):
            mine, theirs = json.loads(value), json.loads(value_alone)
            assert key == key_alone
            # Published to 6 places: 1e-6 apart may round one step apart, no more.
            assert mine.pop("probability") == pytest.approx(theirs.pop("probability"), abs=1.001e-6)
            assert mine == theirs  # breach_expected included
            compared += 1
        assert [k for k, _v in warnings] == [k for k, _v in warnings_alone]
    assert compared == 8 * 400


def test_a_gated_models_ood_scores_from_the_batch_are_its_own_bit_for_bit() -> None:
    """The batch's forward scores each gated tenant's rows for OOD as the gate does: the
    scores the consumer's OOD watch reads from it are what `ood_scores` computes alone,
    in range, partly out and far out, young tails and long ones."""
    core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry"))
    rng = np.random.default_rng(5)
    names = FeatureSpec().names()
    work: list[tuple[TenantState, Events]] = []
    for i, (history, high) in enumerate([(0, 1e3), (30, 3.5), (100, 3.0), (100, -2.0), (400, 1e3)]):
        tenant = f"tenant-{i:03d}"
        model = tiny_live_model(tenant, hidden_layers=2, width=8, seed=i, served=True)
        model.module.set_gate(
            names.index("quiet"),
            np.full(len(names), -1e3),
            np.full(len(names), high),
            np.arange(len(names)) < 6,
        )
        core.apply_model(model)
        state = core.registry.admit(tenant, 0)
        assert isinstance(state, TenantState)
        n = history + 40
        ts = 30.0 * np.arange(n, dtype=np.float64)
        metrics = rng.lognormal(3.0, 0.6, (n, 6)).astype(np.float32)
        metrics[:, 3:5] = rng.uniform(0, 1, (n, 2))
        labels = rng.random(n) < 0.2
        if history:
            state.window.extend(
                ts[:history], metrics[:history], labels[:history], np.arange(history)
            )
        work.append((state, (ts[history:], metrics[history:], labels[history:])))
    batch = BatchForecasts()
    batch.compute(StackCache(), work)
    shares = []
    for state, block in work:
        assert state.model is not None
        got = batch.take_ood(state)
        want = ood_scores(state.model, state.window, block)
        assert got is not None and want is not None
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        shares.append(got)
    every = np.concatenate(shares)
    assert (every == 0).any() and ((every > 0) & (every < 1)).any() and (every == 1).any()
