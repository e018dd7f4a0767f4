"""Hostile producers, no broker: fuzz `parse_telemetry` and `IngestCore.process`.

What a producer writes to `sla.telemetry` is untrusted. These properties hold for any
key and value: the decoder raises nothing but `InvalidTelemetry`; the core never raises,
counts every record exactly once (valid or dead-lettered), dead-letters the original
bytes with a reason header, and windows an event only under the tenant of its message
key. Near-valid events (one field mutated) are checked against an oracle of what the
contract says.

Duplicate keys in a JSON object: the last occurrence wins (as in `json.loads`), the
earlier ones are ignored, and the key check applies to the winner. So a duplicate
`tenant` that differs from the message key is dead-lettered as `key_mismatch`.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.core import BatchResult, CoreConfig, IngestCore
from schemas import DeadLetter, InvalidTelemetry, RejectReason, TelemetryEvent, parse_telemetry
from schemas.telemetry import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FEATURES,
    MAX_LATENCY_MS,
    MAX_RPS,
    MAX_SERVICE_LEN,
    MAX_TS,
    MIN_TS,
)

TOPIC = "sla.telemetry"
FIELDS = ("tenant", "ts", "service", *FEATURES, "sla_breached")
UPPER: dict[str, float] = {
    "latency_p50_ms": MAX_LATENCY_MS,
    "latency_p95_ms": MAX_LATENCY_MS,
    "latency_p99_ms": MAX_LATENCY_MS,
    "error_rate": 1.0,
    "cpu_util": 1.0,
    "rps": MAX_RPS,
}
ODD_CHARS = (
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\u200b",  # zero-width space
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte order mark
    "\u0301",  # combining acute accent (NFD)
    "\u00e9",  # precomposed e-acute (NFC)
    "\u0130",  # dotted capital I (lowercases to two code points)
    "\U0001f600",  # astral: a surrogate pair once escaped
    "\x00",
    "\n",
)
SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")

FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- strategies ------------------------------------------------------------------------

slugs = st.sampled_from(["acme", "globex", "t-1", "0", "a_b", "z" * 63]) | st.from_regex(
    r"\A[a-z0-9][a-z0-9_-]{0,62}\Z"
)
utc_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
#: Times valid under any offset: a day away from `datetime`'s limits on both sides.
stamps = st.datetimes(
    min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 28), timezones=utc_offsets
)
#: Anything `datetime` can hold, with any offset: the edges are out of range in UTC.
edge_stamps = st.datetimes(timezones=utc_offsets) | st.sampled_from(
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))),
        datetime(1, 1, 2, tzinfo=UTC),
        datetime(9999, 12, 30, tzinfo=UTC),
        datetime(9999, 12, 30, 0, 0, 0, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
    ]
)
odd_text = st.text(st.sampled_from(ODD_CHARS) | st.characters(), min_size=1, max_size=12)
services = st.text(min_size=1, max_size=MAX_SERVICE_LEN) | st.builds(
    lambda c, n: c * n, st.sampled_from(ODD_CHARS) | st.characters(), st.integers(1, 300)
)


def feature_values(name: str) -> st.SearchStrategy[float]:
    return st.floats(0.0, UPPER[name])


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid `TelemetryEvent` as a JSON-ready dict."""
    event: dict[str, Any] = {
        "tenant": draw(slugs),
        "ts": draw(stamps).isoformat(),
        "service": draw(st.text(min_size=1, max_size=MAX_SERVICE_LEN)),
    }
    for name in FEATURES:
        event[name] = draw(feature_values(name))
    event["sla_breached"] = draw(st.booleans())
    return event


def dumps(obj: Any, *, ascii: bool = True) -> bytes:
    # surrogatepass: a raw lone surrogate becomes CESU bytes, which are not UTF-8.
    return json.dumps(obj, ensure_ascii=ascii).encode("utf-8", "surrogatepass")


