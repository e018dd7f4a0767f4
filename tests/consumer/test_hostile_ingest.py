"""Issue 11, items 4, 7 and 8: a hostile writer on the ingest side, attack by attack.

Each test performs the attack and asserts the outcome: refused with a reason, nothing
lost, the tenant keeps working, and no secret or control character reaches an output.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from consumer.checkpoint import (
    MAX_CHECKPOINT_BYTES,
    CheckpointLog,
    PartitionCheckpoint,
    choose_replay_from,
    read_checkpoint,
)
from consumer.core import CoreConfig, IngestCore
from consumer.main import core_config
from consumer.service import ConsumerService, ServiceClients, ServiceConfig
from consumer.settings import ConsumerSettings
from consumer.window import TenantWindow
from kernel.errors import ConfigError
from kernel.kafka import make_producer
from kernel.settings import ServiceSettings, StoreSettings
from schemas import DeadLetter, InvalidTelemetry, RejectReason, RetrainFailed, parse_telemetry
from slaops import watch as watch_module
from slaops.cli import main
from testkit.streams import START, RawRecord, telemetry_values

TOPIC = "sla.telemetry"
STRONG_KEY = "k7Q2x9Lm" * 4


@dataclass(frozen=True, slots=True)
class HeaderRecord(RawRecord):
    """A raw record that also carries producer headers."""

    headers_: list[tuple[str, bytes]] = field(default_factory=list)

    def headers(self) -> list[tuple[str, bytes]]:  # type: ignore[override]
        return self.headers_


def _event(tenant: str, ts: Any) -> bytes:
    return json.dumps(
        {
            "tenant": tenant,
            "ts": ts,
            "service": "api",
            "latency_p50_ms": 40.0,
            "latency_p95_ms": 80.0,
            "latency_p99_ms": 120.0,
            "error_rate": 0.01,
            "cpu_util": 0.5,
            "rps": 200.0,
            "sla_breached": False,
        }
    ).encode()


def _cold_start_core() -> IngestCore:
    return IngestCore(
        CoreConfig(
            telemetry_topic=TOPIC,
            window_max_events=1_000,
            cold_start=True,
            cold_start_min_events=100,
            cold_start_min_per_class=3,
            data_drift=False,
            cooldown_s=3_600.0,
        )
    )


# -- item 4: one far-future timestamp --------------------------------------------------
FAR_FUTURE = "9999-12-29T00:00:00+00:00"


def test_a_far_future_event_is_dead_lettered_and_the_tenant_keeps_its_window() -> None:
    core = _cold_start_core()
    good = telemetry_values("acme", 300, seed=4)
    stream = [*good[:50], _event("acme", FAR_FUTURE), *good[50:]]
    recs = [RawRecord(b"acme", v, 0, i) for i, v in enumerate(stream)]
    now = (START + timedelta(hours=6)).timestamp()  # all 300 real events are in the past
    requests = []
    letters = []
    for lo in range(0, len(recs), 64):
        result = core.process(recs[lo : lo + 64], now=now)
        requests += result.requests
        letters += result.dead_letters
    assert len(letters) == 1
    letter = DeadLetter.from_headers(letters[0].headers)
    assert letter.reason is RejectReason.FUTURE_TS and letter.source_offset == 50
    assert "9999-12-29" in letter.detail
    assert letter.failed_at == datetime.fromtimestamp(now, UTC)  # the injected clock
    state = core.tenant("acme")
    assert state is not None and len(state.window) == 300  # nothing real was lost
    assert state.window.newest_ts == pytest.approx(good_ts(good[-1]))
    # Trainable cold starts naming the real history (a second once the first times
    # out unanswered); no one-event requests.
    assert requests and {r.reason for r in requests} == {"cold_start"}
    assert min(r.n_events for r in requests) >= 100


def good_ts(value: bytes) -> float:
    return datetime.fromisoformat(json.loads(value)["ts"]).timestamp()


def test_the_future_bound_is_the_setting_and_the_clock_not_the_system_time() -> None:
    config = core_config(ConsumerSettings(max_future_s=60))
    assert config.max_future_s == 60
    core = IngestCore(config)
    now = START.timestamp()
    recs = [
        RawRecord(b"acme", _event("acme", (START + timedelta(seconds=60)).isoformat()), 0, 0),
        RawRecord(b"acme", _event("acme", (START + timedelta(seconds=61)).isoformat()), 0, 1),
    ]
    result = core.process(recs, now=now)
    assert result.valid == 1 and result.invalid == 1
    assert DeadLetter.from_headers(result.dead_letters[0].headers).source_offset == 1
    assert result.dead_letters[0].reason is RejectReason.FUTURE_TS


def test_the_service_bounds_event_time_by_its_injected_clock() -> None:
    class Tracker:
        def produce(self, topic: str, **kwargs: Any) -> None:
            produced.append((topic, kwargs))

        def wait(self, timeout_s: float | None = None) -> None:
            pass

    class Checkpoints:
        def write(self, *args: Any) -> None:
            pass

    class Consumer:
        def commit(self, **kwargs: Any) -> None:
            pass

    produced: list[tuple[str, dict[str, Any]]] = []
    service = ConsumerService(
        core=IngestCore(CoreConfig(telemetry_topic=TOPIC, cold_start=False)),
        clients=ServiceClients(
            consumer=Consumer(),  # type: ignore[arg-type]
            tracker=Tracker(),  # type: ignore[arg-type]
            checkpoints=Checkpoints(),  # type: ignore[arg-type]
        ),
        config=ServiceConfig(
            telemetry_topic=TOPIC,
            dlq_topic="dlq",
            retrain_topic="retrain",
            batch_size=10,
            poll_timeout_s=0.1,
        ),
        clock=lambda: START.timestamp(),
    )
    ahead = (START + timedelta(hours=1)).isoformat()
    result = service.handle_batch([RawRecord(b"acme", _event("acme", ahead), 0, 0)])
    assert result.invalid == 1
    (topic, kwargs), *_ = produced
    assert topic == "dlq"
    assert DeadLetter.from_headers(kwargs["headers"]).reason is RejectReason.FUTURE_TS


def test_one_bad_stamp_cannot_expire_a_window_for_good() -> None:
    day = 86_400.0
    now = 100 * day
    window = TenantWindow(capacity=100, span_s=day, n_features=1)
    # Even if a far-future stamp gets in, it moves the window's time no further than
    # the caller's bound, and the real events after it stay.
    window.extend([now - 10, 253_402_041_600.0], [[0], [0]], [0, 0], [0, 1], max_ts=now + 300)
    window.extend([now - 5, now - 4], [[0], [0]], [0, 0], [2, 3], max_ts=now + 300)
    assert len(window) == 4 and window.newest_ts == now + 300
    # A window poisoned before the bound existed recovers at its next block.
    poisoned = TenantWindow(capacity=100, span_s=day, n_features=1)
    poisoned.extend([253_402_041_600.0], [[0]], [0], [0])
    poisoned.extend([now - 1], [[0]], [0], [1], max_ts=now + 300)
    poisoned.extend([now], [[0]], [0], [2], max_ts=now + 300)
    assert poisoned.offsets().tolist() == [0, 1, 2]
    assert poisoned.newest_ts == now + 300


# -- item 7: forged checkpoints --------------------------------------------------------
def _checkpoint(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "topic": TOPIC,
        "partition": 0,
        "committed_offset": 1_000,
        "replay_from": 400,
        "previous": None,
    }
    return json.dumps(base | fields).encode()


@pytest.mark.parametrize(
    "forged",
    [
        _checkpoint(replay_from=-1),  # -1: the END of the partition on Apache Kafka
        _checkpoint(replay_from=-2),
        _checkpoint(committed_offset=-1, replay_from=-1),
        _checkpoint(replay_from=5_000),  # after the commit: the gap would be skipped
        _checkpoint(previous=[1_000, -1]),
        _checkpoint(previous=[10, 20]),
        _checkpoint(replay_from=2**63),
        _checkpoint(replay_from="400"),
        _checkpoint(replay_from=True),
        _checkpoint(partition=-1),
        _checkpoint(partition=7),  # keyed for partition 0, names another
        _checkpoint(topic="another.topic"),
        _checkpoint(topic=""),
        _checkpoint(extra="x"),
        _checkpoint(previous=[1, 2, 3]),
        b'{"topic": "sla.telemetry", "padding": "' + b"x" * MAX_CHECKPOINT_BYTES + b'"}',
        b"\xff\xfe",
    ],
)
def test_a_forged_checkpoint_is_refused(forged: bytes, caplog: pytest.LogCaptureFixture) -> None:
    assert read_checkpoint(forged, TOPIC, 0) is None
    assert "ignoring" in caplog.text
    # With no usable checkpoint the partition replays from its commit: nothing skipped.
    assert choose_replay_from(None, 1_000) == 1_000


def test_a_valid_checkpoint_still_reads() -> None:
    checkpoint = read_checkpoint(_checkpoint(previous=[900, 300]), TOPIC, 0)
    assert checkpoint == PartitionCheckpoint(
        topic=TOPIC, partition=0, committed_offset=1_000, replay_from=400, previous=(900, 300)
    )
    assert choose_replay_from(checkpoint, 1_000) == 400


def test_a_forged_checkpoint_after_a_real_one_leaves_the_real_one_in_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read through `CheckpointLog.read_latest`, the newest record being the forgery."""
    key = f"slaops-consumer|{TOPIC}|0".encode()
    log_records = [(key, _checkpoint()), (key, _checkpoint(replay_from=-1))]

    @dataclass
    class Message:
        key_: bytes
        value_: bytes | None
        offset_: int

        def key(self) -> bytes:
            return self.key_

        def value(self) -> bytes | None:
            return self.value_

        def offset(self) -> int:
            return self.offset_

        def partition(self) -> int:
            return 0

        def error(self) -> None:
            return None

    sentinel_offset = len(log_records)
    messages = [Message(k, v, i) for i, (k, v) in enumerate(log_records)]
    messages.append(Message(b"slaops-consumer|sentinel|x", None, sentinel_offset))

    class Reader:
        def assign(self, _partitions: Any) -> None:
            pass

        def consume(self, _n: int, _timeout: float) -> list[Message]:
            out = list(messages)
            messages.clear()
            return out

        def close(self) -> None:
            pass

    class Producer:
        def produce(self, *_args: Any, on_delivery: Any, **_kwargs: Any) -> None:
            on_delivery(None, Message(b"", None, sentinel_offset))

        def flush(self, _timeout: float) -> None:
            pass

    class Tracker:
        producer = Producer()

    monkeypatch.setattr("consumer.checkpoint.make_reader", lambda *_a, **_k: Reader())
    checkpoints = CheckpointLog(
        topic="slaops.consumer.checkpoints",
        group_id="slaops-consumer",
        tracker=Tracker(),  # type: ignore[arg-type]
        reader_config={},
    )
    latest = checkpoints.read_latest(TOPIC, [0])
    assert latest[0].replay_from == 400
    assert choose_replay_from(latest[0], 1_000) == 400


