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
"""

from __future__ import annotations

import logging
import threading
import time
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

log = logging.getLogger(__name__)


@dataclass
class PendingTenant:
    requests: list[tuple[int, int, RetrainRequested]] = field(default_factory=list)
    not_before: float = 0.0
    attempts: int = 0


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


#: Pause before a failed request is tried again: 5 s, doubling, at most 5 minutes.
DEFAULT_RETRY = Backoff(5.0, 300.0)
#: How long a revocation waits for the cancelled search to stop (fits check each epoch).
_CANCEL_WAIT_S = 30.0
#: Tries of a request that keeps failing with an error that is not transient.
DEFAULT_MAX_ATTEMPTS = 3


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
    ) -> None:
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
        self._book.forget(numbers)
        for tenant in list(self._pending):
            pending = self._pending[tenant]
            pending.requests = [r for r in pending.requests if r[0] not in numbers]
            if not pending.requests:
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
            )
        else:
            log.info("tenant=%s event_id=%s cancelled", job.tenant, job.request.event_id)

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
                messages = self._consumer.consume(500, 0.2)
                self.hooks.polled()
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

    def _receive(self, message: Message) -> None:
        if not is_record(message):
            return
        partition, offset = position(message)
        self._book.received(partition, offset)
        self.stats.requests += 1
        self.hooks.received(partition, offset, _timestamp_ms(message))
        try:
            request = RetrainRequested.model_validate_json(message.value() or b"")
        except ValidationError as exc:
            log.warning("unreadable retrain request partition=%d offset=%d", partition, offset)
            self._emit_now(
                self.handler.topics.failures,
                message.key(),
                RetrainFailed(
                    request_event_id=None,
                    tenant=None,
                    reason="invalid_request",
                    detail=str(exc)[:1000],
                    failed_at=datetime.now(UTC),
                ),
            )
            self._book.done(partition, offset)
            self.hooks.invalid(partition, offset)
            self._commit()
            return
        pending = self._pending.setdefault(request.tenant, PendingTenant())
        pending.requests.append((partition, offset, request))

    def _start_job(self) -> None:
        if self._job is not None or not self._pending:
            return
        now = time.monotonic()
        ready = [t for t, p in self._pending.items() if p.not_before <= now]
        if not ready:
            return
        tenant = ready[0]  # dicts keep arrival order: the longest-waiting tenant first
        pending = self._pending.pop(tenant)
        newest = max(pending.requests, key=lambda r: (r[0], r[1]))
        request = newest[2]
        if len(pending.requests) > 1:
            self.stats.coalesced += len(pending.requests) - 1
            self.hooks.coalesced(len(pending.requests) - 1)
            log.info(
                "tenant=%s coalesced %d requests into event_id=%s",
                tenant,
                len(pending.requests),
                request.event_id,
            )
        offsets = [(p, o) for p, o, _r in pending.requests]
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
        )
        pending = self._pending.setdefault(job.tenant, PendingTenant())
        pending.requests.extend((p, o, job.request) for p, o in job.offsets)
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
