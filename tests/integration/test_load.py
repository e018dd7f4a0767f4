"""Load: a burst of 1,000,000 events over 1,000 tenants, produced as fast as the producer
can, into the real `slaops consume`. Its memory stays under its bound, the lag drains,
and the throughput is reported (the figure to watch is in `bench/`; nothing here is
timed against a target)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from consumer.main import topic_specs
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from testkit.consumer_runs import committed_by_partition
from testkit.factories import consumer_names
from testkit.kafka_helpers import produce_all, wait_for
from testkit.processes import ServiceProcess, env_for, services
from testkit.streams import telemetry_bytes

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

EVENTS = 1_000_000
TENANTS = 1_000
PARTITIONS = 3
#: The consumer's bound: 1,000 tenants x 1,440-event windows is ~60 MiB of columns and
#: detectors; the rest is the interpreter, torch and librdkafka's queues.
RSS_BOUND_MIB = 1_024


def test_a_million_event_burst_drains_within_the_memory_bound(
    bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    names = consumer_names(unique_name)
    tuning = {
        "telemetry_partitions": PARTITIONS,
        "session_timeout_ms": 6_000,
        "follow_models": False,
        "max_tenants": TENANTS,
    }
    settings = ConsumerSettings(bootstrap_servers=bootstrap, **names, **tuning)  # type: ignore[arg-type]
    ensure_topics(settings, topic_specs(settings))
    records = telemetry_bytes(EVENTS, TENANTS, seed=3)

    consumer = ServiceProcess(
        "consume", env_for({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **names, **tuning}), tmp_path
    )
    peak_rss = [0.0]
    sampling = threading.Event()

    def sample_rss() -> None:
        process = psutil.Process(consumer.pid)
        while not sampling.is_set():
            try:
                rss = process.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                return
            peak_rss[0] = max(peak_rss[0], rss)
            time.sleep(0.1)

    with services(consumer):
        consumer.start()
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        consumer.wait_log(r"assigned partition", timeout_s=60)
        started = time.perf_counter()
        produce_all(bootstrap, settings.telemetry_topic, records)
        produced_s = time.perf_counter() - started
        wait_for(
            lambda: sum(committed_by_partition(settings).values()) == EVENTS,
            timeout_s=240,
            what="the consumer to drain the burst",
        )
        drained_s = time.perf_counter() - started
        sampling.set()
        sampler.join(timeout=10)
        assert consumer.stop() == 0
    log = consumer.log()
    assert f"valid={EVENTS}" in log and "invalid=0" in log, log[-2000:]
    assert 0 < peak_rss[0] < RSS_BOUND_MIB, f"peak RSS {peak_rss[0]:.0f} MiB"
    print(
        f"load: {EVENTS:,} events, {TENANTS:,} tenants: produced in {produced_s:.1f} s "
        f"({EVENTS / produced_s:,.0f}/s), drained in {drained_s:.1f} s "
        f"({EVENTS / drained_s:,.0f}/s end to end), consumer peak RSS {peak_rss[0]:.0f} MiB"
    )
