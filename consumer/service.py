"""The Kafka side of the consumer: poll, hand batches to the core, deliver, commit.

Delivery is at least once: a batch's source offsets are committed only after every
dead letter, forecast, warning edge, retrain request and checkpoint it caused has been
acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.checkpoint import CheckpointLog, choose_replay_from
from consumer.core import BatchResult, IngestCore
from consumer.follower import AnswerFollower
from consumer.observability import ConsumerHooks
from kernel.backoff import Backoff
from kernel.errors import BrokerError
from kernel.kafka import DeliveryTracker, KafkaRecord, is_record

log = logging.getLogger(__name__)

#: A record a batch caused: topic, key, value, headers.
_Output = tuple[str, bytes | None, bytes | None, Any]
#: Pause before a batch whose delivery failed is produced again: 1 s, doubling, at most 30 s.
_REDELIVERY = Backoff(1.0, 30.0)


@dataclass(slots=True)
class ConsumerStats:
    """What the consumer did since it started; logged every 10 s and when it stops.

    `replayed` counts events re-read to rebuild windows after a restart or rebalance
    (they update state but emit nothing again); the rest count what was emitted.
    """

    valid: int = 0
    invalid: int = 0
    replayed: int = 0
    dead_letters: int = 0
    requests: int = 0
    commits: int = 0
    models: int = 0
    forecasts: int = 0
    warnings: int = 0

    def add(self, result: BatchResult) -> None:
        self.valid += result.valid
        self.invalid += result.invalid
        self.replayed += result.replayed
        self.dead_letters += len(result.dead_letters)
        self.requests += len(result.requests)
        self.forecasts += len(result.forecasts)
        self.warnings += len(result.warnings)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """How the loop runs: its topics, batches and waits (fields named as the settings)."""

    telemetry_topic: str
    dlq_topic: str
    retrain_topic: str
    batch_size: int
    poll_timeout_s: float
    #: Where the core's forecasts and warning edges go; None: nowhere.
    forecasts_topic: str | None = None
    warnings_topic: str | None = None
    delivery_timeout_s: float = 60.0
    #: How long `run` waits for the follower to read every model before ingesting.
    follower_catch_up_s: float = 30.0
    redelivery: Backoff = _REDELIVERY


@dataclass(frozen=True, slots=True)
class ServiceClients:
    """The service's Kafka side: the group consumer, the producer's tracker, checkpoints."""

    consumer: Consumer
    tracker: DeliveryTracker
    checkpoints: CheckpointLog


class ConsumerService:
    """Drives an `IngestCore` from a Kafka consumer: poll, process, deliver, commit.

    Promises at-least-once: a batch's offsets are committed only after every dead
    letter, forecast, warning edge, retrain request and checkpoint it caused was
    acknowledged (the clears of a revoked partition's warnings are produced when it is
    revoked, and waited for with the next batch or at the end of `run`); a
    failed commit is logged and the batch is simply seen again (request ids are
    deterministic, so repeats dedupe downstream). A broker that does not acknowledge
    (down, frozen, unreachable) is waited for, however long, keeping every window: each
    `delivery_timeout_s` without acknowledgement is logged, and records whose delivery
    failed are produced again after a jittered pause. `run` returns when `stop` is set,
    closing the consumer; raises `KafkaException` only for a fatal client error.
    Never validates, windows or detects itself: that is the core's work.
    """

    def __init__(
        self,
        *,
        core: IngestCore,
        clients: ServiceClients,
        config: ServiceConfig,
        follower: AnswerFollower | None = None,
        hooks: ConsumerHooks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.config = config
        #: Metrics and health (`consumer.observability`); the default records nothing.
        self.hooks = hooks if hooks is not None else ConsumerHooks()
        self.stats = ConsumerStats()
        self._consumer = clients.consumer
        self._tracker = clients.tracker
        self._checkpoints = clients.checkpoints
        self._topic = config.telemetry_topic
        self._follower = follower
        #: Wall-clock epoch seconds, the bound of accepted event time (tests inject one).
        self._clock = clock
        self._stop = threading.Event()
        #: Per partition: offsets below this were processed by an earlier owner.
        self._resume_at: dict[int, int] = {}
        self.assigned: set[int] = set()

    # -- rebalance ------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=30)
        ours = [tp.partition for tp in committed if tp.offset >= 0]
        latest = self._checkpoints.read_latest(self._topic, ours)
        for tp in committed:
            if tp.offset >= 0:
                replay_from = choose_replay_from(latest.get(tp.partition), tp.offset)
                self._resume_at[tp.partition] = tp.offset
                log.info(
                    "assigned partition=%d committed offset=%d replaying from offset=%d",
                    tp.partition,
                    tp.offset,
                    replay_from,
                    extra={"partition": tp.partition},
                )
                tp.offset = replay_from
            else:
                log.info(
                    "assigned partition=%d with no committed offset",
                    tp.partition,
                    extra={"partition": tp.partition},
                )
        self.assigned.update(tp.partition for tp in committed)
        self.hooks.assigned(committed, self._resume_at)
        consumer.assign(committed)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        dropped = self.core.drop_partitions(numbers)
        left = self.core.take_warnings()
        if left.warnings and self.config.warnings_topic is not None:
            for key, value in left.warnings:
                self._tracker.produce(self.config.warnings_topic, key=key, value=value)
            self.stats.warnings += len(left.warnings)
            self.hooks.warnings_sent(left)
        self._checkpoints.forget(self._topic, numbers)
        for number in numbers:
            self._resume_at.pop(number, None)
        self.assigned.difference_update(numbers)
        self.hooks.revoked(numbers)
        log.info("revoked partitions=%s, dropped %d tenants", numbers, dropped)

    # -- the loop -------------------------------------------------------------------
    def apply_answers(self) -> None:
        """Swap in models the follower loaded and free the gates of answered requests."""
        if self._follower is None:
            return
        self._follower.ensure_running()  # a dead or stuck follower is logged and restarted
        for answer in self._follower.drain():
            if answer.model is not None:
                self.core.apply_model(answer.model)
                self.stats.models += 1
                self.hooks.model_swapped()
            else:
                self.core.resolve(answer.tenant, answer.request_event_id)

    def run(self, stop: threading.Event, *, max_batches: int | None = None) -> ConsumerStats:
        self._stop = stop
        if self._follower is not None:
            self._follower.start()
            # Learn the models that exist before ingesting, or a tenant with a model
            # would look like a cold start.
            if not self._follower.caught_up.wait(self.config.follower_catch_up_s):
                log.warning("model follower still catching up; ingesting anyway")
            self.apply_answers()
        self._consumer.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        batches = 0
        last_report = time.monotonic()
        try:
            while not stop.is_set() and (max_batches is None or batches < max_batches):
                messages = self._consumer.consume(
                    self.config.batch_size, self.config.poll_timeout_s
                )
                self.hooks.polled()
                self.apply_answers()
                records = [m for m in messages if is_record(m)]
                if records:
                    self.handle_batch(records)
                    batches += 1
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    log.info("progress %s tenants=%d", self.stats, len(self.core))
        finally:
            self.hooks.stopped()
            if self._follower is not None:
                self._follower.stop()
            # Closing leaves the group, which revokes the partitions: their warnings'
            # clears are produced then, and delivered with the rest here.
            self._consumer.close()
            self._tracker.wait()
        return self.stats

    def handle_batch(self, records: Sequence[KafkaRecord]) -> BatchResult:
        started = time.perf_counter()
        result = self.core.process(
            records,
            self._resume_at,
            now=self._clock(),
            wall_clock=self.core.config.wall_cooldown,
        )
        self.stats.add(result)
        outputs: list[_Output] = [
            (self.config.dlq_topic, letter.key, letter.value, letter.headers)
            for letter in result.dead_letters
        ]
        warnings_topic = self.config.warnings_topic
        if warnings_topic is not None:
            outputs += [(warnings_topic, k, v, None) for k, v in result.warnings]
        outputs += [
            (self.config.retrain_topic, r.tenant.encode(), r.model_dump_json().encode(), None)
            for r in result.requests
        ]
        forecasts = result.forecasts if self.config.forecasts_topic is not None else []
        self._produce(outputs, forecasts)
        next_offsets = result.next_offsets
        for partition, next_offset in next_offsets.items():
            self._checkpoints.write(
                self._topic, partition, next_offset, result.replay_from[partition]
            )
        if not self._delivered(outputs, forecasts, next_offsets):
            return result  # stopping with the broker away: the batch is seen again
        if next_offsets:
            self._commit(next_offsets)
        self.hooks.batch(records, result, time.perf_counter() - started)
        return result

    def _produce(self, outputs: list[_Output], forecasts: list[tuple[bytes, bytes]]) -> None:
        """The batch's records: each one by one, the forecasts (no headers) in bulk."""
        for topic, key, value, headers in outputs:
            self._tracker.produce(topic, key=key, value=value, headers=headers)
        if forecasts and self.config.forecasts_topic is not None:
            self._tracker.produce_many(self.config.forecasts_topic, forecasts)

    def _delivered(
        self,
        outputs: list[_Output],
        forecasts: list[tuple[bytes, bytes]],
        next_offsets: dict[int, int],
    ) -> bool:
        """Wait until the batch's records are acknowledged, through any broker outage.

        The state stays as it is meanwhile. A record whose delivery failed (librdkafka
        gave up after `message.timeout.ms`) is produced again with the whole batch:
        repeats are harmless downstream (at least once, deterministic ids). False only
        when `stop` is set before the broker came back: nothing is committed then.
        """
        attempt = 0
        while True:
            try:
                self._tracker.wait(self.config.delivery_timeout_s)
                return True
            except BrokerError as exc:
                failed = self._tracker.pending == 0  # no record left in flight: lost ones
                log.warning(
                    "broker did not acknowledge the batch (%s); %s, attempt=%d",
                    exc,
                    "producing it again" if failed else "still waiting",
                    attempt + 1,
                )
            if self._stop.wait(self.config.redelivery.jittered_s(attempt) if failed else 0.0):
                return False
            attempt += 1
            if failed:
                self._produce(outputs, forecasts)
                for partition in next_offsets:
                    self._checkpoints.rewrite(self._topic, partition)

    def _commit(self, next_offsets: dict[int, int]) -> None:
        offsets = [TopicPartition(self._topic, p, o) for p, o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The partition moved during the batch: its new owner replays from the last
            # commit, and deterministic event ids let the retrainer drop repeats.
            log.warning("commit of %s failed: %s", next_offsets, exc)
            return
        self.stats.commits += 1
        self.hooks.committed()
        for partition, offset in next_offsets.items():
            self._resume_at[partition] = offset
