"""Model artifacts: serialisation, THE loader, and inference.

Only parameters ever leave a process: the ``state_dict`` as ``.safetensors``
(canonical, code-free) and as the ``.pt`` that ``torch.save`` writes, plus a JSON
model card carrying the architecture, feature order, metrics, lineage and the
sha256 of each weight file. :func:`load_model` checks sizes, parses the card,
verifies the weight file's sha256 *before* any deserialisation, rebuilds the
module from the card and loads the tensors with safetensors or the weights-only
unpickler. Nothing here uses unrestricted pickle.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kernel.errors import ArtifactError
from kernel.features import FeatureSpec
from kernel.limits import MAX_ARTIFACT_BYTES
from kernel.mlp import SlaMLP, build_module

WeightFormat = Literal["safetensors", "pt"]
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)
#: 2: the feature pipeline's spec replaces `lags`; baselines, skill and calibration.
#: 3: a breach within the horizon; the forecaster's kind, its warning policy, the rules
#: beside it and the evidence, all out of fold. Format 2 cards still load and serve.
CARD_FORMAT_VERSION = 3
READABLE_CARD_FORMATS = (2, 3)
ForecasterKind = Literal["mlp", "linear_trend", "seasonal_naive", "level", "prior"]
#: What `horizon` means: the one interval that far ahead (format 2), or any within it.
Target = Literal["at", "within"]

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: Bounds of the card's report fields: a card stays small whatever the search did.
MAX_LEARNING_EPOCHS = 1000
MAX_PR_POINTS = 201
#: Most search trials a card records (a `bayes` search fits at most its `n_trials`).
MAX_TRIALS = 500
#: Most parameters one trial records (the grid's keys).
MAX_TRIAL_PARAMS = 32


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of ``data`` (the digest the card's ``files`` records)."""
    return hashlib.sha256(data).hexdigest()


class LearningPoint(BaseModel):
    """One epoch of the winner's training: loss on its rows and on its validation tail."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    epoch: int = Field(ge=1)
    train_loss: float = Field(ge=0.0)
    valid_loss: float | None = Field(default=None, ge=0.0)


class PRPoint(BaseModel):
    """One point of the out-of-fold precision-recall curve: predict breach at ``>= threshold``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    threshold: float = Field(ge=0.0, le=1.0)
    precision: float = Field(ge=0.0, le=1.0)
    recall: float = Field(ge=0.0, le=1.0)


class TrialRecord(BaseModel):
    """One trial of a Bayesian search: its candidate, its cross-validated loss (None when
    pruned), whether it was pruned, and the fold fits it cost (a pruned one's included)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    number: int = Field(ge=0)
    params: dict[str, bool | int | float | str | None] = Field(max_length=MAX_TRIAL_PARAMS)
    loss: float | None = None
    pruned: bool
    fits: int = Field(ge=0)

    @field_validator("params")
    @classmethod
    def _short_names(
        cls, value: dict[str, bool | int | float | str | None]
    ) -> dict[str, bool | int | float | str | None]:
        for name, choice in value.items():
            if not name or len(name) > 128 or (isinstance(choice, str) and len(choice) > 128):
                raise ValueError("trial parameter names and values are 1 to 128 characters")
        return value

    @model_validator(mode="after")
    def _loss_unless_pruned(self) -> TrialRecord:
        if (self.loss is None) != self.pruned:
            raise ValueError("a trial has a loss exactly when it was not pruned")
        return self


#: Most slices a card records (4 bands of the day, 3 load terciles, before and after a
#: change: 9), and most alertings each sets side by side (the model and its baselines).
MAX_SLICES = 16
MAX_SLICE_FIGURES = 6
#: Fewest rows and fresh onsets a slice needs to be judged (`retrainer.slices`).
MIN_SLICE_ROWS = 50
MIN_SLICE_ONSETS = 5
SliceFamily = Literal["hour_utc", "load", "change"]
#: What a slice's model can lose to a baseline on (`retrainer.slices`).
SLICE_LOSSES = ("log_loss", "recall_lead_1", "false_warnings")


class SliceFigures(BaseModel):
    """One alerting's headline figures on one slice's rows (`retrainer.slices`)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    #: Log loss of "a breach within the horizon"; None for a rule with no probability.
    log_loss: float | None = Field(default=None, ge=0.0)
    warned_lead_1: int = Field(ge=0)
    recall_lead_1: float | None = Field(default=None, ge=0.0, le=1.0)
    false_warnings: int = Field(ge=0)
    false_per_day: float = Field(ge=0.0)


