"""Settings of `slaops simulate` (env `SLAOPS_*`, each also a CLI flag).

Everything that can be checked without a broker is checked here, so a bad drift plan
fails at start-up naming the setting, not after half the stream has been sent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from kernel.settings import TopicName, TopicSettings
from schemas import topics
from simulator.model import DEFAULT_START, MAX_MAGNITUDE, DriftPlan, tenant_name


class DriftSpec(BaseModel):
    """One entry of `drift`: which tenant drifts, from which of its events, how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: StrictInt | str = Field(description="Tenant index (0-based) or name, e.g. tenant-001.")
    at_event: int = Field(ge=0, description="Index of the first drifted event of that tenant.")
    kind: Literal["concept", "data", "both"] = Field(
        default="concept",
        description="concept: the breach rule's thresholds drop; data: the metrics shift.",
    )
    magnitude: float = Field(
        default=1.0,
        gt=0.0,
        le=MAX_MAGNITUDE,
        description="1: thresholds -40% (concept); latency +60%, error rate x3 (data).",
    )

    def to_plan(self) -> DriftPlan:
        return DriftPlan(self.tenant, self.at_event, self.kind, self.magnitude)


class SimulatorSettings(TopicSettings):
    telemetry_topic: TopicName = Field(
        default=topics.TELEMETRY, description="Telemetry out (keyed by tenant)."
    )
    tenants: int = Field(
        default=3, ge=1, le=100_000, description="Tenants tenant-000, tenant-001, ..."
    )
    events_per_tenant: int = Field(
        default=2_000, ge=1, le=100_000_000, description="Events (intervals) sent per tenant."
    )
    rate: float = Field(
        default=0.0,
        ge=0.0,
        le=10_000_000.0,
        description="Events per second; 0: as fast as possible.",
    )
    seed: int = Field(default=0, ge=0, description="Seed: the same seed sends the same bytes.")
    interval_s: float = Field(
        default=60.0, gt=0.0, le=86_400.0, description="Event time between a tenant's events."
    )
    start: AwareDatetime = Field(
        default=DEFAULT_START, description="Event time of the first interval (RFC 3339)."
    )
    drift: list[DriftSpec] = Field(
        default_factory=list,
        description=(
            'Drift to inject as a JSON list, e.g. [{"tenant": 1, "at_event": 1000, '
            '"kind": "concept", "magnitude": 1.0}]; kind: concept, data or both.'
        ),
    )
    malformed_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of records replaced by malformed ones."
    )

    @field_validator("drift")
    @classmethod
    def _check_drift(cls, drift: list[DriftSpec], info: ValidationInfo) -> list[DriftSpec]:
        if "tenants" not in info.data or "events_per_tenant" not in info.data:
            return drift  # their own errors are reported
        tenants, events = info.data["tenants"], info.data["events_per_tenant"]
        names = {tenant_name(i) for i in range(tenants)}
        for spec in drift:
            if isinstance(spec.tenant, str) and spec.tenant not in names:
                raise ValueError(
                    f"drift names tenant {spec.tenant!r}; the tenants are "
                    f"{tenant_name(0)}..{tenant_name(tenants - 1)}: name one of them, or "
                    "raise tenants"
                )
            if isinstance(spec.tenant, int) and not 0 <= spec.tenant < tenants:
                raise ValueError(
                    f"drift names tenant {spec.tenant}; the tenants are 0..{tenants - 1}: "
                    "name one of them, or raise tenants"
                )
            if spec.at_event >= events:
                raise ValueError(
                    f"drift at_event {spec.at_event} never happens: each tenant sends "
                    f"{events} events (events_per_tenant); lower at_event or raise "
                    "events_per_tenant"
                )
        return drift

    def drift_plans(self) -> list[DriftPlan]:
        return [spec.to_plan() for spec in self.drift]
