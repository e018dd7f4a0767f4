"""Live models' weights are stored once (`consumer.stacked.ModelBank`), and hot swaps keep
every tenant's forecasts its own model's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import consumer.stacked
from consumer.core import CoreConfig, IngestCore
from consumer.live_model import LiveModel
from consumer.stacked import ModelBank, StackCache
from kernel.artifacts import predict_proba
from testkit.tiny_models import tiny_live_model

ROWS = np.random.default_rng(5).normal(0, 2, (7, 88)).astype(np.float32)


def _model(tenant: str, seed: int, version: int = 1, layers: int = 2) -> LiveModel:
    model = tiny_live_model(tenant, hidden_layers=layers, width=16, seed=seed, version=version)
    with torch.no_grad():
        model.module.set_offset(3, np.array([-1.0, 0.5]))
        model.module.feature_mean.normal_()
    return model


def _alone(model: LiveModel) -> np.ndarray:
    return predict_proba(model.module, ROWS)


def _together(models: list[LiveModel]) -> np.ndarray:
    X = torch.from_numpy(np.stack([ROWS] * len(models)))
    rows = torch.full((len(models),), len(ROWS))
    with torch.inference_mode():
        return torch.sigmoid(StackCache().scores(models, X, rows)[0]).numpy()


def test_an_adopted_module_reads_its_slot_and_forecasts_bit_for_bit_as_before() -> None:
    model = _model("t", 0)
    before = _alone(model)
    bank = ModelBank(page_slots=4)
    slot = bank.adopt(model)
    page = bank._pages[0]
    assert model.stored == (bank, slot) and page.shares(slot, model.module)
    for name, tensor in model.module.state_dict().items():
        assert tensor.data_ptr() == page.tensors[name][slot].data_ptr(), name
    # Its parameters are frozen (no autograd state), still parameters, same names.
    params = dict(model.module.named_parameters())
    assert sorted(params) == sorted(n for n in page.tensors if n.endswith(("weight", "bias")))
    assert all(isinstance(p, torch.nn.Parameter) and not p.requires_grad for p in params.values())
    np.testing.assert_array_equal(_alone(model), before)  # not just close: equal
    bank.release(slot, model)
    assert model.stored is None and not page.shares(slot, model.module)
    with torch.no_grad():  # the slot is reused: the released module does not see it
        page.tensors["head.bias"][slot].fill_(50.0)
    np.testing.assert_array_equal(_alone(model), before)


def test_pages_forecast_each_members_own_in_any_order() -> None:
    models = [_model(f"t{i}", i) for i in range(7)]
    bank = ModelBank(page_slots=3)  # three pages, the last one part full
    for model in models:
        bank.adopt(model)
    assert len(bank._pages) == 3 and bank.live == 7
    for order in ([0, 1, 2, 3, 4, 5, 6], [6, 2, 4, 0, 5, 1, 3], [5, 3]):
        together = _together([models[i] for i in order])
        for row, i in enumerate(order):
            np.testing.assert_allclose(together[row], _alone(models[i]), atol=1e-6, rtol=0)


def test_a_hot_swap_changes_the_swapped_tenant_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer.stacked, "PAGE_SLOTS", 2)
    core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry"))
    models = [_model(f"tenant-{i}", i) for i in range(5)]
    # Tenant 4 shares tenant 3's module object (as `replace` makes): two slots, one module.
    models[4] = replace(models[3], tenant="tenant-4")
    expected = {m.tenant: _alone(m) for m in models}
    for model in models:
        core.apply_model(model)
    bank = next(iter(core.registry._banks.values()))
    assert bank.live == 5 and len(bank._pages) == 3
    old = models[1]
    assert old.stored is not None
    old_slot = old.stored[1]
    new = _model("tenant-1", 99, version=2)
    wanted_new = _alone(new)
    core.apply_model(new)
    assert bank.live == 5 and old.stored is None and new.stored is not None
    # The freed slot goes to the next model: a newcomer of the same architecture.
    newcomer = _model("tenant-5", 7)
    wanted_newcomer = _alone(newcomer)
    core.apply_model(newcomer)
    assert newcomer.stored is not None and newcomer.stored[1] == old_slot
    live = [m for m in (core.model(f"tenant-{i}") for i in range(6)) if m is not None]
    assert len(live) == 6 and live[1] is new
    together = _together(live)
    for row, model in enumerate(live):
        want = {"tenant-1": wanted_new, "tenant-5": wanted_newcomer}.get(model.tenant)
        if want is None:
            want = expected[model.tenant]
        np.testing.assert_allclose(together[row], want, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(_alone(model), want)
    np.testing.assert_array_equal(_alone(old), expected["tenant-1"])  # the old one kept its own
    # Swapping tenant 3 leaves tenant 4, which shares its module, forecasting as before.
    core.apply_model(_model("tenant-3", 42, version=2, layers=1))
    four, zero = core.model("tenant-4"), core.model("tenant-0")
    assert four is not None and zero is not None
    np.testing.assert_array_equal(_alone(four), expected["tenant-4"])
    np.testing.assert_allclose(_together([four, zero])[0], expected["tenant-4"], atol=1e-6, rtol=0)


def test_models_in_no_bank_are_stacked_for_the_call_only() -> None:
    models = [_model(f"t{i}", i) for i in range(3)]
    together = _together(models)
    for row, model in enumerate(models):
        assert model.stored is None
        np.testing.assert_allclose(together[row], _alone(model), atol=1e-6, rtol=0)
