"""`RetrainRequested` (`sla.retrain`): the consumer asks the retrainer for a new model."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.telemetry import TenantSlug
from schemas.topics import TOPIC_NAME_PATTERN

#: Why a retrain is asked. `more_history` (added later; every earlier event still
#: validates): the tenant's history has grown to a multiple of what its forecaster was
#: trained on. A retry of a tenant with no forecaster is a
#: `cold_start` whose `detector` is "retry"; inputs out of the forecaster's training
#: range are `data_drift` with detector "out_of_distribution".
RetrainReason = Literal["cold_start", "data_drift", "performance_drift", "manual", "more_history"]
TopicName = Annotated[str, StringConstraints(pattern=TOPIC_NAME_PATTERN)]
EventId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class OffsetRange(BaseModel):
    """Offsets `[start_offset, end_offset)` of one partition: the lineage of a window."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    topic: TopicName
    partition: int = Field(ge=0)
    start_offset: int = Field(ge=0)
    end_offset: int = Field(ge=0, description="Exclusive: the offset after the last event.")


class DetectorDetails(BaseModel):
    """What the detector saw: which features agreed and the statistics behind it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    features: list[str] = Field(default_factory=list)
    statistic: dict[str, float] = Field(default_factory=dict)


class RetrainRequested(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    event_id: EventId = Field(description="Deterministic: same trigger, same id.")
    tenant: TenantSlug
    reason: RetrainReason
    detector: str = Field(max_length=64)
    details: DetectorDetails = Field(default_factory=DetectorDetails)
    detected_at: AwareDatetime
    source: list[OffsetRange] = Field(min_length=1)
    n_events: int = Field(ge=0)


def retrain_event_id(
    tenant: str, reason: RetrainReason, topic: str, partition: int, offset: int
) -> str:
    """Id of a retrain request, derived from what triggered it.

    A consumer that replays the same offset after a crash derives the same id, so the
    retrainer can drop the duplicate.
    """
    material = "\x00".join(
        ("slaops.retrain.v1", tenant, reason, topic, str(partition), str(offset))
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]
