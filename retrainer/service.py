"""The Kafka side of the retrainer: requests in, one search at a time, results out.

The poll loop never blocks on a search: searches run in a worker thread while the
loop keeps calling `consume`, so the group never loses this member however long a
search takes. Requests of one tenant that arrive meanwhile are coalesced into one run
on the newest window. A request's offset is committed only after its outcome
(`ModelPublished`, `ChampionKept` or `RetrainFailed`) has been acknowledged.

The failure policy: an error that may pass (`kernel.errors.is_transient`: the store
or the broker down, 429, 5xx, timeouts) is retried without limit, after capped and
jittered pauses, and keeps the request (and the partition's later commits) waiting;
any other error is retried `max_attempts` times in all and then ends the request with
a `RetrainFailed` naming the error, so one request that can never be served does not
hold back every later commit of its partition.

The bounds: a request is refused unread above `max_request_bytes` (a `RetrainFailed`
on the failures topic, the retrainer's dead letters, and committed), and at most
`max_queued` requests wait in memory. A full queue pauses the partitions
(`Consumer.pause`), and a record polled while it is full is put back (its partition
sought back to it, then paused) rather than held; polling goes on, so the group keeps
this member, and the partitions resume once the queue has drained to half. Nothing
valid is lost: what is put back is read again. A tenant's waiting requests are held
as their offsets and the newest request of each partition: a burst of one tenant's
requests costs a few bytes each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)
from pydantic import BaseModel, ValidationError

from kernel.backoff import Backoff
from kernel.errors import StoreError, is_transient
from kernel.kafka import DeliveryTracker, is_record, position
from retrainer.cancel import CancelToken
from retrainer.observability import RetrainerHooks
from retrainer.offsets import OffsetBook
from retrainer.publisher import RequestHandler, RequestOutcome
from schemas import RetrainFailed, RetrainRequested
from schemas.retrain import MAX_REQUEST_BYTES, RequestTooLarge, parse_retrain_request

log = logging.getLogger(__name__)


@dataclass
class PendingTenant:
    """A tenant's waiting requests: every offset, and the newest request of each partition.

    A run serves the newest request (by partition, then offset) and then commits all
    the offsets; the older requests themselves are never read again, so they are not kept.
    """

    offsets: list[tuple[int, int]] = field(default_factory=list)
    newest: dict[int, tuple[int, RetrainRequested]] = field(default_factory=dict)
    not_before: float = 0.0
    attempts: int = 0

    def add(self, partition: int, offset: int, request: RetrainRequested) -> None:
        self.offsets.append((partition, offset))
        held = self.newest.get(partition)
        if held is None or held[0] < offset:
            self.newest[partition] = (offset, request)

    def drop(self, partitions: set[int]) -> None:
        """Forget the requests of revoked `partitions`."""
        self.offsets = [(p, o) for p, o in self.offsets if p not in partitions]
        self.newest = {p: held for p, held in self.newest.items() if p not in partitions}

    def request(self) -> RetrainRequested:
        """The newest request: the one a run serves."""
        _partition, (_offset, request) = max(self.newest.items(), key=lambda kv: (kv[0], kv[1][0]))
        return request


@dataclass
class Job:
    tenant: str
    request: RetrainRequested
    offsets: list[tuple[int, int]]
    future: Future[RequestOutcome]
    attempts: int
    #: This run's own cancel flag: a later run of the same request gets a fresh one.
    cancel: CancelToken = field(default_factory=CancelToken)
    abandoned: bool = False


@dataclass(slots=True)
class RetrainerStats:
    """What the retrainer did since it started; logged when it stops."""

    requests: int = 0
    coalesced: int = 0
    published: int = 0
    kept: int = 0
    failed: int = 0
    duplicates: int = 0
    retries: int = 0
    revocations: int = 0
    #: Requests refused unread for their size.
    oversized: int = 0
    #: Times the queue filled and the partitions were paused.
    pauses: int = 0
    #: Records polled while the queue was full, put back to be read again.
    put_back: int = 0
    #: The most requests that waited in memory at once.
    peak_queued: int = 0


#: Pause before a failed request is tried again: 5 s, doubling, at most 5 minutes.
DEFAULT_RETRY = Backoff(5.0, 300.0)
#: How long a revocation waits for the cancelled search to stop (fits check each epoch).
_CANCEL_WAIT_S = 30.0
#: Tries of a request that keeps failing with an error that is not transient.
DEFAULT_MAX_ATTEMPTS = 3
#: Requests waiting in memory at most (each is at most `MAX_REQUEST_BYTES` of JSON).
DEFAULT_MAX_QUEUED = 1_000
#: Records one poll takes at most.
_POLL_BATCH = 500


@dataclass(frozen=True)
class RetryPolicy:
    """How a request whose run failed is tried again (the module doc's failure policy).

    Every failed run waits `backoff.jittered_s(attempts)` before the next; a transient
    error (`kernel.errors.is_transient`) is retried without limit, any other one until
    `max_attempts` runs in all have failed. Raises `ValueError` for `max_attempts` < 1.
    """

    backoff: Backoff = DEFAULT_RETRY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be >= 1, got {self.max_attempts} (1: one run, no retry)"
            )

    def retries(self, exc: BaseException, attempts: int) -> bool:
        """Whether a request whose run number `attempts + 1` failed with `exc` runs again."""
        return is_transient(exc) or attempts + 1 < self.max_attempts


class RetrainerService:
    """Drives a `RequestHandler` from a Kafka consumer, one search at a time.

    Searches run in a worker thread while the loop keeps polling, so a long search
    never costs the group its membership; a tenant's requests that arrive meanwhile
    are coalesced. A request's offset is committed only after its outcome was
    acknowledged. A failed search or delivery leaves it uncommitted and retries it
    after a growing, jittered pause (`retry`): without limit while the error is
    transient, else up to `retry.max_attempts` tries in all, after which a
    `RetrainFailed` (on the handler's `topics.failures`, like every unreadable request)
    ends it. `run` returns when `stop` is set. Never trains on the poll thread.

    Bounded (the module doc): a request over `max_request_bytes` is refused unread, and
    at most `max_queued` requests wait; a full queue pauses the partitions. Raises
    `ValueError` for a bound below 1.
    """

    def __init__(
        self,
        *,
        handler: RequestHandler,
        consumer: Consumer,
        tracker: DeliveryTracker,
        retrain_topic: str,
        retry: RetryPolicy = RetryPolicy(),
        hooks: RetrainerHooks | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        if max_request_bytes < 1 or max_queued < 1:
            raise ValueError("max_request_bytes and max_queued must be >= 1")
        self.handler = handler
        #: Metrics and health (`retrainer.observability`); the default records nothing.
        self.hooks = hooks if hooks is not None else RetrainerHooks()
        self.stats = RetrainerStats()
        self._consumer = consumer
        self._tracker = tracker
        self._retrain_topic = retrain_topic
        self._retry = retry
        self._book = OffsetBook()
        self._pending: dict[str, PendingTenant] = {}
        #: Offsets held in `_pending`, all tenants together.
        self._queued = 0
        self._max_request_bytes = max_request_bytes
        self._max_queued = max_queued
        #: Partitions paused because the queue is full.
        self._paused: set[int] = set()
        #: Partitions put back in this poll's batch (their later records are skipped).
        self._put_back: set[int] = set()
        self._job: Job | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        self.assigned: set[int] = set()

    # -- rebalance ------------------------------------------------------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update(tp.partition for tp in partitions)
        self.hooks.assigned()
        log.info("assigned partitions=%s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        self.stats.revocations += 1
        self.assigned.difference_update(numbers)
        self._paused.difference_update(numbers)
        self._book.forget(numbers)
        for tenant in list(self._pending):
            pending = self._pending[tenant]
            self._queued -= len(pending.offsets)
            pending.drop(numbers)
            self._queued += len(pending.offsets)
            if not pending.offsets:
                del self._pending[tenant]
        job = self._job
        if job is not None and any(p in numbers for p, _ in job.offsets):
            # Its partition's new owner serves the request: stop the search before this
            # member rejoins, so two members never train one tenant at once.
            self._abandon(job)
        log.info("revoked partitions=%s", sorted(numbers))

    def _abandon(self, job: Job) -> None:
        """Cancel the job and wait (bounded) for its search to stop; its result is dropped."""
        job.abandoned = True
        job.cancel.cancel()
        if not wait([job.future], timeout=_CANCEL_WAIT_S).done:
            log.warning(
                "tenant=%s event_id=%s still searching %.0fs after its cancel",
                job.tenant,
                job.request.event_id,
                _CANCEL_WAIT_S,
                extra={"tenant": job.tenant, "event_id": job.request.event_id},
            )
        else:
            log.info(
                "tenant=%s event_id=%s cancelled",
                job.tenant,
                job.request.event_id,
                extra={"tenant": job.tenant, "event_id": job.request.event_id},
            )

    # -- the loop -------------------------------------------------------------------
    def run(self, stop: threading.Event) -> RetrainerStats:
        self._consumer.subscribe(
            [self._retrain_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        try:
            while not stop.is_set():
                room = self._flow()
                messages = self._consumer.consume(max(1, min(_POLL_BATCH, room)), 0.2)
                self.hooks.polled()
                self._put_back.clear()
                for message in messages:
                    self._receive(message)
                self._finish_job()
                self._start_job()
        finally:
            self.hooks.stopped()
            if self._job is not None:
                self._abandon(self._job)
            self._executor.shutdown(wait=True, cancel_futures=True)
            if self._job is not None:
                self._job.cancel.close()
            self._tracker.wait()
            self._consumer.close()
        return self.stats

    # -- the queue bound ------------------------------------------------------------
    def queued(self) -> int:
        """Requests waiting in memory (the run in progress not counted)."""
        return self._queued

    def _flow(self) -> int:
        """Pause the partitions when the queue is full, resume them once it drained to half.

        Returns the room left: how many records the next poll may take.
        """
        queued = self.queued()
        room = self._max_queued - queued
        if room <= 0:
            unpaused = self.assigned - self._paused
            if unpaused:
                self._pause(unpaused)
                self.stats.pauses += 1
                log.warning(
                    "%d retrain requests wait (the most held): pausing partitions=%s",
                    queued,
                    sorted(unpaused),
                )
        elif self._paused and queued <= self._max_queued // 2:
            paused = sorted(self._paused)
            self._paused.clear()
            try:
                self._consumer.resume(self._partitions(paused))
            except KafkaException as exc:
                log.warning("resume failed: %s", exc)
            log.info("%d retrain requests wait: resuming partitions=%s", queued, paused)
        return room

    def _pause(self, partitions: set[int]) -> None:
        try:
            self._consumer.pause(self._partitions(partitions))
        except KafkaException as exc:
            log.warning("pause failed: %s", exc)
            return
        self._paused.update(partitions)

    def _partitions(self, numbers: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(self._retrain_topic, p) for p in sorted(numbers)]

    def _put_back_record(self, partition: int, offset: int) -> None:
        """A record polled while the queue is full: pause its partition and seek back to it.

        Only its partition's first such record in a poll is sought back to; the later
        ones follow it anyway. Nothing of it is booked, so nothing past it is committed.
        """
        self.stats.put_back += 1
        if partition in self._put_back:
            return
        self._put_back.add(partition)
        self._pause({partition})
        try:
            self._consumer.seek(TopicPartition(self._retrain_topic, partition, offset))
        except KafkaException as exc:
            # Not sought back, the record would be skipped until a restart: hold it.
            log.warning(
                "seek to partition=%d offset=%d failed: %s",
                partition,
                offset,
                exc,
                extra={"partition": partition, "offset": offset},
            )
            self._put_back.discard(partition)
            raise

    def _receive(self, message: Message) -> None:
        if not is_record(message):
            return
        partition, offset = position(message)
        if partition in self._put_back or self.queued() >= self._max_queued:
            try:
                self._put_back_record(partition, offset)
                return
            except KafkaException:
                pass  # held over the bound rather than lost
        self._book.received(partition, offset)
        self.stats.requests += 1
        self.hooks.received(partition, offset, _timestamp_ms(message))
        try:
            request = parse_retrain_request(message.value(), max_bytes=self._max_request_bytes)
        except (ValidationError, RequestTooLarge) as exc:
            oversized = isinstance(exc, RequestTooLarge)
            self.stats.oversized += oversized
            log.warning(
                "%s retrain request partition=%d offset=%d",
                "oversized" if oversized else "unreadable",
                partition,
                offset,
                extra={"partition": partition, "offset": offset},
            )
            detail = f"request_too_large: {exc}" if oversized else str(exc)
            self._emit_now(
                self.handler.topics.failures,
                (message.key() or b"")[:256] or None,
                RetrainFailed(
                    request_event_id=None,
                    tenant=None,
                    reason="invalid_request",
                    detail=detail[:1000],
                    failed_at=datetime.now(UTC),
                ),
            )
            self._book.done(partition, offset)
            self.hooks.invalid(partition, offset)
            self._commit()
            return
        pending = self._pending.setdefault(request.tenant, PendingTenant())
        pending.add(partition, offset, request)
        self._queued += 1
        self.stats.peak_queued = max(self.stats.peak_queued, self.queued())

    def _start_job(self) -> None:
        if self._job is not None or not self._pending:
            return
        now = time.monotonic()
        ready = [t for t, p in self._pending.items() if p.not_before <= now]
        if not ready:
            return
        tenant = ready[0]  # dicts keep arrival order: the longest-waiting tenant first
        pending = self._pending.pop(tenant)
        self._queued -= len(pending.offsets)
        request = pending.request()
        if len(pending.offsets) > 1:
            self.stats.coalesced += len(pending.offsets) - 1
            self.hooks.coalesced(len(pending.offsets) - 1)
            log.info(
                "tenant=%s coalesced %d requests into event_id=%s",
                tenant,
                len(pending.offsets),
                request.event_id,
                extra={"tenant": tenant, "event_id": request.event_id},
            )
        offsets = list(pending.offsets)
        cancel = CancelToken()
        future = self._executor.submit(self.handler.handle, request, cancel)
        self._job = Job(tenant, request, offsets, future, pending.attempts, cancel)

    def _finish_job(self) -> None:
        job = self._job
        if job is None or not job.future.done():
            return
        self._job = None
        job.cancel.close()
        if job.abandoned:
            # Its partition moved: whatever it ended in (`Cancelled` mostly) is dropped,
            # never counted as a failed attempt; the partition's new owner serves it.
            return
        try:
            outcome = job.future.result()
        except Exception as exc:
            if self._retry.retries(exc, job.attempts):
                self._retry_later(job, exc)
                return
            outcome = self._give_up(job, exc)
        self._deliver(job, outcome)

    def _give_up(self, job: Job, exc: Exception) -> RequestOutcome:
        """The `RetrainFailed` that ends a request whose error is not transient."""
        reason = "store_refused" if isinstance(exc, StoreError) else "unexpected_error"
        log.error(
            "tenant=%s event_id=%s failed %d times (%s: %s); giving up",
            job.tenant,
            job.request.event_id,
            job.attempts + 1,
            type(exc).__name__,
            exc,
            extra={"tenant": job.tenant, "event_id": job.request.event_id},
        )
        detail = f"{type(exc).__name__} after {job.attempts + 1} attempts: {exc}"
        return self.handler.failed(job.request, reason, detail)

    def _deliver(self, job: Job, outcome: RequestOutcome) -> None:
        """Produce the outcome's events; once acknowledged, commit the job's requests."""
        for topic, key, event in outcome.events:
            self._tracker.produce(topic, key=key, value=event.model_dump_json().encode())
        try:
            self._tracker.wait()
        except Exception as exc:
            self._retry_later(job, exc)
            return
        setattr(self.stats, outcome.kind, getattr(self.stats, outcome.kind) + 1)
        self.hooks.finished(outcome, job.offsets)
        for partition, offset in job.offsets:
            self._book.done(partition, offset)
        self._commit()

    def _retry_later(self, job: Job, exc: Exception) -> None:
        """Keep the request uncommitted and try again after a growing pause."""
        self.stats.retries += 1
        self.hooks.retried(exc)
        delay = self._retry.backoff.jittered_s(job.attempts)
        log.warning(
            "tenant=%s event_id=%s failed (%s: %s, %s); retrying in %.0fs",
            job.tenant,
            job.request.event_id,
            type(exc).__name__,
            exc,
            "transient" if is_transient(exc) else f"attempt {job.attempts + 1}",
            delay,
            extra={"tenant": job.tenant, "event_id": job.request.event_id},
        )
        pending = self._pending.setdefault(job.tenant, PendingTenant())
        for p, o in job.offsets:
            pending.add(p, o, job.request)
        self._queued += len(job.offsets)
        pending.not_before = time.monotonic() + delay
        pending.attempts = job.attempts + 1

    def _emit_now(self, topic: str, key: bytes | None, event: BaseModel) -> None:
        self._tracker.produce(topic, key=key, value=event.model_dump_json().encode())
        self._tracker.wait()

    def _commit(self) -> None:
        offsets = [
            TopicPartition(self._retrain_topic, p, o)
            for p, o in self._book.committable().items()
            if p in self.assigned
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed: %s", exc)


def _timestamp_ms(message: Message) -> int | None:
    """When the record reached the topic (its producer's or the broker's clock), if known."""
    kind, value = message.timestamp()
    return value if kind != TIMESTAMP_NOT_AVAILABLE else None
