"""`ModelPublished` (`sla.models`): a new model is live for a tenant.

Downstream services download by `revision` (a commit sha in the store), so what they
load is exactly what was announced, and check each file against `sha256`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.retrain import EventId, RetrainReason
from schemas.telemetry import TenantSlug

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ArtifactKind = Literal["safetensors", "pt", "card"]


#: Why a challenger was or was not published.
Verdict = Literal["published", "champion_better", "baseline_better", "insufficient_evidence"]
#: The kinds of forecaster a tenant can get (see `retrainer.forecasters`).
ForecasterKind = Literal["mlp", "linear_trend", "seasonal_naive", "level", "prior"]
#: What a decision's evidence may report.
EvidenceKey = Literal[
    "n",
    "positives",
    "fresh_onsets",
    "base_log_loss",
    "quiet_base_log_loss",
    "gain",
    "confidence",
]
#: The trivial forecasts a challenger must beat (see `retrainer.baselines`).
BaselineName = Literal["prior", "persistence", "logistic"]


class ChampionDecision(BaseModel):
    """The champion/challenger decision on one holdout.

    `verdict` is `baseline_better` when the challenger has no skill over a trivial
    forecast (`baseline` names it, `detail` says by how much): the tenant keeps what it
    has, and a tenant without a model is told its data does not support one.
    `insufficient_evidence`: too few positives or fresh onsets out of fold to judge; no
    network is published and no champion replaced (a tenant with no forecaster gets the
    best rule). `forecaster` names the kind that was judged (mlp, linear_trend, ...) and
    `evidence` what it was judged on (n, positives, fresh_onsets, and against a champion
    the paired gain and its bootstrap confidence).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    published: bool
    rule: str = Field(max_length=200)
    challenger_score: float
    champion_score: float | None = None
    verdict: Verdict = "published"
    baseline: BaselineName | None = None
    detail: str = Field(default="", max_length=500)
    forecaster: ForecasterKind | None = None
    evidence: dict[EvidenceKey, float] = Field(default_factory=dict, max_length=16)


class ModelPublished(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    tenant: TenantSlug
    tenant_hash: Sha256Hex
    store_uri: str = Field(max_length=1024)
    revision: str = Field(max_length=128)
    paths: dict[ArtifactKind, str]
    sha256: dict[ArtifactKind, Sha256Hex]
    metrics: dict[str, float]
    decision: ChampionDecision
    request_event_id: EventId
    reason: RetrainReason
    model_version: int = Field(ge=1)
    published_at: AwareDatetime
