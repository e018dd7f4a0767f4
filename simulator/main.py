"""Wires `slaops simulate`: settings → simulator → paced, keyed, idempotent producer.

The Kafka side only: what is sent comes from the pure `simulator.model`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kernel.embedded import embedded_broker
from kernel.kafka import DeliveryTracker, TopicSpec, ensure_topics, make_producer
from kernel.signals import stop_on_signals
from simulator.malformed import MalformedKind
from simulator.model import EventMeta, TelemetrySimulator
from simulator.settings import SimulatorSettings

log = logging.getLogger(__name__)
#: Serve delivery callbacks this often, so the outstanding count stays small.
_POLL_EVERY = 1_000


class Pacer:
    """A token bucket: `rate` records a second on average, bursts of a tenth of a second.

    Sleeping happens on the stop event, so a stop request ends a wait at once.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 10.0)
        self.clock = clock
        self.tokens = self.burst
        self.last = clock()

    def acquire(self, stop: threading.Event) -> bool:
        """Take one token, waiting for it; False when stopped first. Rate 0: never waits."""
        if self.rate <= 0:
            return not stop.is_set()
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return not stop.is_set()
            if stop.wait((1.0 - self.tokens) / self.rate):
                return False


@dataclass
class SendSummary:
    """What was sent, for the closing log line and for demos."""

    records: int = 0
    malformed: Counter[MalformedKind] = field(default_factory=Counter)
    breaches: int = 0
    drifted: int = 0
    elapsed_s: float = 0.0


def send(
    records: Iterable[tuple[bytes, bytes, EventMeta]],
    tracker: DeliveryTracker,
    topic: str,
    pacer: Pacer,
    stop: threading.Event,
) -> SendSummary:
    """Produce `records` at the pacer's rate until done or stopped, then wait for acks."""
    summary = SendSummary()
    started = time.monotonic()
    for key, value, meta in records:
        if not pacer.acquire(stop):
            log.info("stopped after %d records", summary.records)
            break
        tracker.produce(topic, key=key, value=value)
        summary.records += 1
        if meta.malformed is not None:
            summary.malformed[meta.malformed] += 1
        else:
            summary.breaches += meta.breached
        summary.drifted += meta.drift is not None
        if summary.records % _POLL_EVERY == 0:
            tracker.producer.poll(0)
    tracker.wait()
    summary.elapsed_s = time.monotonic() - started
    return summary


def build_simulator(settings: SimulatorSettings) -> TelemetrySimulator:
    return TelemetrySimulator(
        settings.tenants,
        settings.seed,
        interval_s=settings.interval_s,
        start=settings.start,
        drifts=settings.drift_plans(),
        malformed_rate=settings.malformed_rate,
    )


def run_simulator(settings: SimulatorSettings, stop: threading.Event | None = None) -> int:
    if settings.bootstrap_servers is None and settings.embedded_broker:
        with embedded_broker() as (bootstrap, _pid):
            log.info("no KAFKA_BOOTSTRAP_SERVERS: using the embedded broker at %s", bootstrap)
            updated = settings.model_copy(update={"bootstrap_servers": bootstrap})
            return run_simulator(updated, stop)
    settings.require_bootstrap()
    simulator = build_simulator(settings)  # every check that needs no network, first
    topic = settings.telemetry_topic
    ensure_topics(settings, [TopicSpec(topic, settings.telemetry_partitions)])
    if stop is None:
        stop = threading.Event()
        stop_on_signals(stop)
    for drift in simulator.schedule():
        log.info(
            "drift planned tenant=%s kind=%s magnitude=%g at_event=%d ts=%s position=%d",
            drift.tenant,
            drift.kind,
            drift.magnitude,
            drift.at_event,
            drift.ts.isoformat(),
            drift.position,
        )
    log.info(
        "simulating topic=%s tenants=%d events_per_tenant=%d rate=%s seed=%d",
        topic,
        settings.tenants,
        settings.events_per_tenant,
        settings.rate or "unlimited",
        settings.seed,
    )
    tracker = DeliveryTracker(make_producer(settings))
    summary = send(
        simulator.events(settings.events_per_tenant), tracker, topic, Pacer(settings.rate), stop
    )
    valid = summary.records - summary.malformed.total()
    log.info(
        "sent records=%d valid=%d breaches=%d drifted=%d malformed=%d (%s) in %.1fs",
        summary.records,
        valid,
        summary.breaches,
        summary.drifted,
        summary.malformed.total(),
        " ".join(f"{kind}={n}" for kind, n in sorted(summary.malformed.items())) or "none",
        summary.elapsed_s,
    )
    return 0
