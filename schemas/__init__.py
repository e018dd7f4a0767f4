"""The contracts between slaops services: event models, topic names, JSON Schemas."""

from pydantic import BaseModel

from schemas.dead_letter import DeadLetter
from schemas.errors import InvalidTelemetry, SlaopsError
from schemas.forecast import Forecast
from schemas.model_events import ChampionDecision, ModelPublished
from schemas.outcomes import ChampionKept, RetrainFailed
from schemas.retrain import (
    DetectorDetails,
    OffsetRange,
    RetrainReason,
    RetrainRequested,
    retrain_event_id,
)
from schemas.telemetry import (
    FEATURES,
    RejectReason,
    TelemetryEvent,
    parse_telemetry,
)
from schemas.warnings import (
    WARNINGS_CONTRACT_VERSION,
    WarningCleared,
    WarningPolicyFacts,
    WarningRaised,
    warning_event_id,
)

#: Every contract with a JSON Schema file beside it, by file stem.
EXPORTED: dict[str, type[BaseModel]] = {
    "telemetry_event": TelemetryEvent,
    "retrain_requested": RetrainRequested,
    "model_published": ModelPublished,
    "dead_letter": DeadLetter,
    "retrain_failed": RetrainFailed,
    "champion_kept": ChampionKept,
    "forecast": Forecast,
    "warning_raised": WarningRaised,
    "warning_cleared": WarningCleared,
}

__all__ = [
    "EXPORTED",
    "FEATURES",
    "ChampionDecision",
    "ChampionKept",
    "DeadLetter",
    "DetectorDetails",
    "Forecast",
    "InvalidTelemetry",
    "ModelPublished",
    "OffsetRange",
    "RejectReason",
    "RetrainFailed",
    "RetrainReason",
    "RetrainRequested",
    "SlaopsError",
    "TelemetryEvent",
    "WARNINGS_CONTRACT_VERSION",
    "WarningCleared",
    "WarningPolicyFacts",
    "WarningRaised",
    "warning_event_id",
    "parse_telemetry",
    "retrain_event_id",
]
