"""Serialisation and THE loader: round trips, tampering, unsafe pickles, bad cards."""

from __future__ import annotations

import io
import json
import pathlib
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from kernel.artifacts import (
    CARD_FORMAT_VERSION,
    ArtifactError,
    ModelArtifacts,
    ModelCard,
    load_model,
    predict_proba,
    serialize_model,
    sha256_hex,
)
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP
from testkit.pickles import SystemOnUnpickle, TouchOnUnpickle, torch_saved

FORMATS = ["safetensors", "pt"]
SPEC = FeatureSpec(lags=0, breach_windows=(2,), rolling_window=2)
FEATURES = list(SPEC.names())
N = len(FEATURES)


def _card_fields() -> dict[str, Any]:
    return {
        "features": SPEC,
        "feature_order": FEATURES,
        "horizon": 3,
        "threshold": 0.4,
        "metrics": {"log_loss": 0.31, "f1": 0.8, "tp": 12},
        "cv_table": [{"params": {"lr": 0.01, "width": 8}, "mean_test_score": -0.4, "rank": 1}],
        "lineage": {
            "event_id": "evt-1",
            "reason": "drift",
            "source": [{"partition": 0, "start": 10, "end": 99}],
            "data_sha256": "0" * 64,
            "seed": 7,
            "note": "tenant café",
        },
    }


@pytest.fixture
def module() -> SlaMLP:
    torch.manual_seed(123)
    m = SlaMLP(n_features=N, hidden_layers=2, width=8, dropout=0.2, activation="gelu")
    m.set_normalization(np.linspace(-1, 4, N), np.linspace(0.5, 3, N))
    return m


@pytest.fixture
def artifacts(module: SlaMLP) -> ModelArtifacts:
    return serialize_model(module, _card_fields())


