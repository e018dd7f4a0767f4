"""`sla.forecasts` is a contract: the core's hand-made JSON is a valid `Forecast`, always.

The consumer core formats each forecast by hand (a per-block prefix, vectorised time
stamps) because `json.dumps` per event would cost more than the forecast. These tests
hold that output to the pydantic model and to the exported JSON Schema, and check the
non-finite case: a NaN forecast is never published (it would be invalid JSON) nor
scored (it made the performance monitor raise).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from consumer.core import BatchResult, CoreConfig, IngestCore
from consumer.forecasting import probability_texts
from schemas import Forecast
from schemas.export import SCHEMA_DIR
from testkit.streams import RawRecord, telemetry_values
from testkit.tiny_models import tiny_live_model

SCHEMA = json.loads((SCHEMA_DIR / "forecast.schema.json").read_text())
_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}


def strict_json(raw: bytes) -> dict[str, Any]:
    """Parse as strict JSON: NaN, Infinity and -Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    value = json.loads(raw, parse_constant=refuse)
    assert isinstance(value, dict)
    return value


def schema_problems(value: dict[str, Any], schema: dict[str, Any] = SCHEMA) -> list[str]:
    """The flat object schema's rules (keys, types, bounds, patterns, formats) on `value`."""
    problems = []
    properties = schema["properties"]
    missing = set(schema.get("required", [])) - set(value)
    extra = set(value) - set(properties) if schema.get("additionalProperties") is False else set()
    problems += [f"missing {name}" for name in sorted(missing)]
    problems += [f"unexpected {name}" for name in sorted(extra)]
    for name, rule in properties.items():
        if name not in value:
            continue
        item = value[name]
        expected = _JSON_TYPES[rule["type"]]
        if isinstance(item, bool) and rule["type"] != "boolean" or not isinstance(item, expected):
            problems.append(f"{name}: {item!r} is not {rule['type']}")
            continue
        if "minimum" in rule and item < rule["minimum"]:
            problems.append(f"{name}: {item!r} < {rule['minimum']}")
        if "maximum" in rule and item > rule["maximum"]:
            problems.append(f"{name}: {item!r} > {rule['maximum']}")
        if "maxLength" in rule and len(item) > rule["maxLength"]:
            problems.append(f"{name}: longer than {rule['maxLength']}")
        if "pattern" in rule and not re.search(rule["pattern"], item):
            problems.append(f"{name}: {item!r} does not match {rule['pattern']}")
        if rule.get("format") == "date-time":
            parsed = datetime.fromisoformat(item.replace("Z", "+00:00"))
            if parsed.utcoffset() is None:
                problems.append(f"{name}: {item!r} has no offset")
    return problems


def records(tenant: str, values: list[bytes], partition: int = 0) -> list[RawRecord]:
    return [RawRecord(tenant.encode(), v, partition, i) for i, v in enumerate(values)]


def with_fractional_seconds(values: list[bytes]) -> list[bytes]:
    """The same events stamped 0.25 s past each minute (forecast stamps get microseconds)."""
    out = []
    for raw in values:
        event = json.loads(raw)
        ts = datetime.fromisoformat(event["ts"]) + timedelta(milliseconds=250)
        out.append(json.dumps({**event, "ts": ts.isoformat()}).encode())
    return out


def forecasting_core() -> IngestCore:
    return IngestCore(CoreConfig(cold_start=False, data_drift=False, publish_forecasts=True))


def test_the_schema_file_is_the_forecast_model() -> None:
    assert SCHEMA == Forecast.model_json_schema(mode="validation")
    assert SCHEMA["additionalProperties"] is False
    assert set(SCHEMA["required"]) == set(Forecast.model_fields)


@pytest.mark.parametrize("fractional", [False, True], ids=["whole-seconds", "microseconds"])
def test_every_hand_made_forecast_is_a_valid_forecast(fractional: bool) -> None:
    core = forecasting_core()
    core.apply_model(tiny_live_model("acme", threshold=0.3))
    values = telemetry_values("acme", 300, seed=4)
    if fractional:
        values = with_fractional_seconds(values)
    result = BatchResult()
    for start in range(0, 300, 70):  # several batches: prefixes and pending forecasts
        batch = core.process(records("acme", values)[start : start + 70])
        result.forecasts += batch.forecasts
    assert len(result.forecasts) == 300
    breached = [json.loads(v)["sla_breached"] for v in values]
    for index, (key, value) in enumerate(result.forecasts):
        assert key == b"acme"
        parsed = strict_json(value)
        assert schema_problems(parsed) == [], value
        forecast = Forecast.model_validate_json(value)
        assert forecast.tenant == "acme" and forecast.horizon == 1
        # The warning is on: quiet (no breach in the last 12 events) and p >= threshold.
        quiet = not any(breached[max(0, index - 11) : index + 1])
        assert forecast.breach_expected == (quiet and forecast.probability >= 0.3)
    first = Forecast.model_validate_json(result.forecasts[0][1])
    sent = datetime.fromisoformat(json.loads(values[0])["ts"]).astimezone(UTC)
    assert first.ts == sent


