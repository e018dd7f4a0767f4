"""The telemetry contract (`sla.telemetry`) and the one decoder both services use.

The decoder is the only door from raw Kafka bytes to a `TelemetryEvent`: it checks
size, encoding and key before pydantic sees the value, and turns every failure into
an `InvalidTelemetry` (``schemas.errors``; importable from here too) with a stable
machine-readable reason for the dead-letter topic.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from schemas.errors import InvalidTelemetry

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FEATURES",
    "MAX_LATENCY_MS",
    "MAX_RPS",
    "MAX_SERVICE_LEN",
    "MAX_TS",
    "MIN_TS",
    "TENANT_PATTERN",
    "InvalidTelemetry",
    "LatencyMs",
    "RejectReason",
    "TelemetryEvent",
    "TenantSlug",
    "UnitFraction",
    "parse_telemetry",
]

#: Slug of a tenant: also the Kafka message key.
TENANT_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
#: The metric features, in the order every window, detector and model uses.
FEATURES: Final = (
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "error_rate",
    "cpu_util",
    "rps",
)
#: Latencies above an hour are a producer bug, not a slow service.
MAX_LATENCY_MS: Final = 3_600_000.0
MAX_RPS: Final = 1e9
MAX_SERVICE_LEN: Final = 128
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Event times stay a day inside what `datetime` holds in UTC: the consumer turns them
#: into float timestamps and back (requests, forecasts), which must not overflow.
MIN_TS: Final = datetime(1, 1, 2, tzinfo=UTC)
MAX_TS: Final = datetime(9999, 12, 30, tzinfo=UTC)

#: What an RFC 3339 date-time starts with: pydantic would also take a bare number of
#: seconds ("1700000000") for a datetime, which the contract does not allow.
_RFC3339_HEAD: Final = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:")


def _rfc3339_text(value: Any) -> Any:
    """Refuse a timestamp that is not written as an RFC 3339 date-time.

    Only text passes (the field then parses it without strict mode, which a before
    validator's string would fail): numbers, `datetime` objects included, are refused.
    """
    if not isinstance(value, str) or not _RFC3339_HEAD.match(value):
        raise ValueError("ts must be an RFC 3339 date-time, e.g. 2026-01-05T10:00:00Z")
    return value


TenantSlug = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
LatencyMs = Annotated[float, Field(ge=0.0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
UnitFraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class TelemetryEvent(BaseModel):
    """One service's metrics for one interval, as a producer sends it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    tenant: TenantSlug
    ts: Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)] = Field(
        ge=MIN_TS,
        le=MAX_TS,
        strict=False,
        description="End of the interval, RFC 3339 with an offset.",
    )
    service: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SERVICE_LEN)]
    latency_p50_ms: LatencyMs
    latency_p95_ms: LatencyMs
    latency_p99_ms: LatencyMs
    error_rate: UnitFraction
    cpu_util: UnitFraction
    rps: Annotated[float, Field(ge=0.0, le=MAX_RPS, allow_inf_nan=False)]
    sla_breached: bool = Field(description="Whether this interval breached its SLA.")


#: The hot path skips pydantic's Python wrapper: same validator, one call less per event.
_validate_json = TelemetryEvent.__pydantic_validator__.validate_json


class RejectReason(StrEnum):
    """Why a raw message went to the dead-letter topic."""

    EMPTY = "empty"
    OVERSIZE = "oversize"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    SCHEMA = "schema"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    KEY_MISMATCH = "key_mismatch"
    FUTURE_TS = "future_ts"
    #: Stamped further behind than any window holds (`kernel.time_rule`).
    PAST_TS = "past_ts"
    #: A tenant's record on another partition than the one it is bound to.
    WRONG_PARTITION = "wrong_partition"
    #: A new tenant refused: the consumer holds `max_tenants` already, or admitted
    #: `max_new_tenants_per_min` new tenants in the last minute.
    TENANT_CAPACITY = "tenant_capacity"
    #: A new tenant whose name the allow-list (`tenant_allow`) does not match.
    TENANT_NOT_ALLOWED = "tenant_not_allowed"


_RANGE_ERRORS: Final = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
)


def _reason_for(exc: ValidationError) -> RejectReason:
    types = {err["type"] for err in exc.errors(include_url=False)}
    if "json_invalid" in types:
        return RejectReason.NOT_JSON
    if "finite_number" in types:
        return RejectReason.NON_FINITE
    if types <= _RANGE_ERRORS:
        return RejectReason.OUT_OF_RANGE
    return RejectReason.SCHEMA


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<value>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)[:500]


def parse_telemetry(
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> TelemetryEvent:
    """Decode one raw `sla.telemetry` message or raise `InvalidTelemetry`.

    The key must equal the tenant so that partitioning by key keeps a tenant on one
    partition; a message that lies about its key would land beside other tenants.
    Whether its time is believed depends on the reader's clock and on the tenant's
    other events: `kernel.time_rule` judges that, after this.
    """
    if not value:
        raise InvalidTelemetry(RejectReason.EMPTY, "message has no value")
    if len(value) > max_bytes:
        raise InvalidTelemetry(
            RejectReason.OVERSIZE, f"{len(value)} bytes exceeds the limit of {max_bytes}"
        )
    try:
        event: TelemetryEvent = _validate_json(value)
    except ValidationError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as decode_exc:
            raise InvalidTelemetry(RejectReason.NOT_UTF8, str(decode_exc)[:200]) from exc
        raise InvalidTelemetry(_reason_for(exc), _summary(exc)) from exc
    if key != event.tenant.encode():
        shown = "no key" if key is None else f"key {key[:80]!r}"
        raise InvalidTelemetry(
            RejectReason.KEY_MISMATCH, f"{shown} does not equal tenant {event.tenant!r}"
        )
    return event