def _edit_card(card: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    data = json.loads(card)
    edit(data)
    return json.dumps(data).encode()


def _forbid_deserialisation(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("deserialiser called before the checks refused the artifact")

    monkeypatch.setattr(safetensors.torch, "load", boom)
    monkeypatch.setattr(torch, "load", boom)


# --- round trip -------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_identical_predictions(
    module: SlaMLP, artifacts: ModelArtifacts, fmt: str
) -> None:
    loaded, card = load_model(artifacts.card, artifacts.weights(fmt), fmt)  # type: ignore[arg-type]
    assert not loaded.training
    assert loaded.architecture() == module.architecture()
    assert card == artifacts.card_model
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    X = torch.randn(64, N) * 5
    module.eval()
    with torch.no_grad():
        assert torch.equal(loaded(X), module(X))
    np.testing.assert_array_equal(
        predict_proba(loaded, X.numpy()), predict_proba(module, X.numpy())
    )


def test_card_records_hashes_and_is_sorted_utf8_json(artifacts: ModelArtifacts) -> None:
    card = artifacts.card_model
    assert card.files == {
        "safetensors": sha256_hex(artifacts.safetensors),
        "pt": sha256_hex(artifacts.pt),
    }
    text = artifacts.card.decode("utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, ensure_ascii=False, indent=2) + "\n"
    assert "café" in text
    assert data["architecture"]["activation"] == "gelu"
    assert data["format_version"] == CARD_FORMAT_VERSION == 3
    assert ModelCard.model_validate_json(artifacts.card) == card


def test_blobs_are_plain_state_dicts(module: SlaMLP, artifacts: ModelArtifacts) -> None:
    from_st = safetensors.torch.load(artifacts.safetensors)
    from_pt = torch.load(io.BytesIO(artifacts.pt), weights_only=True, map_location="cpu")
    assert set(from_st) == set(from_pt) == set(module.state_dict())
    assert "feature_mean" in from_st and "feature_std" in from_pt


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --- integrity --------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_byte_is_refused_before_deserialising(
    artifacts: ModelArtifacts, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = bytearray(artifacts.weights(fmt))  # type: ignore[arg-type]
    blob[len(blob) // 2] ^= 0x01
    _forbid_deserialisation(monkeypatch)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_model(artifacts.card, bytes(blob), fmt)  # type: ignore[arg-type]


def test_weights_of_the_other_format_are_refused(artifacts: ModelArtifacts) -> None:
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_model(artifacts.card, artifacts.safetensors, "pt")


def test_missing_hash_for_format_is_refused(
    artifacts: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = _edit_card(artifacts.card, lambda d: d["files"].pop("pt"))
    _forbid_deserialisation(monkeypatch)
    with pytest.raises(ArtifactError, match="no sha256"):
        load_model(card, artifacts.pt, "pt")


# --- unsafe pickles ---------------------------------------------------------


_PAYLOADS = [TouchOnUnpickle, SystemOnUnpickle]


def _malicious_blob(kind: str, payload: type, marker: pathlib.Path) -> bytes:
    if kind == "torch.save":
        return torch_saved(payload(marker))
    return pickle.dumps(payload(marker), protocol=2)


def _card_for(artifacts: ModelArtifacts, pt_blob: bytes) -> bytes:
    """A card whose sha256 for ``pt`` MATCHES the blob, so only the unpickler can refuse it."""
    return _edit_card(artifacts.card, lambda d: d["files"].update(pt=sha256_hex(pt_blob)))


@pytest.mark.parametrize("payload", _PAYLOADS)
def test_malicious_payloads_are_live(payload: type, tmp_path: pathlib.Path) -> None:
    """Control: an unrestricted unpickler WOULD run it, so the refusal test means something."""
    marker = tmp_path / "pwned"
    torch.load(io.BytesIO(torch_saved(payload(marker))), weights_only=False)  # noqa: S614
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle"])
@pytest.mark.parametrize("payload", _PAYLOADS)
def test_code_executing_pt_is_refused_even_with_matching_hash(
    artifacts: ModelArtifacts, kind: str, payload: type, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "pwned"
    blob = _malicious_blob(kind, payload, marker)
    card = _card_for(artifacts, blob)
    with pytest.raises(ArtifactError) as info:
        load_model(card, blob, "pt")
    assert "sha256" not in str(info.value)
    if kind == "torch.save":
        assert "weights-only unpickler" in str(info.value)
        assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_pt_that_is_not_a_tensor_mapping_is_refused(artifacts: ModelArtifacts) -> None:
    buffer = io.BytesIO()
    torch.save([torch.zeros(2)], buffer)
    blob = buffer.getvalue()
    with pytest.raises(ArtifactError, match="mapping of names to tensors"):
        load_model(_card_for(artifacts, blob), blob, "pt")


# --- format, size, card -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["pickle", "PT", "", "bin"])
def test_unknown_format_is_refused(
    artifacts: ModelArtifacts, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid_deserialisation(monkeypatch)
    with pytest.raises(ArtifactError, match="unknown weights format"):
        load_model(artifacts.card, artifacts.pt, fmt)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", FORMATS)
def test_oversize_weights_are_refused_first(
    artifacts: ModelArtifacts, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = artifacts.weights(fmt)  # type: ignore[arg-type]
    _forbid_deserialisation(monkeypatch)
    with pytest.raises(ArtifactError, match="limit"):
        # an invalid card proves the size check runs before the card is parsed
        load_model(b"not json", weights, fmt, max_bytes=len(weights) - 1)  # type: ignore[arg-type]


def test_oversize_card_is_refused(artifacts: ModelArtifacts) -> None:
    with pytest.raises(ArtifactError, match="card is"):
        load_model(artifacts.card, artifacts.pt, "pt", max_bytes=len(artifacts.card) - 1)


def test_non_bytes_inputs_are_refused(artifacts: ModelArtifacts) -> None:
    with pytest.raises(ArtifactError, match="bytes"):
        load_model(artifacts.card.decode(), artifacts.pt, "pt")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "card",
    [b"", b"{", b"not json", b"[]", b"\xff\xfe", b'{"format_version": 1}'],
    ids=["empty", "truncated", "text", "array", "not-utf8", "incomplete"],
)
def test_invalid_card_json_is_refused(
    artifacts: ModelArtifacts, card: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid_deserialisation(monkeypatch)
    with pytest.raises(ArtifactError, match="invalid model card"):
        load_model(card, artifacts.safetensors, "safetensors")


def _set(path: tuple[str, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set(("architecture", "bias"), True), "unknown architecture keys"),
        (_set(("architecture", "activation"), "swish"), "activation"),
        (_set(("architecture", "width"), 5000), "width"),
        (_set(("surprise",), 1), "invalid model card"),
        (_set(("format_version",), 1), "format_version"),
        (_set(("threshold",), "0.4"), "invalid model card"),
        (_set(("threshold",), 1.5), "invalid model card"),
        (_set(("features", "lags"), 2.5), "invalid model card"),
        (_set(("features", "version"), 9), "invalid model card"),
        (_set(("feature_order",), FEATURES[:5]), "feature spec computes"),
        (_set(("feature_order",), [*FEATURES[:5], FEATURES[0]]), "duplicate"),
        (_set(("files", "onnx"), "a" * 64), "unknown artifact kind"),
        (_set(("files", "safetensors"), "A" * 64), "sha256"),
    ],
)
def test_bad_card_content_is_refused(
    artifacts: ModelArtifacts,
    edit: Callable[[dict[str, Any]], None],
    match: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    card = _edit_card(artifacts.card, edit)
    _forbid_deserialisation(monkeypatch)
    with pytest.raises(ArtifactError, match=match):
        load_model(card, artifacts.safetensors, "safetensors")


@pytest.mark.parametrize("fmt", FORMATS)
def test_weights_that_do_not_fit_the_architecture_are_refused(
    artifacts: ModelArtifacts, fmt: str
) -> None:
    card = _edit_card(artifacts.card, _set(("architecture", "width"), 9))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_model(card, artifacts.weights(fmt), fmt)  # type: ignore[arg-type]


def test_wrong_dtype_weights_are_refused(module: SlaMLP, artifacts: ModelArtifacts) -> None:
    state = {k: v.double() for k, v in module.state_dict().items()}
    blob = safetensors.torch.save(state)
    card = _edit_card(artifacts.card, lambda d: d["files"].update(safetensors=sha256_hex(blob)))
    with pytest.raises(ArtifactError, match="dtype"):
        load_model(card, blob, "safetensors")


def test_corrupt_safetensors_with_matching_hash_is_refused(artifacts: ModelArtifacts) -> None:
    blob = b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"
    card = _edit_card(artifacts.card, lambda d: d["files"].update(safetensors=sha256_hex(blob)))
    with pytest.raises(ArtifactError, match="unreadable safetensors"):
        load_model(card, blob, "safetensors")


# --- serialize_model --------------------------------------------------------


@pytest.mark.parametrize("key", ["files", "architecture"])
def test_serialize_refuses_derived_fields(module: SlaMLP, key: str) -> None:
    with pytest.raises(ArtifactError, match="derived"):
        serialize_model(module, {**_card_fields(), key: {}})


@pytest.mark.parametrize(
    "overrides",
    [
        {"metrics": {"f1": float("nan")}},
        {"feature_order": FEATURES[:3]},
        {"unexpected": 1},
        {"threshold": "0.5"},
    ],
)
def test_serialize_refuses_invalid_card_fields(module: SlaMLP, overrides: dict[str, Any]) -> None:
    with pytest.raises(ArtifactError, match="invalid model card"):
        serialize_model(module, {**_card_fields(), **overrides})


def test_serialize_refuses_non_json_lineage(module: SlaMLP) -> None:
    fields = _card_fields()
    fields["lineage"] = {"bad": float("inf")}
    with pytest.raises(ArtifactError, match="JSON"):
        serialize_model(module, fields)


# --- predict_proba ----------------------------------------------------------


def test_predict_proba_matches_sigmoid_and_restores_mode(module: SlaMLP) -> None:
    module.train()
    X = np.random.default_rng(0).normal(size=(20, N))  # float64 in is converted
    probs = predict_proba(module, X)
    assert module.training
    assert probs.shape == (20,) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    module.eval()
    with torch.no_grad():
        expected = torch.sigmoid(module(torch.from_numpy(X.astype(np.float32)))).numpy()
    np.testing.assert_array_equal(probs, expected)


def test_predict_proba_rejects_1d_input(module: SlaMLP) -> None:
    with pytest.raises(ValueError, match="2-D"):
        predict_proba(module, np.zeros(6, dtype=np.float32))


def test_serialize_refuses_numpy_scalars_it_cannot_write(module: SlaMLP) -> None:
    fields = _card_fields()
    fields["cv_table"] = [{"rank": np.int64(1)}]
    with pytest.raises(ArtifactError, match="JSON"):
        serialize_model(module, fields)


def test_card_model_is_what_a_loader_sees(module: SlaMLP) -> None:
    fields = _card_fields()
    fields["cv_table"] = [{"params": ("a", "b")}]
    artifacts = serialize_model(module, fields)
    assert artifacts.card_model.cv_table == [{"params": ["a", "b"]}]
    assert load_model(artifacts.card, artifacts.pt, "pt")[1] == artifacts.card_model


# --- hostile values: parameters that load but cannot forecast (issue 11 item 6) -------


def _poisoned(module: SlaMLP, name: str, poison: Callable[[torch.Tensor], None]) -> SlaMLP:
    state = {k: v.clone() for k, v in module.state_dict().items()}
    poison(state[name])
    bad = SlaMLP(**module.architecture())  # type: ignore[arg-type]
    bad.load_state_dict(state)
    return bad


def _set_first(value: float) -> Callable[[torch.Tensor], None]:
    def poison(t: torch.Tensor) -> None:
        t.view(-1)[0] = value

    return poison


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("name", "poison", "match"),
    [
        ("body.0.weight", _set_first(float("nan")), r"tensor 'body.0.weight' has 1 non-finite"),
        ("head.bias", _set_first(float("inf")), r"tensor 'head.bias' has 1 non-finite"),
        ("feature_mean", _set_first(-float("inf")), r"tensor 'feature_mean' has 1 non-finite"),
        ("feature_std", _set_first(float("nan")), r"tensor 'feature_std' has 1 non-finite"),
        ("offset_logit", _set_first(float("nan")), r"tensor 'offset_logit' has 1 non-finite"),
        ("feature_std", _set_first(0.0), r"tensor 'feature_std' has 1 value\(s\) <= 0"),
        ("feature_std", _set_first(-1.0), r"tensor 'feature_std' has 1 value\(s\) <= 0"),
        ("offset_column", lambda t: t.fill_(N), r"tensor 'offset_column' is \d+"),
        ("offset_column", lambda t: t.fill_(-7), r"tensor 'offset_column' is -7"),
    ],
)
def test_unusable_parameters_are_refused_at_load_naming_the_tensor(
    module: SlaMLP,
    fmt: str,
    name: str,
    poison: Callable[[torch.Tensor], None],
    match: str,
) -> None:
    # The attack: a model whose hashes are all correct but whose values forecast NaN
    # (or 0/1 for certain, or crash at forecast time). Before: it loaded.
    bad = serialize_model(_poisoned(module, name, poison), _card_fields())
    with pytest.raises(ArtifactError, match=match):
        load_model(bad.card, bad.weights(fmt), fmt)  # type: ignore[arg-type]


def test_a_nan_weight_forecasts_nan_when_not_refused(module: SlaMLP) -> None:
    # Why: what the consumer would forecast (and put in `sla.forecasts`) from such a model.
    bad = _poisoned(module, "body.0.weight", _set_first(float("nan")))
    assert np.isnan(predict_proba(bad, np.ones((2, N), dtype=np.float32))).all()


def test_a_card_whose_lags_disagree_with_its_weights_is_refused(
    artifacts: ModelArtifacts,
) -> None:
    # Before: a card claiming more lags than the weights take crashed every batch.
    wider = FeatureSpec(lags=2, breach_windows=(2,), rolling_window=2)
    names = list(wider.names())
    assert len(names) != N

    def consistent_lie(data: dict[str, Any]) -> None:
        data["features"]["lags"] = 2
        data["feature_order"] = names
        data["architecture"]["n_features"] = len(names)

    card = _edit_card(artifacts.card, consistent_lie)
    with pytest.raises(ArtifactError, match="do not fit"):
        load_model(card, artifacts.safetensors, "safetensors")
    only_lags = _edit_card(artifacts.card, _set(("features", "lags"), 2))
    with pytest.raises(ArtifactError, match="feature spec computes"):
        load_model(only_lags, artifacts.safetensors, "safetensors")
    only_width = _edit_card(artifacts.card, _set(("architecture", "n_features"), N + 1))
    with pytest.raises(ArtifactError, match="n_features"):
        load_model(only_width, artifacts.safetensors, "safetensors")