# -- item 8: smaller -------------------------------------------------------------------
SECRET = "hunter2-SASL-secret-do-not-print"  # noqa: S105 (a stand-in)


@pytest.mark.parametrize(
    "properties",
    [
        {"security.protocol": SECRET},
        {"sasl.password.typo": SECRET},
        {"queue.buffering.max.messages": SECRET},
    ],
)
def test_a_refused_librdkafka_property_is_reported_without_its_value(
    properties: dict[str, str],
) -> None:
    settings = ServiceSettings(
        bootstrap_servers="127.0.0.1:1",
        kafka_properties={k: SecretStr(v) for k, v in properties.items()},
    )
    with pytest.raises(ConfigError) as caught:
        make_producer(settings)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "kafka_properties" in str(caught.value)


def test_a_refused_librdkafka_property_exits_cleanly_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "consume",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--store",
            f"file://{tmp_path}",
            "--tenant-key",
            STRONG_KEY,
            "--kafka-properties",
            json.dumps({"security.protocol": SECRET}),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert "security.protocol" in captured.err
    assert SECRET not in captured.err + captured.out
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    "weak", [" " * 16, " " * 64, "a" * 32, "ab" * 16, "\t\n" * 20, "abcdefg" + " " * 20]
)
def test_a_tenant_key_without_entropy_is_refused(weak: str) -> None:
    settings = StoreSettings(tenant_key=SecretStr(weak))
    with pytest.raises(ConfigError, match="random secret") as caught:
        settings.tenant_secret()
    assert weak not in str(caught.value) or not weak.strip()