def object_text(pairs: list[tuple[str, Any]]) -> bytes:
    """A JSON object from key/value pairs, duplicates and all."""
    body = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs)
    return ("{" + body + "}").encode()


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class Case:
    """A raw message and what the contract says must become of it."""

    key: bytes | None
    value: bytes
    #: The reason it must be refused with, or None if it must be accepted.
    reason: RejectReason | None
    #: If accepted: field values the parsed event must have.
    expect: dict[str, Any] | None = None


WRONG_TYPES: dict[str, list[Any]] = {
    "float": ["1.0", None, True, False, [], {}, [0.5], {"v": 0.5}],
    "tenant": [1, None, True, ["acme"], {"t": "acme"}],
    "ts": [1_764_000_000, 1.5, None, False, ["2026-01-01T00:00:00+00:00"], {}],
    "service": [1, None, True, ["checkout"], {}],
    "sla_breached": [0, 1, "true", "false", None, 1.0, []],
}
NUMBER_LITERALS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1" + "0" * 400,
    "-" + "1" * 400,
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "-0.0",
    "-0",
    "5e-324",
    "1e-400",
    "1.0000000000000002",
    "1E2",
    "0.1e1",
    "3600000",
    "3600000.0000001",
    "1000000000",
    "1000000001",
)


def expected_for_number(name: str, literal: str) -> RejectReason | None:
    if literal in ("NaN", "Infinity", "-Infinity"):
        return RejectReason.NON_FINITE
    number = float(literal)  # inf for literals beyond float, as the validator reads them
    if not math.isfinite(number):
        return RejectReason.NON_FINITE
    return None if 0.0 <= number <= UPPER[name] else RejectReason.OUT_OF_RANGE


