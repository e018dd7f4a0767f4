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


class ChampionDecision(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    published: bool
    rule: str
    challenger_score: float
    champion_score: float | None = None


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