class SliceRecord(BaseModel):
    """One slice of the evaluation: its sample size, and the model beside the baselines.

    ``figures`` holds ``model`` and each baseline by name; ``loses_to`` names each
    ``baseline.metric`` the model does worse on (empty when the slice is insufficient
    evidence: too few rows or fresh onsets to judge).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    family: SliceFamily
    name: str = Field(min_length=1, max_length=32)
    rows: int = Field(ge=0)
    positives: int = Field(ge=0)
    fresh_onsets: int = Field(ge=0)
    days: float = Field(ge=0.0)
    sufficient: bool
    figures: dict[str, SliceFigures] = Field(max_length=MAX_SLICE_FIGURES)
    loses_to: list[str] = Field(default_factory=list, max_length=2 * MAX_SLICE_FIGURES)

    @field_validator("figures")
    @classmethod
    def _model_and_names(cls, value: dict[str, SliceFigures]) -> dict[str, SliceFigures]:
        if "model" not in value:
            raise ValueError("a slice's figures include the model's")
        if any(not name or len(name) > 64 for name in value):
            raise ValueError("figure names are 1 to 64 characters")
        return value

    @model_validator(mode="after")
    def _losses_name_figures(self) -> SliceRecord:
        for loss in self.loses_to:
            name, _, metric = loss.rpartition(".")
            if name not in self.figures or metric not in SLICE_LOSSES:
                raise ValueError(f"loses_to entry {loss!r} names no baseline's metric")
        return self


class ModelCard(BaseModel):
    """The JSON card published beside the weights; enough to rebuild the module.

    It is also the one source of the version's report (plots and Markdown card are
    rendered from it): ``cv_table`` (the search), ``learning_curve`` (the winner's
    epochs), ``pr_curve``, ``calibration`` and the confusion counts in ``metrics``.
    ``learning_curve`` and ``pr_curve`` came later in format 2 and default to empty,
    so earlier cards still load.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    format_version: int = CARD_FORMAT_VERSION
    architecture: dict[str, Any]
    features: FeatureSpec
    feature_order: list[str]
    horizon: int = Field(ge=1)
    threshold: float = Field(ge=0.0, le=1.0)
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)
    skill: dict[str, float] = Field(default_factory=dict)
    calibration: list[dict[str, float]] = Field(default_factory=list)
    cv_table: list[dict[str, Any]]
    learning_curve: list[LearningPoint] = Field(
        default_factory=list, max_length=MAX_LEARNING_EPOCHS
    )
    pr_curve: list[PRPoint] = Field(default_factory=list, max_length=MAX_PR_POINTS)
    #: The trials of a `bayes` search, in the order they were drawn ([] otherwise).
    trials: list[TrialRecord] = Field(default_factory=list, max_length=MAX_TRIALS)
    #: The evaluation by slice (`retrainer.slices`), beside the baselines ([] in older cards).
    slices: list[SliceRecord] = Field(default_factory=list, max_length=MAX_SLICES)
    lineage: dict[str, Any]
    files: dict[str, str]
    #: Format 3: what is forecast, by which kind of forecaster (on which input column for
    #: a rule), the warning policy (threshold, budget, out-of-fold record), the rules
    #: judged beside it, and the evidence (n, positives, fresh onsets).
    target: Target = "at"
    horizon_s: float | None = Field(default=None, ge=0.0)
    forecaster: ForecasterKind = "mlp"
    forecaster_input: str | None = Field(default=None, max_length=128)
    warning: dict[str, Any] = Field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=8)
    evidence: dict[str, Any] = Field(default_factory=dict, max_length=16)

    @property
    def warning_record(self) -> dict[str, Any]:
        """The warning policy's out-of-fold record (`TunedPolicy.as_card`), {} when absent.

        The one reader of it: the card is input like any other, so a caller still checks
        each value it takes.
        """
        record = self.warning.get("out_of_fold")
        return record if isinstance(record, dict) else {}

    @property
    def lags(self) -> int:
        return self.features.lags

    @property
    def warns(self) -> bool:
        """Whether the policy ever warns (a threshold of 1 means never)."""
        return self.threshold < 1.0

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in READABLE_CARD_FORMATS:
            raise ValueError(
                f"unsupported card format_version {value} (this code reads "
                f"{', '.join(map(str, READABLE_CARD_FORMATS))}; upgrade slaops to read newer)"
            )
        return value

    @field_validator("feature_order")
    @classmethod
    def _unique_features(cls, value: list[str]) -> list[str]:
        if not value or any(not name for name in value):
            raise ValueError("feature_order must be a non-empty list of non-empty names")
        if len(set(value)) != len(value):
            raise ValueError("feature_order has duplicate names")
        return value

    @field_validator("files")
    @classmethod
    def _files_are_digests(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, digest in value.items():
            if kind not in WEIGHT_FORMATS:
                raise ValueError(f"unknown artifact kind {kind!r}; known: {list(WEIGHT_FORMATS)}")
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(f"files[{kind!r}] is not a lower-case hex sha256")
        return value

    @model_validator(mode="after")
    def _features_match_architecture(self) -> ModelCard:
        if tuple(self.feature_order) != self.features.names():
            raise ValueError("feature_order is not what the card's feature spec computes")
        if self.forecaster_input is not None and self.forecaster_input not in self.feature_order:
            raise ValueError(f"forecaster_input {self.forecaster_input!r} is not a feature")
        n_features = self.architecture.get("n_features")
        if isinstance(n_features, int) and n_features != len(self.feature_order):
            raise ValueError(
                f"feature_order has {len(self.feature_order)} names but "
                f"architecture.n_features is {n_features}"
            )
        return self


@dataclass(frozen=True, slots=True)
class ModelArtifacts:
    """The serialised model: both weight blobs, the card bytes and the parsed card."""

    safetensors: bytes
    pt: bytes
    card: bytes
    card_model: ModelCard

    def weights(self, fmt: WeightFormat) -> bytes:
        """The weight blob for ``fmt`` (``"safetensors"`` or ``"pt"``)."""
        if fmt == "safetensors":
            return self.safetensors
        if fmt == "pt":
            return self.pt
        raise ArtifactError(f"unknown weights format {fmt!r}; expected one of {WEIGHT_FORMATS}")


def _card_bytes(card: ModelCard) -> bytes:
    try:
        text = json.dumps(
            card.model_dump(),
            sort_keys=True,
            ensure_ascii=False,
            allow_nan=False,
            indent=2,
        )
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"model card is not plain JSON (finite numbers, str, bool, None, list, dict): {exc}"
        ) from exc
    return (text + "\n").encode("utf-8")


