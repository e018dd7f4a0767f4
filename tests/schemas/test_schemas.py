"""The contracts: every kind of bad telemetry is refused with the right reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import (
    EXPORTED,
    DeadLetter,
    InvalidTelemetry,
    RejectReason,
    RetrainRequested,
    TelemetryEvent,
    parse_telemetry,
    retrain_event_id,
)
from schemas.export import render
from testkit.paths import ROOT

GOOD = {
    "tenant": "acme-eu_1",
    "ts": "2026-11-22T08:00:00+01:00",
    "service": "checkout",
    "latency_p50_ms": 12.5,
    "latency_p95_ms": 40,
    "latency_p99_ms": 90.0,
    "error_rate": 0.01,
    "cpu_util": 0.4,
    "rps": 250.0,
    "sla_breached": False,
}


def encode(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def reason_of(key: bytes | None, value: bytes | None, **kwargs: int) -> RejectReason:
    with pytest.raises(InvalidTelemetry) as info:
        parse_telemetry(key, value, **kwargs)
    return info.value.reason


def test_valid_event_parses_with_offset_preserved() -> None:
    event = parse_telemetry(b"acme-eu_1", encode())
    assert event.tenant == "acme-eu_1"
    assert event.ts.utcoffset() is not None and event.ts.utcoffset().total_seconds() == 3600  # type: ignore[union-attr]
    assert event.latency_p95_ms == 40.0 and event.sla_breached is False


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", RejectReason.EMPTY),
        (None, RejectReason.EMPTY),
        (b"\xff\xfe\x00{", RejectReason.NOT_UTF8),
        (b"{not json", RejectReason.NOT_JSON),
        (b"[1, 2]", RejectReason.SCHEMA),
        (b'"just a string"', RejectReason.SCHEMA),
        (encode(ts="2026-11-22T08:00:00"), RejectReason.SCHEMA),  # naive time
        (encode(ts="yesterday"), RejectReason.SCHEMA),
        (encode(ts=1_700_000_000), RejectReason.SCHEMA),  # not RFC 3339
        (encode(extra_field=1), RejectReason.SCHEMA),
        (encode(sla_breached="yes"), RejectReason.SCHEMA),
        (encode(sla_breached=1), RejectReason.SCHEMA),
        (encode(rps="250"), RejectReason.SCHEMA),
        (encode(service=""), RejectReason.SCHEMA),
        (encode(service="s" * 129), RejectReason.SCHEMA),
        (encode(latency_p99_ms=-1.0), RejectReason.OUT_OF_RANGE),
        (encode(latency_p99_ms=3_600_001.0), RejectReason.OUT_OF_RANGE),
        (encode(cpu_util=1.5), RejectReason.OUT_OF_RANGE),
        (encode(error_rate=-0.1), RejectReason.OUT_OF_RANGE),
        (encode(rps=2e9), RejectReason.OUT_OF_RANGE),
        (encode().replace(b"250.0", b"NaN"), RejectReason.NON_FINITE),
        (encode().replace(b"250.0", b"Infinity"), RejectReason.NON_FINITE),
        (encode().replace(b"250.0", b"-Infinity"), RejectReason.NON_FINITE),
        (encode().replace(b"250.0", b"1e999"), RejectReason.NON_FINITE),
    ],
)
def test_bad_values_are_refused_with_their_reason(
    value: bytes | None, reason: RejectReason
) -> None:
    assert reason_of(b"acme-eu_1", value) == reason


def test_missing_field_is_a_schema_error() -> None:
    event = dict(GOOD)
    del event["rps"]
    assert reason_of(b"acme-eu_1", json.dumps(event).encode()) == RejectReason.SCHEMA


@pytest.mark.parametrize(
    "slug",
    ["Acme", "-acme", "_acme", "", "a" * 64, "acmé", "аcme", "acme\n", "ac me", "ac/me", "😀"],
)
def test_bad_tenant_slugs_are_refused(slug: str) -> None:
    value = encode(tenant=slug)
    assert reason_of(slug.encode(), value) == RejectReason.SCHEMA


def test_longest_legal_slug_is_accepted() -> None:
    slug = "a" + "b" * 62
    assert parse_telemetry(slug.encode(), encode(tenant=slug)).tenant == slug


@pytest.mark.parametrize("key", [None, b"other", b"ACME-EU_1", b"acme-eu_1 "])
def test_key_must_equal_tenant(key: bytes | None) -> None:
    assert reason_of(key, encode()) == RejectReason.KEY_MISMATCH


def test_oversize_is_refused_before_parsing() -> None:
    value = b"{" + b" " * 70_000 + b"}"  # not even JSON: size is checked first
    assert reason_of(b"acme-eu_1", value) == RejectReason.OVERSIZE
    assert reason_of(b"acme-eu_1", encode(), max_bytes=50) == RejectReason.OVERSIZE


def test_duplicated_keys_and_deep_nesting_do_not_crash() -> None:
    dup = encode()[:-1] + b', "rps": -5}'
    assert reason_of(b"acme-eu_1", dup) == RejectReason.OUT_OF_RANGE
    deep = b"[" * 5000 + b"]" * 5000
    assert reason_of(b"acme-eu_1", deep) in {RejectReason.NOT_JSON, RejectReason.SCHEMA}


@pytest.mark.parametrize(("stem", "model"), sorted(EXPORTED.items()))
def test_exported_schema_files_match_models(stem: str, model: type) -> None:
    path = ROOT / "schemas" / f"{stem}.schema.json"
    assert path.read_text() == render(model), f"run `python -m schemas.export` to refresh {path}"


def test_telemetry_schema_lists_exactly_the_contract_fields() -> None:
    schema = TelemetryEvent.model_json_schema()
    assert set(schema["properties"]) == set(GOOD)
    assert set(schema["required"]) == set(GOOD)
    assert schema["additionalProperties"] is False


def test_event_id_is_deterministic_and_sensitive_to_each_input() -> None:
    base = retrain_event_id("acme", "data_drift", "sla.telemetry", 3, 1200)
    assert base == retrain_event_id("acme", "data_drift", "sla.telemetry", 3, 1200)
    assert len(base) == 32 and int(base, 16) >= 0
    others = {
        retrain_event_id("acme2", "data_drift", "sla.telemetry", 3, 1200),
        retrain_event_id("acme", "cold_start", "sla.telemetry", 3, 1200),
        retrain_event_id("acme", "data_drift", "other", 3, 1200),
        retrain_event_id("acme", "data_drift", "sla.telemetry", 4, 1200),
        retrain_event_id("acme", "data_drift", "sla.telemetry", 3, 1201),
    }
    assert base not in others and len(others) == 5


def test_retrain_request_round_trips_and_needs_a_source() -> None:
    request = RetrainRequested(
        event_id=retrain_event_id("acme", "manual", "sla.telemetry", 0, 5),
        tenant="acme",
        reason="manual",
        detector="manual",
        detected_at=datetime(2026, 11, 22, tzinfo=UTC),
        source=[{"topic": "sla.telemetry", "partition": 0, "start_offset": 0, "end_offset": 6}],  # type: ignore[list-item]
        n_events=6,
    )
    assert RetrainRequested.model_validate_json(request.model_dump_json()) == request
    with pytest.raises(ValueError, match="source"):
        RetrainRequested.model_validate({**request.model_dump(), "source": []})


def test_dead_letter_round_trips_through_headers() -> None:
    letter = DeadLetter(
        reason=RejectReason.NON_FINITE,
        detail="rps: Input should be a finite number",
        source_topic="sla.telemetry",
        source_partition=2,
        source_offset=41,
        failed_at=datetime(2026, 11, 22, tzinfo=UTC),
    )
    headers = [("trace-id", b"abc"), *letter.to_headers()]
    assert DeadLetter.from_headers(headers) == letter
