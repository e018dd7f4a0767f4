"""SlaMLP: shapes, normalisation buffers, architecture validation and round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kernel.mlp import ACTIVATIONS, SlaMLP, build_module


def _arch(**overrides: object) -> dict[str, object]:
    arch: dict[str, object] = {
        "n_features": 6,
        "hidden_layers": 2,
        "width": 8,
        "dropout": 0.1,
        "activation": "gelu",
    }
    arch.update(overrides)
    return arch


@pytest.mark.parametrize("hidden_layers", [0, 1, 3])
@pytest.mark.parametrize("n_rows", [1, 7])
def test_forward_returns_one_logit_per_row(hidden_layers: int, n_rows: int) -> None:
    torch.manual_seed(0)
    module = SlaMLP(n_features=4, hidden_layers=hidden_layers, width=5)
    out = module(torch.randn(n_rows, 4))
    assert out.shape == (n_rows,)
    assert out.dtype == torch.float32


def test_forward_output_works_with_bce_with_logits() -> None:
    module = SlaMLP()
    X, y = torch.randn(10, 6), torch.randint(0, 2, (10,)).float()
    loss = nn.BCEWithLogitsLoss()(module(X), y)
    loss.backward()
    assert module.head.weight.grad is not None


@pytest.mark.parametrize("shape", [(6,), (3, 5), (3, 7), (2, 3, 6)])
def test_forward_rejects_wrong_input_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        SlaMLP(n_features=6)(torch.zeros(shape))


def test_defaults_match_the_contract() -> None:
    module = SlaMLP()
    assert module.architecture() == {
        "n_features": 6,
        "hidden_layers": 1,
        "width": 32,
        "dropout": 0.0,
        "activation": "relu",
    }
    assert torch.equal(module.feature_mean, torch.zeros(6))
    assert torch.equal(module.feature_std, torch.ones(6))
    assert module.feature_mean.dtype == module.feature_std.dtype == torch.float32


def test_normalisation_buffers_are_in_state_dict() -> None:
    module = SlaMLP(n_features=3)
    module.set_normalization(np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0]))
    state = module.state_dict()
    assert torch.equal(state["feature_mean"], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(state["feature_std"], torch.tensor([0.5, 1.0, 2.0]))
    # Buffers are not parameters: the optimiser never touches them.
    assert "feature_mean" not in dict(module.named_parameters())


def test_normalisation_is_applied_in_forward() -> None:
    torch.manual_seed(1)
    normalised = SlaMLP(n_features=3, hidden_layers=2, width=4)
    plain = SlaMLP(n_features=3, hidden_layers=2, width=4)
    plain.load_state_dict(normalised.state_dict())
    mean = torch.tensor([10.0, -5.0, 0.5])
    std = torch.tensor([2.0, 4.0, 0.25])
    normalised.set_normalization(mean, std)
    X = torch.randn(9, 3) * 3 + 1
    with torch.no_grad():
        assert not torch.allclose(normalised(X), plain(X))
        torch.testing.assert_close(normalised(X), plain((X - mean) / std))


def test_state_dict_carries_normalisation_to_a_fresh_module() -> None:
    torch.manual_seed(2)
    source = SlaMLP(n_features=3, width=4)
    source.set_normalization(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]))
    target = build_module(source.architecture())
    target.load_state_dict(source.state_dict())
    X = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.equal(source(X), target(X))


def test_set_normalization_clamps_std_and_accepts_tensors() -> None:
    module = SlaMLP(n_features=2)
    module.set_normalization(torch.tensor([0.0, 1.0], requires_grad=True), np.zeros(2))
    assert torch.all(module.feature_std >= 1e-6)
    assert torch.isfinite(module(torch.ones(1, 2))).all()


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        (np.zeros(3), np.ones(2), "shape"),
        (np.zeros((2, 1)), np.ones(2), "shape"),
        (np.array([np.nan, 0.0]), np.ones(2), "finite"),
        (np.zeros(2), np.array([1.0, np.inf]), "finite"),
        (np.zeros(2), np.array([1.0, -1.0]), "non-negative"),
    ],
)
def test_set_normalization_rejects_bad_values(
    mean: np.ndarray, std: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SlaMLP(n_features=2).set_normalization(mean, std)


def test_architecture_round_trips_through_json_and_build_module() -> None:
    module = SlaMLP(n_features=5, hidden_layers=3, width=7, dropout=0.25, activation="silu")
    arch = json.loads(json.dumps(module.architecture()))
    rebuilt = build_module(arch)
    assert rebuilt.architecture() == module.architecture()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_each_activation_is_used(name: str) -> None:
    module = build_module(_arch(activation=name, hidden_layers=1))
    assert any(isinstance(layer, ACTIVATIONS[name]) for layer in module.body)


def test_state_dict_keys_do_not_depend_on_dropout() -> None:
    keys_a = set(build_module(_arch(dropout=0.0)).state_dict())
    keys_b = set(build_module(_arch(dropout=0.5)).state_dict())
    assert keys_a == keys_b


def test_zero_hidden_layers_is_logistic_regression() -> None:
    module = build_module(_arch(hidden_layers=0))
    assert len(module.body) == 0
    assert module.head.in_features == 6


def test_build_module_accepts_numpy_integers() -> None:
    module = build_module(_arch(width=np.int64(4)))
    assert module.architecture()["width"] == 4
    assert type(module.architecture()["width"]) is int


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_features": 0}, "n_features"),
        ({"n_features": 257}, "n_features"),
        ({"hidden_layers": -1}, "hidden_layers"),
        ({"hidden_layers": 9}, "hidden_layers"),
        ({"width": 0}, "width"),
        ({"width": 1025}, "width"),
        ({"width": 32.0}, "width"),
        ({"width": "32"}, "width"),
        ({"width": True}, "width"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"dropout": "0.1"}, "dropout"),
        ({"dropout": False}, "dropout"),
        ({"activation": "swish"}, "activation"),
        ({"activation": None}, "activation"),
        ({"bias": True}, "unknown"),
    ],
)
def test_build_module_rejects_invalid_architecture(
    overrides: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_module(_arch(**overrides))


def test_build_module_rejects_missing_keys_and_non_mappings() -> None:
    arch = _arch()
    del arch["activation"]
    with pytest.raises(ValueError, match="missing"):
        build_module(arch)
    with pytest.raises(ValueError, match="mapping"):
        build_module([("width", 3)])  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="activation"):
        SlaMLP(activation="softplus")
    with pytest.raises(ValueError, match="hidden_layers"):
        SlaMLP(hidden_layers=20)
