"""`slaops simulate`: seeded telemetry for N tenants, with drift and malformed records.

The model (`simulator.model`) is pure and importable without Kafka; `simulator.main`
sends its records to `sla.telemetry`.
"""

from simulator.malformed import EXPECTED_REJECT, MalformedKind
from simulator.model import (
    DriftPlan,
    EventMeta,
    ScheduledDrift,
    TelemetrySimulator,
    TenantProfile,
)

__all__ = [
    "EXPECTED_REJECT",
    "DriftPlan",
    "EventMeta",
    "MalformedKind",
    "ScheduledDrift",
    "TelemetrySimulator",
    "TenantProfile",
]
