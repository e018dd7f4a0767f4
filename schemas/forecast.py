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
    """P(a breach within the next `horizon` intervals after the event at `ts`).

    From the tenant's live forecaster (contract version `WARNINGS_CONTRACT_VERSION`:
    version 1 forecast the breach of the one interval `horizon` ahead).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    tenant: TenantSlug
    ts: AwareDatetime = Field(description="Event time of the event the forecast was made at.")
    horizon: int = Field(
        ge=1, description="The forecast is for a breach within the next `horizon` intervals."
    )
    probability: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    breach_expected: bool = Field(
        description="The tenant's warning is on: it is quiet (no breach in the last 12 "
        "intervals) and probability >= the warning policy's threshold."
    )
    model_revision: str = Field(max_length=128, description="Store revision of the model.")
    model_version: int = Field(ge=1, description="The store's count of the tenant's versions.")
