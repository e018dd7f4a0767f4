"""`slaops alerts`: the warnings of `sla.warnings` as alerts in Alertmanager.

A raise becomes an alert (labels alertname, tenant, severity, service; the warning's
facts as annotations), sent again every `resend_interval_s` while it is active, with
`endsAt` a few intervals ahead, as Prometheus re-sends a firing alert: if this service
stops, Alertmanager resolves the alert by itself `resends_until_end` intervals later.
A clear sends the same labels with `endsAt` at the clear.

State comes from the topic, not from a file or offsets: at start the service reads
`sla.warnings` from its beginning to its end as it stands (the catch-up), sending
nothing, then sends what the topic says is true now: the active warnings (the same
labels and `startsAt` as before a restart, so Alertmanager merges them into the alerts
it holds: no new notification) and the clears recent enough for Alertmanager to still
hold their alert as active. A raise that was cleared is never sent as active again, and
an edge repeated on the topic (the consumer re-sends an edge, same id, after its own
restart) is applied once. Each Alertmanager URL gets every alert; a failed POST is tried
again with capped exponential backoff, the changes it carried kept until one succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    TopicPartition,
)
from pydantic import Field, TypeAdapter, ValidationError

from kernel.backoff import Backoff
from kernel.kafka import base_config, is_record, make_reader
from schemas import WarningCleared, WarningRaised
from slaops.alerts_book import (
    AlertBook,
    AlertShape,
    EndedWarning,
    active_alert,
    lifetime,
    resolved_alert,
)
from slaops.alerts_client import AlertmanagerClient, AlertmanagerError, AlertmanagerRefused
from slaops.alerts_settings import AlertsSettings

log = logging.getLogger(__name__)

Edge = WarningRaised | WarningCleared
_EDGE: TypeAdapter[Edge] = TypeAdapter(
    Annotated[WarningRaised | WarningCleared, Field(discriminator="kind")]
)
#: How often the topic's partitions are looked up again (a topic created later, more
#: partitions).
METADATA_INTERVAL_S = 30.0
#: A catch-up that reads nothing for this long ends (records deleted while it read).
CATCH_UP_IDLE_S = 10.0


class WarningRecord(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def error(self) -> Any: ...
    def timestamp(self) -> tuple[int, int]: ...


def parse_edge(key: bytes | None, value: bytes | None, max_bytes: int) -> Edge | str:
    """The edge a record holds, or why it is refused: ``too_large``, ``invalid`` (not a
    WarningRaised or WarningCleared), ``key_mismatch`` (the key is not its tenant, as
    the consumer writes it).

    >>> parse_edge(b"acme", b"{}", 1024)
    'invalid'
    """
    if value is None or len(value) > max_bytes:
        return "too_large" if value is not None else "invalid"
    try:
        edge = _EDGE.validate_json(value)
    except ValidationError:
        return "invalid"
    if key != edge.tenant.encode():
        return "key_mismatch"
    return edge


def record_time(message: WarningRecord, now: datetime) -> datetime:
    """When the record was written (its Kafka timestamp), never after `now`."""
    kind, ms = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or ms <= 0:
        return now
    return min(datetime.fromtimestamp(ms / 1000, UTC), now)


@dataclass
class Target:
    """One Alertmanager and what it still has to be told."""

    client: AlertmanagerClient
    pending: dict[str, EndedWarning] = field(default_factory=dict)
    dirty: bool = True
    attempt: int = 0
    retry_at: float = 0.0
    last_ok: float | None = None

    def due(self, now: float, resend_s: float) -> bool:
        if now < self.retry_at:
            return False
        if self.dirty or self.pending or self.last_ok is None:
            return True
        return now - self.last_ok >= resend_s


@dataclass
class Stats:
    edges: int = 0
    refused: int = 0
    posts: int = 0
    failures: int = 0


class AlertsService:
    """Reads the warnings topic, keeps the `AlertBook`, posts to every `Target`."""

    def __init__(
        self,
        settings: AlertsSettings,
        *,
        clients: list[AlertmanagerClient] | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.book = AlertBook(settings.max_active_warnings, settings.max_remembered_ids)
        self.shape = AlertShape(
            alertname=settings.alertname,
            severity=settings.severity,
            service=settings.service_label,
            extra_labels=dict(settings.extra_labels),
            runbook_url=settings.runbook_url,
            generator_url=settings.generator_url,
        )
        if clients is None:
            clients = [
                AlertmanagerClient(
                    url,
                    timeout_s=settings.alertmanager_timeout_s,
                    username=settings.alertmanager_username,
                    password=settings.alertmanager_password,
                    bearer_token=settings.alertmanager_bearer_token,
                )
                for url in settings.urls()
            ]
        self.targets = [Target(client) for client in clients]
        self.backoff = Backoff(settings.retry_base_s, settings.retry_max_s)
        self.lifetime = lifetime(settings.resend_interval_s, settings.resends_until_end)
        self.wall = wall
        self.monotonic = monotonic
        self.stats = Stats()
        self.caught_up = False

    # -- records in ----------------------------------------------------------------
    def ingest(self, message: WarningRecord) -> None:
        partition, offset = message.partition() or 0, message.offset() or 0
        where = {"partition": partition, "offset": offset}
        edge = parse_edge(message.key(), message.value(), self.settings.max_record_bytes)
        if isinstance(edge, str):
            self.stats.refused += 1
            log.warning(
                "refused record partition=%d offset=%d on %s: %s",
                partition,
                offset,
                self.settings.warnings_topic,
                edge,
                extra=where,
            )
            return
        self.stats.edges += 1
        outcome = self.book.apply(edge, record_time(message, self.wall()))
        context = {**where, "tenant": edge.tenant, "revision": edge.model_revision}
        if outcome == "full":
            log.error(
                "warning of tenant %s dropped: %d warnings are active "
                "(max_active_warnings); raise the bound",
                edge.tenant,
                len(self.book),
                extra=context,
            )
        elif outcome in ("raised", "replaced", "cleared") and self.caught_up:
            log.info(
                "warning %s tenant=%s (%s)", outcome, edge.tenant, edge.warning_id, extra=context
            )
        if outcome in ("raised", "replaced") and self.caught_up:
            for target in self.targets:
                target.dirty = True

    def _hand_out_ended(self, since: datetime | None = None) -> int:
        """Give each target the ended warnings (those ended after `since`, if given)."""
        ended = [e for e in self.book.take_ended() if since is None or e.ends_at >= since]
        for target in self.targets:
            for warning in ended:
                target.pending[warning.tenant] = warning
            if ended:
                target.dirty = True
        return len(ended)

    def finish_catch_up(self) -> None:
        """The topic is read to its end: send what it says is true now."""
        self.caught_up = True
        # Clears older than an alert's lifetime: Alertmanager has resolved them already.
        recent = self._hand_out_ended(since=self.wall() - self.lifetime)
        for target in self.targets:
            target.dirty = True
        log.info(
            "caught up with %s: %d active warnings, %d recent clears, %d records refused",
            self.settings.warnings_topic,
            len(self.book),
            recent,
            self.stats.refused,
        )

    # -- alerts out ----------------------------------------------------------------
    def payload(self, target: Target) -> tuple[list[dict[str, Any]], int]:
        now = self.wall()
        ends_at = now + self.lifetime
        resolved = [
            resolved_alert(self.shape, warning, now)
            for tenant, warning in target.pending.items()
            if not self.book.is_active(tenant)  # raised again since: the active one rules
        ]
        active = [active_alert(self.shape, w, ends_at) for w in self.book.active()]
        return resolved + active, len(resolved)

    def send_due(self) -> None:
        if not self.caught_up:
            return
        self._hand_out_ended()
        for target in self.targets:
            if target.due(self.monotonic(), self.settings.resend_interval_s):
                self.send(target)

    def send(self, target: Target) -> bool:
        alerts, resolved = self.payload(target)
        changed = target.dirty or bool(target.pending)
        try:
            if alerts:
                target.client.post(alerts)
        except AlertmanagerError as exc:
            self.stats.failures += 1
            delay = self.backoff.jittered_s(target.attempt)
            target.attempt += 1
            target.retry_at = self.monotonic() + delay
            level = logging.ERROR if isinstance(exc, AlertmanagerRefused) else logging.WARNING
            log.log(level, "%s; try %d again in %.1f s", exc, target.attempt + 1, delay)
            return False
        self.stats.posts += 1
        target.pending.clear()
        target.dirty = False
        target.attempt = 0
        target.last_ok = self.monotonic()
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "sent %d alerts to %s: %d active, %d resolved",
            len(alerts),
            target.client.url,
            len(alerts) - resolved,
            resolved,
        )
        return True

    def next_due_in(self) -> float:
        now, resend = self.monotonic(), self.settings.resend_interval_s
        waits = []
        for target in self.targets:
            if target.due(now, resend):
                return 0.0
            start = max(target.retry_at, (target.last_ok or now) + resend)
            waits.append(max(0.0, start - now))
        return min(waits, default=resend)

    def close(self) -> None:
        for target in self.targets:
            target.client.close()


class _Assignment:
    """The warnings topic's partitions, each read from its beginning; where the
    catch-up ends (each partition's end when it was first assigned)."""

    def __init__(self, reader: Consumer, topic: str, *, timeout_s: float) -> None:
        self.reader, self.topic, self.timeout_s = reader, topic, timeout_s
        self.partitions: set[int] = set()
        self.remaining: dict[int, int] = {}  # partition -> end offset still to reach
        self.checked = float("-inf")

    def refresh(self) -> None:
        self.checked = time.monotonic()
        try:
            metadata = self.reader.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as exc:
            log.warning("cannot list %s: %s; trying again", self.topic, exc)
            return
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return
        new = sorted(set(topic.partitions) - self.partitions)
        if not new:
            return
        for partition in new:
            low, high = self.reader.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=self.timeout_s
            )
            if high > low:
                self.remaining[partition] = high
        self.reader.incremental_assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in new]
        )
        self.partitions.update(new)
        log.info("reading %s partitions %s from the beginning", self.topic, new)

    def read(self, message: WarningRecord) -> None:
        partition, offset = message.partition() or 0, message.offset() or 0
        end = self.remaining.get(partition)
        if end is not None and offset + 1 >= end:
            del self.remaining[partition]


