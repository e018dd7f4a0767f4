"""Wires `slaops simulate`: settings → simulator → paced, keyed, idempotent producer.

The Kafka side only: what is sent comes from the pure `simulator.model`. Start-up
itself (broker, topics, signals) is the application's runner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kernel.kafka import DeliveryTracker, TopicSpec, make_producer, slaops_topics
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

    def __str__(self) -> str:
        malformed = self.malformed.total()
        kinds = " ".join(f"{kind}={n}" for kind, n in sorted(self.malformed.items()))
        return (
            f"sent records={self.records} valid={self.records - malformed} "
            f"breaches={self.breaches} drifted={self.drifted} malformed={malformed} "
            f"({kinds or 'none'}) in {self.elapsed_s:.1f}s"
        )


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
    """The pure simulator; a bad drift plan raises here, before any connection."""
    return TelemetrySimulator(
        settings.tenants,
        settings.seed,
        interval_s=settings.interval_s,
        start=settings.start,
        drifts=settings.drift_plans(),
        malformed_rate=settings.malformed_rate,
    )


#: Everything the simulator builds before any connection is the simulator itself.
prepare = build_simulator


def topic_specs(settings: SimulatorSettings) -> list[TopicSpec]:
    return slaops_topics(settings.telemetry_partitions, telemetry=settings.telemetry_topic)


def describe(settings: SimulatorSettings) -> str:
    return (
        f"simulating topic={settings.telemetry_topic} tenants={settings.tenants} "
        f"events_per_tenant={settings.events_per_tenant} rate={settings.rate or 'unlimited'} "
        f"seed={settings.seed}"
    )


class SimulatorRun:
    """Sends the simulator's stream once, paced, then waits for every acknowledgement."""

    def __init__(
        self, simulator: TelemetrySimulator, tracker: DeliveryTracker, settings: SimulatorSettings
    ) -> None:
        self.simulator = simulator
        self.tracker = tracker
        self.settings = settings

    def run(self, stop: threading.Event) -> SendSummary:
        for drift in self.simulator.schedule():
            log.info(
                "drift planned tenant=%s kind=%s magnitude=%g at_event=%d ts=%s position=%d",
                drift.tenant,
                drift.kind,
                drift.magnitude,
                drift.at_event,
                drift.ts.isoformat(),
                drift.position,
            )
        records = self.simulator.events(self.settings.events_per_tenant)
        pacer = Pacer(self.settings.rate)
        return send(records, self.tracker, self.settings.telemetry_topic, pacer, stop)


def build_service(
    settings: SimulatorSettings, simulator: TelemetrySimulator | None = None
) -> SimulatorRun:
    simulator = build_simulator(settings) if simulator is None else simulator
    return SimulatorRun(simulator, DeliveryTracker(make_producer(settings)), settings)
