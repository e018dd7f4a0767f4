"""`slaops consume` against a real Kafka-protocol broker on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from consumer.main import topic_specs
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from schemas import DeadLetter, RetrainRequested
from testkit.consumer_runs import BAD_RECORDS, running, telemetry
from testkit.kafka_helpers import committed as kafka_committed
from testkit.kafka_helpers import message_headers, produce_all, read_topic, wait_for
from testkit.ports import free_port

pytestmark = pytest.mark.integration
PARTITIONS = 2


@pytest.fixture
def settings(consumer_settings: Callable[..., ConsumerSettings]) -> ConsumerSettings:
    settings = consumer_settings(
        telemetry_partitions=PARTITIONS,
        session_timeout_ms=6_000,
        poll_timeout_s=0.1,
        batch_size=700,
        window_max_events=1_000,
        cold_start=False,
        follow_models=False,
    )
    ensure_topics(settings, topic_specs(settings))
    return settings


def requests_in(settings: ConsumerSettings, expect: int) -> list[RetrainRequested]:
    messages = read_topic(
        settings.bootstrap_servers or "",
        settings.retrain_topic,
        expect=expect,
        partitions=PARTITIONS,
    )
    return [RetrainRequested.model_validate_json(m.value() or b"") for m in messages]


def committed(settings: ConsumerSettings) -> int:
    bootstrap, topic = settings.bootstrap_servers or "", settings.telemetry_topic
    return sum(kafka_committed(bootstrap, settings.group_id, topic, PARTITIONS).values())


def test_mixed_stream_dead_letters_bad_records_and_requests_retraining_for_drift(
    settings: ConsumerSettings,
) -> None:
    good = telemetry(2_000)
    stream: list[tuple[bytes | None, bytes | None]] = list(good)
    for i, (key, value, _reason) in enumerate(BAD_RECORDS):
        stream.insert(500 + i * 700, (key, value))
    total = produce_all(settings.bootstrap_servers or "", settings.telemetry_topic, stream)
    with running(settings) as service:
        wait_for(
            lambda: service.stats.valid + service.stats.invalid >= total,
            timeout_s=90,
            what="the whole stream to be consumed",
        )
        wait_for(lambda: committed(settings) == total, timeout_s=20, what="offsets committed")
    assert (service.stats.valid, service.stats.invalid) == (len(good), len(BAD_RECORDS))

    letters = read_topic(
        settings.bootstrap_servers or "",
        settings.dlq_topic,
        expect=len(BAD_RECORDS),
        partitions=PARTITIONS,
    )
    seen = sorted(
        (m.value() or b"", DeadLetter.from_headers(message_headers(m)).reason) for m in letters
    )
    assert seen == sorted((v or b"", r) for _k, v, r in BAD_RECORDS)
    for message in letters:
        letter = DeadLetter.from_headers(message_headers(message))
        assert letter.source_topic == settings.telemetry_topic and letter.detail

    requests = requests_in(settings, expect=1)
    assert [(r.tenant, r.reason) for r in requests] == [("drifty", "data_drift")]
    (source,) = requests[0].source
    assert source.topic == settings.telemetry_topic
    assert source.end_offset - source.start_offset >= requests[0].n_events >= 1_000


def test_restart_rebuilds_windows_and_neither_loses_nor_repeats_requests(
    settings: ConsumerSettings,
) -> None:
    bootstrap = settings.bootstrap_servers or ""
    first = produce_all(bootstrap, settings.telemetry_topic, telemetry(1_000))
    with running(settings) as service:
        wait_for(lambda: service.stats.valid >= first, timeout_s=90, what="first half")
        wait_for(lambda: committed(settings) == first, timeout_s=20, what="first commit")
    assert service.stats.requests == 0

    second = produce_all(bootstrap, settings.telemetry_topic, telemetry(1_000, start=1_000))
    with running(settings) as restarted:
        wait_for(
            lambda: restarted.stats.valid >= first + second,
            timeout_s=90,
            what="replay plus second half",
        )
        wait_for(lambda: committed(settings) == first + second, timeout_s=20, what="second commit")
        # The windows were rebuilt from the replay: each tenant holds a full window.
        assert {s.tenant: len(s.window) for s in restarted.core.tenants()} == {
            "stable-a": 1_000,
            "drifty": 1_000,
            "stable-b": 1_000,
        }
    assert restarted.stats.replayed == first
    requests = requests_in(settings, expect=1)
    assert [(r.tenant, r.reason) for r in requests] == [("drifty", "data_drift")]


def test_cli_consumer_commits_what_it_did_and_exits_cleanly_on_sigterm(
    settings: ConsumerSettings,
) -> None:
    total = produce_all(settings.bootstrap_servers or "", settings.telemetry_topic, telemetry(300))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
        "SLAOPS_METRICS_PORT": str(free_port()),  # other workers' consumers run meanwhile
    }
    args = [sys.executable, "-m", "slaops.cli", "consume", "--no-follow-models"]
    for name in (
        "telemetry_topic",
        "dlq_topic",
        "retrain_topic",
        "checkpoint_topic",
        "group_id",
        "session_timeout_ms",
        "poll_timeout_s",
    ):
        args += ["--" + name.replace("_", "-"), str(getattr(settings, name))]
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: committed(settings) == total, timeout_s=60, what="CLI consumer commit")
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, err
    assert "stopped:" in err and "valid=900" in err


def test_cli_refuses_bad_settings_naming_them() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slaops.cli", "consume", "--window-max-events", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert result.returncode == 2
    assert "window_max_events (SLAOPS_WINDOW_MAX_EVENTS or --window-max-events)" in result.stderr