def serve(settings: AlertsSettings, stop: threading.Event) -> Stats:
    """Run until `stop` is set; the counts of what it did."""
    service = AlertsService(settings)
    reader = make_reader(base_config(settings), "slaops-alerts")
    assignment = _Assignment(reader, settings.warnings_topic, timeout_s=10.0)
    last_read = time.monotonic()
    log.info(
        "forwarding %s to %s (resend every %.0f s)",
        settings.warnings_topic,
        ", ".join(settings.urls()),
        settings.resend_interval_s,
    )
    try:
        while not stop.is_set():
            if time.monotonic() - assignment.checked > METADATA_INTERVAL_S or (
                not assignment.partitions and time.monotonic() - assignment.checked > 2.0
            ):
                assignment.refresh()
            wait = 0.2 if not service.caught_up else min(0.5, service.next_due_in())
            for message in reader.consume(500, max(wait, 0.01)):
                if not is_record(message):
                    continue
                last_read = time.monotonic()
                assignment.read(message)
                service.ingest(message)
            if not service.caught_up:
                idle = time.monotonic() - last_read > CATCH_UP_IDLE_S
                if assignment.partitions and (not assignment.remaining or idle):
                    service.finish_catch_up()
                elif not assignment.partitions and assignment.checked > float("-inf"):
                    service.finish_catch_up()  # no topic yet: nothing to catch up on
            service.send_due()
    finally:
        reader.close()
        service.close()
    return service.stats


def run_alerts(settings: AlertsSettings) -> int:
    from slaops.cli import EXIT_INTERRUPTED
    from slaops.runner import stop_on_signals_noting_interrupt

    settings.require_bootstrap()
    stop = threading.Event()
    interrupted = stop_on_signals_noting_interrupt(stop)
    stats = serve(settings, stop)
    log.info(
        "stopped: %d edges, %d refused, %d posts, %d failed posts",
        stats.edges,
        stats.refused,
        stats.posts,
        stats.failures,
    )
    return EXIT_INTERRUPTED if interrupted.is_set() else 0