@st.composite
def near_valid(draw: st.DrawFn) -> Case:
    """A valid event with exactly one thing wrong (or oddly right), and its verdict."""
    event = draw(events())
    key = event["tenant"].encode()
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "wrong_type",
                "number",
                "extra",
                "missing",
                "key",
                "tenant",
                "service",
                "ts",
                "ts_text",
                "duplicate",
            ]
        )
    )
    if kind == "valid":
        ascii = draw(st.booleans())
        return Case(key, dumps(event, ascii=ascii), None, event)
    if kind == "wrong_type":
        name = draw(st.sampled_from(FIELDS))
        group = "float" if name in FEATURES else name
        event[name] = draw(st.sampled_from(WRONG_TYPES[group]))
        reason: RejectReason | None = RejectReason.SCHEMA
        if name == "tenant":  # the key check comes after the schema: still a schema error
            key = json.dumps(event[name]).encode()
        return Case(key, dumps(event), reason)
    if kind == "number":
        name = draw(st.sampled_from(FEATURES))
        literal = draw(st.sampled_from(NUMBER_LITERALS))
        pairs = [(k, v) for k, v in event.items() if k != name] + [(name, 0.0)]
        raw = object_text(pairs)
        assert raw.endswith(b"0.0}")
        value = raw[: -len(b"0.0}")] + literal.encode() + b"}"
        reason = expected_for_number(name, literal)
        expect = {**event, name: float(literal)} if reason is None else None
        return Case(key, value, reason, expect)
    if kind == "extra":
        name = draw(st.text(max_size=20).filter(lambda n: n not in FIELDS))
        event[name] = draw(st.none() | st.booleans() | st.integers() | st.text(max_size=10))
        return Case(key, dumps(event, ascii=draw(st.booleans())), RejectReason.SCHEMA)
    if kind == "missing":
        del event[draw(st.sampled_from(FIELDS))]
        return Case(key, dumps(event), RejectReason.SCHEMA)
    if kind == "key":
        tenant = event["tenant"]
        key = draw(
            st.sampled_from(
                [
                    None,
                    b"",
                    tenant.upper().encode(),
                    tenant.encode() + b"\x00",
                    tenant.encode() + b"\n",
                    b" " + tenant.encode(),
                    (tenant + "\u200f").encode(),
                    ("\u200b" + tenant).encode(),
                    tenant.encode("utf-16"),
                ]
            ).filter(lambda b: b != tenant.encode())  # "0".upper() is still "0"
            | slugs.filter(lambda s: s != tenant).map(str.encode)
            | st.binary(max_size=80).filter(lambda b: b != tenant.encode())
        )
        return Case(key, dumps(event, ascii=draw(st.booleans())), RejectReason.KEY_MISMATCH)
    if kind == "tenant":
        base = event["tenant"]
        odd = draw(
            st.sampled_from(
                [
                    base + "\u200f",
                    "\u202e" + base,
                    base[:1] + "\u200b" + base[1:],
                    unicodedata.normalize("NFD", "caf\u00e9"),
                    "caf\u00e9",
                    base.upper() + "A",
                    "-" + base,
                    "_" + base,
                    base + "\n",
                    base + " ",
                    "a" * 64,
                    "",
                    "\u0130stanbul",
                    base + "\ud800",
                    "\udc00",
                ]
            )
            | odd_text.filter(lambda t: not t.isascii())
        )
        event["tenant"] = odd
        key = odd.encode("utf-8", "surrogatepass")  # the key agrees: the slug is the problem
        reason = RejectReason.NOT_JSON if has_surrogate(odd) else RejectReason.SCHEMA
        ascii = has_surrogate(odd) or draw(st.booleans())  # a raw surrogate is not UTF-8
        return Case(key, dumps(event, ascii=ascii), reason)
    if kind == "service":
        service = draw(
            services
            | st.sampled_from(["", "x" * MAX_SERVICE_LEN, "x" * (MAX_SERVICE_LEN + 1)])
            | st.sampled_from(SURROGATES).map(lambda s: "svc" + s)
            | st.just("\ud83d\ude00")  # an escaped surrogate pair: one astral character
        )
        event["service"] = service
        ascii = draw(st.booleans())
        value = dumps(event, ascii=ascii)
        if has_surrogate(service):
            pair = "\ud83d\ude00" in service
            if ascii:
                if pair:  # a well-formed pair decodes to its astral character
                    expect = {**event, "service": "\U0001f600"}
                    return Case(key, value, None, expect)
                return Case(key, value, RejectReason.NOT_JSON)
            return Case(key, value, RejectReason.NOT_UTF8)
        if 1 <= len(service) <= MAX_SERVICE_LEN:
            return Case(key, value, None, event)
        if len(value) > DEFAULT_MAX_MESSAGE_BYTES:
            return Case(key, value, RejectReason.OVERSIZE)
        return Case(key, value, RejectReason.SCHEMA)
    if kind == "ts":
        stamp = draw(edge_stamps)
        event["ts"] = stamp.isoformat()
        reason = None if MIN_TS <= stamp <= MAX_TS else RejectReason.OUT_OF_RANGE
        return Case(key, dumps(event), reason, event if reason is None else None)
    if kind == "ts_text":
        naive = draw(stamps).replace(tzinfo=None)
        event["ts"] = draw(
            st.sampled_from(
                [
                    naive.isoformat(),
                    naive.isoformat() + "+24:00",
                    naive.isoformat() + "+00:00:30",
                    naive.isoformat() + "+00:00\u200f",
                    naive.isoformat() + "+00:00 ",
                    "2026-02-30T00:00:00+00:00",
                    "2026-11-22T08:00:60+00:00",
                    "10000-01-01T00:00:00+00:00",
                    "0000-01-01T00:00:00+00:00",
                    "",
                ]
            )
        )
        # Year 0 parses, but falls below the bound before `datetime` could refuse it.
        year0 = event["ts"].startswith("0000-")
        reason = RejectReason.OUT_OF_RANGE if year0 else RejectReason.SCHEMA
        return Case(key, dumps(event), reason)
    # duplicate: one field twice; the winner (the last) decides, the loser is ignored.
    name = draw(st.sampled_from(FIELDS))
    if name == "tenant":
        other: Any = draw(slugs | st.just("Not A Slug") | st.integers())
    elif name == "ts":
        other = draw(edge_stamps).isoformat()
    elif name == "service":
        other = draw(st.text(max_size=MAX_SERVICE_LEN + 2))
    elif name == "sla_breached":
        other = draw(st.booleans() | st.sampled_from([0, "yes", None]))
    else:
        other = draw(st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(["1", []]))
    pairs = list(event.items())
    at = draw(st.integers(0, len(pairs)))
    pairs.insert(at, (name, other))
    winner = next(v for k, v in reversed(pairs) if k == name)
    if name == "tenant":
        key = draw(st.sampled_from([event["tenant"], other, None]))
        key = key.encode() if isinstance(key, str) else None
    collapsed = dumps(dict(pairs))
    assert json.loads(collapsed)[name] == winner
    return Case(key, object_text(pairs), _outcome_reason(key, collapsed), None)