def test_a_random_tenant_key_is_accepted() -> None:
    settings = StoreSettings(tenant_key=SecretStr(STRONG_KEY))
    assert settings.tenant_secret().get_secret_value() == STRONG_KEY


def test_watch_escapes_control_characters_of_a_forged_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forged = RetrainFailed(
        request_event_id=None,
        tenant=None,
        reason="invalid_request",
        detail="ok\n\x1b[2J\x1b]0;pwned\x07MODEL    acme v99 published\r\u202e",
        failed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    @dataclass
    class Message:
        def topic(self) -> str:
            return "sla.retrain.failures"

        def value(self) -> bytes:
            return forged.model_dump_json().encode()

        def error(self) -> None:
            return None

    class Metadata:
        topics = {"sla.retrain.failures": type("T", (), {"partitions": {0: None}})()}

    class Reader:
        def list_topics(self, timeout: float) -> Metadata:
            return Metadata()

        def incremental_assign(self, _partitions: Any) -> None:
            pass

        def consume(self, _n: int, _timeout: float) -> list[Message]:
            return [Message()]

        def close(self) -> None:
            pass

    monkeypatch.setattr(watch_module, "make_reader", lambda *_a, **_k: Reader())
    out = io.StringIO()
    settings = watch_module.WatchSettings(
        bootstrap_servers="127.0.0.1:1",
        requests=True,
        failures_topic="sla.retrain.failures",
        max_events=1,
    )
    assert watch_module.watch(settings, threading.Event(), out) == 0
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, whatever it says
    assert not any(ord(c) < 32 and c != "\n" for c in text)
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text and "\\n" in text


def test_producer_supplied_dlq_headers_are_dropped_when_dead_lettering() -> None:
    core = IngestCore(CoreConfig(telemetry_topic=TOPIC, cold_start=False))
    record = HeaderRecord(
        b"acme",
        b"{oops",
        3,
        17,
        headers_=[
            ("slaops.dlq.reason", b"empty"),
            ("SLAOPS.DLQ.source_offset", b"0"),
            ("slaops.dlq.detail", b"all fine, ignore"),
            ("traceparent", b"00-abc-def-01"),
        ],
    )
    result = core.process([record], now=START.timestamp())
    (letter,) = result.dead_letters
    names = [name for name, _ in letter.headers]
    assert names[0] == "traceparent"  # the producer's own headers travel on
    assert sum(n.lower().startswith("slaops.dlq.") for n in names) == len(names) - 1
    assert len(set(names)) == len(names)  # one of each real header, no forged twin
    parsed = DeadLetter.from_headers(letter.headers)
    assert parsed.reason is RejectReason.NOT_JSON and parsed.source_offset == 17


@pytest.mark.parametrize("ts", ["1700000000", "1700000000.5", 1700000000, "  1700000000"])
def test_a_timestamp_as_a_bare_number_is_refused(ts: Any) -> None:
    with pytest.raises(InvalidTelemetry) as caught:
        parse_telemetry(b"acme", _event("acme", ts))
    assert caught.value.reason is RejectReason.SCHEMA
    assert "RFC 3339" in caught.value.detail or "datetime" in caught.value.detail


def test_rfc3339_timestamps_still_parse() -> None:
    for ts in ("2026-01-05T10:00:00Z", "2026-01-05T10:00:00.250+02:00", "2026-01-05 10:00:00Z"):
        event = parse_telemetry(b"acme", _event("acme", ts))
        assert event.ts.tzinfo is not None
    assert np.isfinite(event.ts.timestamp())


def test_a_flood_of_protected_junk_tenants_cannot_evict_a_real_tenants_window() -> None:
    """Junk with 16 events each (past probation) and one-event junk keys between a new
    tenant's events: the real tenants keep their windows and the newcomer keeps growing."""
    core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry", max_tenants=50, cold_start=False))
    clock = START.timestamp() + 700 * 60
    real = telemetry_values("real", 600, seed=1)
    core.process([RawRecord(b"real", value, 0, i) for i, value in enumerate(real)], now=clock)
    newbie = telemetry_values("newbie", 40, seed=2)
    refused = 0
    for k in range(40):
        junk = [
            RawRecord(f"junk-{k}".encode(), value, 1, 100 * k + j)
            for j, value in enumerate(telemetry_values(f"junk-{k}", 16, seed=k))
        ]
        flood = [RawRecord(f"one-{k}".encode(), telemetry_values(f"one-{k}", 1, seed=k)[0], 1, 9)]
        result = core.process([*junk, RawRecord(b"newbie", newbie[k], 2, k), *flood], now=clock + k)
        refused += sum(d.reason is RejectReason.TENANT_CAPACITY for d in result.dead_letters)
    held, grown = core.tenant("real"), core.tenant("newbie")
    assert held is not None and len(held.window) == 600  # the real window survived
    assert grown is not None and len(grown.window) == 40  # one-event junk never reset it
    assert len(core) == 50 and refused > 0  # the bound holds: newcomers were refused
