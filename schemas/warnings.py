"""`sla.warnings`: a tenant's early warning raised and cleared, edges only.

A pager or Alertmanager bridge subscribes here, not to `sla.forecasts` (one forecast per
event). A warning is on while the tenant is quiet (no breach in the last 12 intervals)
and its forecaster's probability of a breach within the next `horizon` intervals is at
or above the tenant's threshold; `WarningRaised` is sent when it comes on,
`WarningCleared` when it goes off, when the tenant's model is swapped (the new model
raises its own), or when the tenant leaves the consumer.

Ids are deterministic (`warning_event_id`: tenant, model revision, the raising event's
topic position), so a replay after a restart produces the same id, and a consumer of
this topic drops a repeat by id. A clear names the id of the warning it ends.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.telemetry import TenantSlug

#: The version of this contract (and of `Forecast`'s meaning): 2 since the forecast is
#: "a breach within the next `horizon` intervals" and `breach_expected` the warning.
WARNINGS_CONTRACT_VERSION: Final = 2

WarningId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
ClearReason = Literal["risk_passed", "breach_started", "model_swapped", "tenant_left"]


def warning_event_id(tenant: str, revision: str, topic: str, partition: int, offset: int) -> str:
    """The id of the warning raised at one event: the same on every replay of it.

    >>> a = warning_event_id("acme", "abc", "sla.telemetry", 0, 42)
    >>> a == warning_event_id("acme", "abc", "sla.telemetry", 0, 42), len(a)
    (True, 32)
    """
    text = f"warning\x1f{tenant}\x1f{revision}\x1f{topic}\x1f{partition}\x1f{offset}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class WarningPolicyFacts(BaseModel):
    """What the policy measured out of fold when the forecaster was trained."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    threshold: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    recall_lead_1: float | None = Field(
        default=None, ge=0.0, le=1.0, description="New incidents warned at least 1 interval ahead."
    )
    recall_lead_3: float | None = Field(default=None, ge=0.0, le=1.0)
    median_lead: float | None = Field(
        default=None, ge=0.0, description="Intervals ahead, median over warned incidents."
    )
    false_per_day: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)


class WarningRaised(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kind: Literal["raised"] = "raised"
    warning_id: WarningId
    tenant: TenantSlug
    ts: AwareDatetime = Field(description="Event time of the event that raised it.")
    probability: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    horizon: int = Field(ge=1, description="A breach is expected within this many intervals.")
    horizon_s: float | None = Field(
        default=None, ge=0.0, description="The horizon in seconds, at the tenant's interval."
    )
    model_revision: str = Field(max_length=128)
    model_version: int = Field(ge=1)
    forecaster: str = Field(max_length=32, description="mlp, linear_trend, level, ...")
    policy: WarningPolicyFacts


class WarningCleared(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kind: Literal["cleared"] = "cleared"
    warning_id: WarningId = Field(description="The id of the raise it ends.")
    tenant: TenantSlug
    ts: AwareDatetime = Field(description="Event time at which it went off.")
    reason: ClearReason
    model_revision: str = Field(max_length=128)
