"""What became of a retrain request that published no model.

`RetrainFailed` (`sla.retrain.failures`): the request could not be served (its data
left the topic, too few rows, one class, the store refused the publish, ...); it is
committed and not retried.
`ChampionKept` (`sla.retrain.decisions`): a challenger was trained but did not beat the
current model, or a trivial baseline, on the same holdout, so nothing was published
(`decision.verdict` says which; `champion_revision` is None for a tenant that has no
model yet).
Together with `ModelPublished` these close a request: the consumer frees the tenant's
request gate on any of the three.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.model_events import ChampionDecision
from schemas.retrain import EventId, OffsetRange, RetrainReason
from schemas.telemetry import TenantSlug

FailureReason = Literal[
    "invalid_request",
    "range_unavailable",
    "too_few_rows",
    "single_class",
    "non_finite",
    "shape",
    # The failure policy gave up after `max_attempts` (see kernel.errors.is_transient):
    "store_refused",  # the model store refused for good: 401/403, a repo it may not create
    "unexpected_error",  # any other error that is not transient, e.g. a bug
]


class RetrainFailed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    request_event_id: EventId | None = Field(
        description="Absent when the request itself could not be read."
    )
    tenant: TenantSlug | None
    reason: FailureReason
    detail: str = Field(max_length=1000)
    source: list[OffsetRange] = Field(default_factory=list)
    failed_at: AwareDatetime


class ChampionKept(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    request_event_id: EventId
    tenant: TenantSlug
    reason: RetrainReason
    decision: ChampionDecision
    challenger_metrics: dict[str, float]
    champion_revision: str | None = Field(max_length=128)
    decided_at: AwareDatetime