def serialize_model(module: SlaMLP, card_fields: Mapping[str, Any]) -> ModelArtifacts:
    """Serialise ``module`` to safetensors + ``.pt`` bytes and a JSON card.

    ``card_fields`` holds every :class:`ModelCard` field except ``architecture``
    (taken from the module) and ``files`` (the sha256 of the two weight blobs,
    computed here). Raises :class:`ArtifactError` on an invalid card.
    """
    reserved = {"architecture", "files"} & set(card_fields)
    if reserved:
        raise ArtifactError(f"card_fields must not set {sorted(reserved)}; they are derived")
    state = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in module.state_dict().items()
    }
    st_blob = safetensors.torch.save(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    pt_blob = buffer.getvalue()
    try:
        card = ModelCard.model_validate(
            {
                **card_fields,
                "architecture": module.architecture(),
                "files": {"safetensors": sha256_hex(st_blob), "pt": sha256_hex(pt_blob)},
            }
        )
    except ValidationError as exc:
        raise ArtifactError(f"invalid model card fields: {exc}") from exc
    card_blob = _card_bytes(card)
    # Hand back the card exactly as a loader will see it (tuples become lists, ...).
    return ModelArtifacts(
        safetensors=st_blob,
        pt=pt_blob,
        card=card_blob,
        card_model=ModelCard.model_validate_json(card_blob),
    )


def _deserialise(weights: bytes, fmt: str) -> dict[str, torch.Tensor]:
    """Tensors from a hash-verified blob; never runs unrestricted pickle."""
    loaded: object
    if fmt == "safetensors":
        try:
            loaded = safetensors.torch.load(weights)
        except Exception as exc:  # any parser failure means the artifact is refused
            raise ArtifactError(f"unreadable safetensors weights: {exc}") from exc
    else:
        try:
            loaded = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            raise ArtifactError(
                f".pt weights refused by the weights-only unpickler: {exc}"
            ) from exc
        except Exception as exc:  # corrupt archive etc.
            raise ArtifactError(f"unreadable .pt weights: {exc}") from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ArtifactError(f"{fmt} weights are not a mapping of names to tensors")
    return dict(loaded)


def load_model(
    card: bytes,
    weights: bytes,
    fmt: WeightFormat,
    *,
    max_bytes: int = MAX_ARTIFACT_BYTES,
) -> tuple[SlaMLP, ModelCard]:
    """THE loader: rebuild a model from its card and one weight blob, in eval mode.

    Order matters: format and size checks, card parsing (the card must agree with
    itself: feature order, feature spec and ``n_features``), then the sha256 of
    ``weights`` against ``card.files[fmt]``, and only then deserialisation
    (safetensors, or ``torch.load(weights_only=True)``) into the module the card
    describes (every tensor's name, shape and dtype must fit it). Last, the values:
    every floating tensor finite, ``feature_std > 0``, ``offset_column`` -1 or
    an input column, so a loaded model always forecasts a probability. Every refusal
    raises :class:`ArtifactError`, naming the tensor where one is at fault.
    """
    if fmt not in WEIGHT_FORMATS:
        raise ArtifactError(f"unknown weights format {fmt!r}; expected one of {WEIGHT_FORMATS}")
    if not isinstance(card, bytes) or not isinstance(weights, bytes):
        raise ArtifactError("card and weights must be bytes")
    for what, blob in (("card", card), ("weights", weights)):
        if len(blob) > max_bytes:
            raise ArtifactError(f"{what} is {len(blob)} bytes, over the {max_bytes}-byte limit")

    try:
        card_model = ModelCard.model_validate_json(card)
    except ValidationError as exc:
        raise ArtifactError(f"invalid model card: {exc}") from exc

    expected = card_model.files.get(fmt)
    if expected is None:
        raise ArtifactError(f"model card records no sha256 for {fmt!r} weights")
    actual = sha256_hex(weights)
    if not hmac.compare_digest(actual, expected):
        raise ArtifactError(
            f"sha256 mismatch for {fmt} weights: card has {expected}, bytes hash to {actual}"
        )

    try:
        module = build_module(card_model.architecture)
    except ValueError as exc:
        raise ArtifactError(f"invalid architecture in model card: {exc}") from exc

    state = _deserialise(weights, fmt)
    reference = module.state_dict()
    for name, tensor in state.items():
        ref = reference.get(name)
        if ref is not None and tensor.dtype != ref.dtype:
            raise ArtifactError(f"tensor {name!r} has dtype {tensor.dtype}, expected {ref.dtype}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"weights do not fit the card's architecture: {exc}") from exc
    _check_usable(module)
    module.eval()
    return module, card_model


def _check_usable(module: SlaMLP) -> None:
    """Refuse parameters that load but cannot forecast: the offending tensor is named.

    Every floating tensor must be finite (a NaN or inf weight forecasts NaN);
    ``feature_std`` must be positive (``set_normalization`` leaves it >= ``MIN_STD``; a
    zero or negative std divides by zero or flips the features); ``offset_column`` is
    -1 (no offset) or an input column.
    """
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ArtifactError(f"tensor {name!r} has {bad} non-finite value(s) (NaN or inf)")
    std = module.feature_std
    if bool((std <= 0).any()):
        raise ArtifactError(
            f"tensor 'feature_std' has {int((std <= 0).sum())} value(s) <= 0 "
            f"(min {float(std.min())}): normalisation would divide by zero or flip a feature"
        )
    columns = {"offset_column": int(module.offset_column)}
    if module.gated:
        columns["gate_column"] = int(module.gate_column)
    for name, column in columns.items():
        if not (column == -1 or 0 <= column < module.n_features):
            raise ArtifactError(
                f"tensor {name!r} is {column}: expected -1 or a column in [0, {module.n_features})"
            )


def predict_proba(module: SlaMLP, X: np.ndarray) -> np.ndarray:
    """P(breach) per row of ``X`` (shape ``(n, n_features)``), as float32 of shape ``(n,)``.

    Runs in eval mode under ``no_grad``; the module's previous mode is restored.
    """
    arr = np.ascontiguousarray(X, dtype=np.float32)
    if not arr.flags.writeable:  # torch wants writable memory; it only reads it here
        arr = arr.copy()
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D (n, n_features), got shape {arr.shape}")
    was_training = module.training
    if was_training:  # switching modes walks every submodule: only when needed
        module.eval()
    try:
        with torch.inference_mode():
            logits = module(torch.from_numpy(arr).to(module.feature_mean.device))
    finally:
        if was_training:
            module.train()
    probs: np.ndarray = torch.sigmoid(logits).cpu().numpy()
    return probs