def _outcome_reason(key: bytes | None, value: bytes) -> RejectReason | None:
    try:
        parse_telemetry(key, value)
    except InvalidTelemetry as exc:
        return exc.reason
    return None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.sampled_from(ODD_CHARS) | st.characters(), max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
#: Objects with the contract's field names and random values: near the schema's surface.
field_soups = st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, json_values))


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 12_000) | st.just(10_000))
    opener = draw(st.sampled_from(["[", '{"a":', '{"tenant":[']))
    closer = {"[": "]", '{"a":': "}", '{"tenant":[': "]}"}[opener]
    inner = draw(st.sampled_from(["", "1", '"x"', "null"]))
    text = opener * depth + inner + closer * draw(st.sampled_from([depth, 0, depth // 2]))
    return text.encode()


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid event's bytes with a byte flipped, a slice dropped, junk inserted or cut."""
    raw = bytearray(dumps(draw(events()), ascii=draw(st.booleans())))
    at = draw(st.integers(0, len(raw) - 1))
    op = draw(st.sampled_from(["flip", "drop", "insert", "cut"]))
    if op == "flip":
        raw[at] ^= draw(st.integers(1, 255))
    elif op == "drop":
        del raw[at : at + draw(st.integers(1, 16))]
    elif op == "insert":
        raw[at:at] = draw(st.binary(min_size=1, max_size=8))
    else:
        del raw[at:]
    return bytes(raw)


def long_string_event(tenant: str, n: int, char: str) -> bytes:
    event: dict[str, Any] = {
        "tenant": tenant,
        "ts": "2026-11-22T08:00:00+00:00",
        "service": char * n,
    }
    event.update({name: 0.5 for name in FEATURES})
    event["sla_breached"] = False
    return dumps(event, ascii=False)


keys = st.none() | slugs.map(str.encode) | st.binary(max_size=70)
hostile_values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"{" + b),
    field_soups.map(dumps),
    json_values.map(dumps),
    deep_nesting(),
    mangled(),
    st.builds(
        long_string_event,
        slugs,
        st.integers(0, 70_000) | st.sampled_from([MAX_SERVICE_LEN, MAX_SERVICE_LEN + 1]),
        st.sampled_from(["x", "\u200f", "\U0001f600", "\x00"]),
    ),
)


# -- the decoder -------------------------------------------------------------------------


def check_decoder(key: bytes | None, value: bytes | None, max_bytes: int) -> RejectReason | None:
    """Decode once; assert the invariants that hold for any input; return the verdict."""
    try:
        event = parse_telemetry(key, value, max_bytes=max_bytes)
    except InvalidTelemetry as exc:
        assert isinstance(exc.reason, RejectReason)
        assert isinstance(exc.detail, str) and exc.detail
        exc.detail.encode("utf-8")  # it goes into a Kafka header
        size = 0 if value is None else len(value)
        assert (exc.reason is RejectReason.EMPTY) == (size == 0)
        assert (exc.reason is RejectReason.OVERSIZE) == (0 < size and size > max_bytes)
        if value and len(value) <= max_bytes:
            assert (exc.reason is RejectReason.NOT_UTF8) == (not is_utf8(value))
        return exc.reason
    assert isinstance(event, TelemetryEvent)
    assert value is not None and 0 < len(value) <= max_bytes and is_utf8(value)
    assert key == event.tenant.encode()
    # The consumer turns event times into float timestamps and back: never an overflow.
    assert datetime.fromtimestamp(event.ts.timestamp(), UTC).year >= 1
    for name in FEATURES:
        assert 0.0 <= getattr(event, name) <= UPPER[name]
    return None


@settings(FUZZ, max_examples=300)
@given(key=keys, value=hostile_values, max_bytes=st.just(DEFAULT_MAX_MESSAGE_BYTES))
def test_decoder_raises_only_invalid_telemetry(
    key: bytes | None, value: bytes | None, max_bytes: int
) -> None:
    check_decoder(key, value, max_bytes)


@FUZZ
@given(case=near_valid())
def test_decoder_verdict_on_near_valid_events(case: Case) -> None:
    reason = check_decoder(case.key, case.value, DEFAULT_MAX_MESSAGE_BYTES)
    assert reason == case.reason, case
    if case.expect is not None:
        event = parse_telemetry(case.key, case.value)
        assert event.tenant == case.expect["tenant"]
        assert event.ts == datetime.fromisoformat(case.expect["ts"])
        assert event.service == case.expect["service"]
        assert event.sla_breached is case.expect["sla_breached"]
        for name in FEATURES:
            assert getattr(event, name) == case.expect[name]


@settings(max_examples=150, deadline=None)
@given(event=events(), dup=slugs, dup_first=st.booleans(), key_is_dup=st.booleans())
def test_duplicate_tenant_never_lands_under_another_key(
    event: dict[str, Any], dup: str, dup_first: bool, key_is_dup: bool
) -> None:
    """`{"tenant": a, ..., "tenant": b}`: b wins, and only a key equal to b is accepted."""
    pairs = list(event.items())
    pairs.insert(0 if dup_first else len(pairs), ("tenant", dup))
    winner = event["tenant"] if dup_first else dup
    key = (dup if key_is_dup else event["tenant"]).encode()
    reason = check_decoder(key, object_text(pairs), DEFAULT_MAX_MESSAGE_BYTES)
    if key == winner.encode():
        assert reason is None
        assert parse_telemetry(key, object_text(pairs)).tenant == winner
    else:
        assert reason is RejectReason.KEY_MISMATCH


@settings(max_examples=100, deadline=None)
@given(event=events(), max_bytes=st.integers(1, 500), pad=st.integers(0, 200))
def test_decoder_size_limit_is_exact(event: dict[str, Any], max_bytes: int, pad: int) -> None:
    value = dumps(event) + b" " * pad
    reason = check_decoder(event["tenant"].encode(), value, max_bytes)
    assert reason == (None if len(value) <= max_bytes else RejectReason.OVERSIZE)


@pytest.mark.parametrize("opener", ["[", '{"a":', '{"tenant":'])
@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_nesting_is_not_json_not_a_recursion_error(opener: str, depth: int) -> None:
    value = (opener * depth + "1" + ("]" if opener == "[" else "}") * depth).encode()
    with pytest.raises(InvalidTelemetry) as caught:
        parse_telemetry(b"acme", value, max_bytes=len(value))
    assert caught.value.reason is RejectReason.NOT_JSON
    # Nested inside an otherwise valid event too.
    event: dict[str, Any] = {
        "tenant": "acme",
        "ts": "2026-11-22T08:00:00+00:00",
        "service": "PLACEHOLDER",
    }
    event.update({name: 0.5 for name in FEATURES}, sla_breached=False)
    inside = dumps(event).replace(b'"PLACEHOLDER"', value)
    with pytest.raises(InvalidTelemetry) as caught:
        parse_telemetry(b"acme", inside, max_bytes=len(inside))
    assert caught.value.reason is RejectReason.NOT_JSON


# -- the core ----------------------------------------------------------------------------


def fuzz_core() -> IngestCore:
    """No evictions (count or time), so windows account for every accepted event; cold
    start requests on early, so the request path sees hostile timestamps too."""
    return IngestCore(
        CoreConfig(
            telemetry_topic=TOPIC,
            window_max_events=100_000,
            window_span_s=1e13,
            cold_start=True,
            cold_start_min_events=5,
            cold_start_min_per_class=1,
            data_drift=True,
        )
    )


def message(offset: int, key: bytes | None, value: bytes | None) -> Message:
    return Message(topic=TOPIC, partition=0, offset=offset, key=key, value=value)


def check_batch(messages: list[Message], result: BatchResult) -> dict[int, str]:
    """Batch invariants; returns the accepted offsets with their tenants."""
    assert result.valid + result.invalid == len(messages)
    assert len(result.dead_letters) == result.invalid
    accepted: dict[int, str] = {}
    refused: list[tuple[Message, RejectReason]] = []
    for msg in messages:
        try:
            accepted[msg.offset()] = parse_telemetry(msg.key(), msg.value()).tenant  # type: ignore[index]
        except InvalidTelemetry as exc:
            refused.append((msg, exc.reason))
    assert result.valid == len(accepted)
    for letter, (msg, reason) in zip(result.dead_letters, refused, strict=True):
        assert letter.key == msg.key()
        assert letter.value == msg.value()  # the original bytes, untouched
        headers = dict(letter.headers)
        assert headers["slaops.dlq.reason"] == reason.value.encode()
        envelope = DeadLetter.from_headers(letter.headers)
        assert envelope.reason is reason
        assert (envelope.source_topic, envelope.source_partition) == (TOPIC, 0)
        assert envelope.source_offset == msg.offset()
    for request in result.requests:
        assert request.tenant in accepted.values()
    return accepted


def check_windows(core: IngestCore, accepted: dict[int, str], keys: dict[int, Any]) -> None:
    """Every windowed event sits under its own tenant, which is its message key."""
    held = 0
    for state in core.tenants():
        offsets = state.window.offsets().tolist()
        held += len(offsets)
        for offset in offsets:
            assert accepted[offset] == state.tenant
            assert keys[offset] == state.tenant.encode()
        assert core.tenant(state.tenant) is state
    assert held == len(accepted)


Pair = tuple[bytes | None, bytes | None]


@st.composite
def bursts(draw: st.DrawFn) -> list[Pair]:
    """Enough events of one tenant at one (possibly edge) time to trigger a request."""
    event = draw(events())
    event["ts"] = draw(edge_stamps).isoformat()
    pairs: list[Pair] = []
    for i in range(draw(st.integers(5, 12))):
        event["sla_breached"] = i % 2 == 0
        pairs.append((event["tenant"].encode(), dumps(event)))
    return pairs


record_pairs = st.one_of(
    events().map(lambda e: (e["tenant"].encode(), dumps(e))),
    near_valid().map(lambda c: (c.key, c.value)),
    st.tuples(keys, hostile_values),
)
batches_of_pairs = st.lists(record_pairs.map(lambda p: [p]) | bursts(), max_size=12).map(
    lambda groups: [pair for group in groups for pair in group]
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(batches_of_pairs, min_size=1, max_size=3))
def test_core_counts_every_record_and_windows_only_under_its_key(
    batches: list[list[Pair]],
) -> None:
    core = fuzz_core()
    accepted: dict[int, str] = {}
    keys: dict[int, Any] = {}
    offset = 0
    for batch in batches:
        messages = []
        for key, value in batch:
            messages.append(message(offset, key, value))
            keys[offset] = key
            offset += 1
        result = core.process(messages)
        accepted.update(check_batch(messages, result))
    check_windows(core, accepted, keys)


@settings(max_examples=60, deadline=None)
@given(
    tenants=st.lists(slugs.filter(lambda s: s != "victim"), min_size=1, max_size=3, unique=True),
    n=st.integers(1, 40),
    spoof=st.sampled_from(["key", "duplicate", "both"]),
)
def test_core_spoofed_tenants_are_never_windowed(tenants: list[str], n: int, spoof: str) -> None:
    """Each tenant's events, interleaved with events claiming to be another tenant."""
    core = fuzz_core()
    messages: list[Message] = []
    accepted: dict[int, str] = {}
    keys: dict[int, Any] = {}
    victim = "victim"
    for i in range(n):
        tenant = tenants[i % len(tenants)]
        event = {
            "tenant": tenant,
            "ts": (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
            "service": "svc",
            **{name: 0.5 for name in FEATURES},
            "sla_breached": i % 2 == 0,
        }
        offset = len(messages)
        messages.append(message(offset, tenant.encode(), dumps(event)))
        keys[offset] = tenant.encode()
        accepted[offset] = tenant
        pairs = list(event.items())
        if spoof in ("duplicate", "both"):  # the last "tenant" wins
            pairs.append(("tenant", victim))
        spoof_key = (victim if spoof in ("key", "both") else tenant).encode()
        if spoof == "both":  # the duplicate and the key agree: legitimately the victim's
            accepted[len(messages)] = victim
        keys[len(messages)] = spoof_key
        messages.append(message(len(messages), spoof_key, object_text(pairs)))
    result = core.process(messages)
    assert check_batch(messages, result) == accepted
    check_windows(core, accepted, keys)
    victim_state = core.tenant(victim)
    if spoof == "both":
        assert victim_state is not None and len(victim_state.window) == n
    else:
        assert victim_state is None
        assert result.invalid == n
        assert {dict(d.headers)["slaops.dlq.reason"] for d in result.dead_letters} == {
            b"key_mismatch"
        }


# -- regressions ---------------------------------------------------------------------------


def edge_event(ts: str, breached: bool) -> bytes:
    event: dict[str, Any] = {"tenant": "acme", "ts": ts, "service": "svc"}
    event.update({name: 0.5 for name in FEATURES}, sla_breached=breached)
    return dumps(event)


@pytest.mark.parametrize(
    "ts",
    [
        "9999-12-31T23:59:59-23:59",  # year 10000 in UTC
        "9999-12-31T23:59:59.999999+00:00",  # its float timestamp rounds into year 10000
        "0001-01-01T00:00:00+23:59",  # year 0 in UTC
        "0001-01-01T12:00:00+00:00",
        "9999-12-30T00:00:00.000001+00:00",
    ],
)
def test_event_times_at_the_edge_of_datetime_are_dead_lettered(ts: str) -> None:
    """Regression: these passed the schema, then `datetime.fromtimestamp` in the core's
    retrain request (and forecast) raised, so one tenant's producer stopped the consumer,
    and again on every restart, since the batch was never committed."""
    with pytest.raises(InvalidTelemetry) as caught:
        parse_telemetry(b"acme", edge_event(ts, False))
    assert caught.value.reason is RejectReason.OUT_OF_RANGE
    core = IngestCore(CoreConfig(telemetry_topic=TOPIC, cold_start_min_events=20, data_drift=False))
    messages = [message(i, b"acme", edge_event(ts, i % 2 == 0)) for i in range(40)]
    result = core.process(messages)
    assert (result.valid, result.invalid, result.requests) == (0, 40, [])


@pytest.mark.parametrize(
    "ts", ["9999-12-30T00:00:00+00:00", "0001-01-02T00:00:00+00:00", "9999-12-29T00:00:00-23:59"]
)
def test_event_times_just_inside_the_edge_are_accepted_and_requested(ts: str) -> None:
    core = IngestCore(CoreConfig(telemetry_topic=TOPIC, cold_start_min_events=20, data_drift=False))
    messages = [message(i, b"acme", edge_event(ts, i % 2 == 0)) for i in range(40)]
    result = core.process(messages)
    assert (result.valid, result.invalid) == (40, 0)
    assert [r.reason for r in result.requests] == ["cold_start"]
    assert result.requests[0].detected_at == datetime.fromisoformat(ts)
