"""Follows `sla.models` and the retrain outcome topics in a background thread.

It learns each tenant's newest model (from the beginning of the topic, so a restarted
consumer knows every model), loads it through the safe loader off the ingest path, and
hands the result to the main loop, which swaps it in between two batches. Failures and
kept champions only answer a tenant's request, so the tenant may ask again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
from pydantic import ValidationError

from consumer.live_model import LiveModel, ModelRefused
from kernel.kafka import make_reader
from schemas import ChampionKept, ModelPublished, RetrainFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """A request of `tenant` was answered; `model` is set when a new one is live."""

    tenant: str
    request_event_id: str
    model: LiveModel | None = None


class ModelFollower:
    """Learns each tenant's newest model and the answers to its requests, in a thread.

    Reads the models, failures and decisions topics from the beginning; `caught_up`
    is set once it has read to their ends. Loads models through the given loader
    (which verifies sha256s) off the ingest path and hands them over via `drain`. An
    announcement no newer than the version it holds only answers the request, so an
    old event never rolls a tenant back; a model the loader refuses is counted in
    `refused` and the previous one kept. Never touches the ingest consumer.
    """

    def __init__(
        self,
        *,
        client_config: dict[str, Any],
        models_topic: str,
        failures_topic: str,
        decisions_topic: str,
        load: Callable[[ModelPublished], LiveModel],
        idle_s: float = 1.0,
    ) -> None:
        self._config = client_config
        self._models_topic = models_topic
        self._outcomes: dict[str, type[RetrainFailed] | type[ChampionKept]] = {
            failures_topic: RetrainFailed,
            decisions_topic: ChampionKept,
        }
        self._load = load
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._inbox: list[Answer] = []
        self._versions: dict[str, int] = {}
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        self.refused = 0
        self.loaded = 0
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def drain(self) -> list[Answer]:
        with self._lock:
            answers, self._inbox = self._inbox, []
        return answers

    def _run(self) -> None:
        consumer = make_reader(self._config, "slaops-consumer-model-follower")
        try:
            topics = [self._models_topic, *self._outcomes]
            metadata = consumer.list_topics(timeout=30)
            consumer.assign(
                [
                    TopicPartition(topic, partition, OFFSET_BEGINNING)
                    for topic in topics
                    if topic in metadata.topics
                    for partition in metadata.topics[topic].partitions
                ]
            )
            last_message = time.monotonic()
            while not self._stop.is_set():
                messages = consumer.consume(500, 0.2)
                if messages:
                    last_message = time.monotonic()
                elif time.monotonic() - last_message > self._idle_s:
                    self.caught_up.set()
                for message in messages:
                    if message.error() is None:
                        self._handle(message.topic() or "", message.value() or b"")
        except KafkaException as exc:
            log.error("model follower stopped: %s", exc)
        finally:
            consumer.close()
            self.caught_up.set()

    def _handle(self, topic: str, value: bytes) -> None:
        try:
            if topic == self._models_topic:
                self._on_model(ModelPublished.model_validate_json(value))
                return
            outcome = self._outcomes[topic].model_validate_json(value)
        except ValidationError as exc:
            log.warning("ignoring an unreadable record on %s: %s", topic, str(exc)[:200])
            return
        if outcome.tenant is not None and outcome.request_event_id is not None:
            self._post(Answer(outcome.tenant, outcome.request_event_id))

    def _on_model(self, event: ModelPublished) -> None:
        answered = Answer(event.tenant, event.request_event_id)
        if self._versions.get(event.tenant, 0) >= event.model_version:
            self._post(answered)
            return
        try:
            model = self._load(event)
        except ModelRefused as exc:
            self.refused += 1
            log.warning(
                "refused model tenant=%s version=%d revision=%r: %s; keeping the previous one",
                event.tenant,
                event.model_version,
                event.revision,
                exc,
            )
            self._post(answered)
            return
        self.loaded += 1
        self._versions[event.tenant] = event.model_version
        log.info(
            "loaded model tenant=%s version=%d revision=%s",
            event.tenant,
            event.model_version,
            event.revision,
        )
        self._post(Answer(event.tenant, event.request_event_id, model))

    def _post(self, answer: Answer) -> None:
        with self._lock:
            self._inbox.append(answer)
