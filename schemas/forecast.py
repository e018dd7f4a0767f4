"""`Forecast` (`sla.forecasts`, with `publish_forecasts`): one live forecast of one event.

The consumer writes these by hand for speed (`consumer.core`), one per event of a tenant
with a live model; a test holds that output to this model and its JSON Schema. A
forecast that is not a finite number is never published, so `probability` is always a
JSON number in [0, 1].
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.telemetry import TenantSlug


class Forecast(BaseModel):
    """P(breach) `horizon` intervals after the event at `ts`, from the tenant's live model."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    tenant: TenantSlug
    ts: AwareDatetime = Field(description="Event time of the event the forecast was made at.")
    horizon: int = Field(ge=1, description="Intervals ahead the forecast is for.")
    probability: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    breach_expected: bool = Field(description="probability >= the model's threshold.")
    model_revision: str = Field(max_length=128, description="Store revision of the model.")
    model_version: int = Field(ge=1, description="The store's count of the tenant's versions.")