def test_the_schema_check_catches_what_the_contract_forbids() -> None:
    good = strict_json(forecasting_forecast())
    assert schema_problems(good) == []
    assert schema_problems({**good, "probability": 1.5}) == ["probability: 1.5 > 1.0"]
    assert schema_problems({**good, "extra": 1}) == ["unexpected extra"]
    with pytest.raises(ValueError, match="not JSON: NaN"):
        strict_json(b'{"probability": NaN}')


def forecasting_forecast() -> bytes:
    core = forecasting_core()
    core.apply_model(tiny_live_model("acme"))
    result = core.process(records("acme", telemetry_values("acme", 3, seed=1)))
    return result.forecasts[0][1]


def test_a_non_finite_forecast_is_neither_published_nor_scored() -> None:
    core = forecasting_core()
    core.apply_model(tiny_live_model("sane"))
    core.apply_model(tiny_live_model("broken", poisoned=True))
    recs = records("sane", telemetry_values("sane", 200, seed=2))
    recs += [
        RawRecord(b"broken", v, 1, i) for i, v in enumerate(telemetry_values("broken", 200, seed=3))
    ]
    made = scored = non_finite = 0
    published: list[bytes] = []
    for start in range(0, len(recs), 50):
        result = core.process(recs[start : start + 50])  # never raises
        published += [value for _key, value in result.forecasts]
        made += result.forecasts_made
        scored += result.forecasts_scored
        non_finite += result.forecasts_non_finite
    assert non_finite == 200
    assert made == len(published) == 200
    assert scored == 199  # the sane tenant's, the last one still pending
    assert {Forecast.model_validate_json(v).tenant for v in published} == {"sane"}
    assert all(schema_problems(strict_json(v)) == [] for v in published)


def test_a_batch_of_tenants_is_encoded_each_with_its_own_prefix_and_time_unit() -> None:
    """One encoder pass over many tenants' blocks: each record carries its own tenant,
    model and stamp, in block order; a block with fractional seconds has microseconds,
    a whole-second block in the same batch has none."""
    core = forecasting_core()
    names = ["acme", "beta", "zeta"]
    for name in names:
        core.apply_model(tiny_live_model(name, threshold=0.3))
    values = {
        "acme": telemetry_values("acme", 120, seed=1),
        "beta": with_fractional_seconds(telemetry_values("beta", 120, seed=2)),
        "zeta": telemetry_values("zeta", 120, seed=3),
    }
    mixed = [
        RawRecord(name.encode(), values[name][i], 0, 3 * i + n)
        for i in range(120)
        for n, name in enumerate(names)
    ]
    forecasts = []
    for start in range(0, len(mixed), 90):
        forecasts += core.process(mixed[start : start + 90]).forecasts
    assert len(forecasts) == 360
    seen: dict[str, list[datetime]] = {name: [] for name in names}
    for key, value in forecasts:
        parsed = strict_json(value)
        assert schema_problems(parsed) == [], value
        forecast = Forecast.model_validate_json(value)
        assert key == forecast.tenant.encode()
        fractional = forecast.tenant == "beta"
        assert ("." in parsed["ts"]) == fractional, parsed["ts"]
        seen[forecast.tenant].append(forecast.ts)
    for name in names:
        sent = [datetime.fromisoformat(json.loads(v)["ts"]).astimezone(UTC) for v in values[name]]
        assert seen[name] == sent


def test_probabilities_are_written_as_json_writes_them_for_every_millionth() -> None:
    """Every value a rounded probability can take (k / 10**6), and random ones rounded
    as the encoder rounds them: the text is `json.dumps`'s (the float's repr)."""
    every = np.arange(1_000_001) / 1e6
    assert probability_texts(every) == [json.dumps(v) for v in every.tolist()]
    rounded = np.round(np.random.default_rng(0).random(20_000) ** 3, 6)
    texts = probability_texts(rounded)
    assert texts == [json.dumps(v) for v in rounded.tolist()]
    assert "1e-06" in probability_texts(np.array([1e-6])) and texts[0].startswith("0.")
