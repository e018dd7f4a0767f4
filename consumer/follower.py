"""Follows the answers to the consumer's retrain requests in a background thread.

An answer is a new live model (`sla.models`), a failure (`sla.retrain.failures`) or a
kept champion (`sla.retrain.decisions`). `AnswerFollower` is built on
`kernel.model_follower.ModelFollower`: an announcement is only a hint, the store
decides each tenant's newest model (revision and version), so a forged event cannot
roll a tenant back or pin it, also after a restart. Loaded models go to the main loop,
which swaps them in between two batches; failures and kept champions only answer a
tenant's request, so the tenant may ask again. Every error of one record is caught; a
dead or stuck follower is logged and restarted (`ensure_running`), and `health()` says
how it is doing. `inner.handle(topic, value)` hands it one record in the caller's own
thread (the store follower's public entry; nothing else of it is needed for that).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from consumer.live_model import LiveModel
from kernel.model_follower import FollowerOptions, ModelAuthority, StoreLook
from kernel.model_follower import ModelFollower as StoreFollower
from schemas import ChampionKept, RetrainFailed, topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """A request of `tenant` was answered; `model` is set when a new one is live."""

    tenant: str
    request_event_id: str
    model: LiveModel | None = None


@dataclass(frozen=True)
class AnswerTopics:
    """Where answers come from (fields named as the settings); the defaults are ours."""

    models_topic: str = topics.MODELS
    failures_topic: str = topics.RETRAIN_FAILURES
    decisions_topic: str = topics.RETRAIN_DECISIONS


class AnswerFollower:
    """Each tenant's newest store-verified model and the answers to its requests, in a thread.

    Reads the models, failures and decisions topics from the beginning; `caught_up`
    is set once it has read to their ends. Models load off the ingest path and are
    handed over via `drain`. Never touches the ingest consumer.
    """

    def __init__(
        self,
        *,
        client_config: dict[str, Any],
        topics: AnswerTopics,
        authority: ModelAuthority,
        idle_s: float = 1.0,
        min_lookup_interval_s: float = 1.0,
        stall_s: float = 300.0,
    ) -> None:
        self._lock = threading.Lock()
        self._inbox: list[Answer] = []
        self.inner = StoreFollower(
            client_config=client_config,
            models_topic=topics.models_topic,
            authority=authority,
            extra_topics={
                topics.failures_topic: lambda value: self._on_outcome(RetrainFailed, value),
                topics.decisions_topic: lambda value: self._on_outcome(ChampionKept, value),
            },
            on_look=self._on_model,
            options=FollowerOptions(
                reader_name="slaops-consumer-model-follower",
                idle_s=idle_s,
                min_lookup_interval_s=min_lookup_interval_s,
                stall_s=stall_s,
            ),
        )
        self.caught_up = self.inner.caught_up

    @property
    def loaded(self) -> int:
        return self.inner.loaded

    @property
    def refused(self) -> int:
        return self.inner.refused

    @property
    def alive(self) -> bool:
        return self.inner.alive

    def health(self) -> dict[str, Any]:
        return self.inner.health()

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def ensure_running(self) -> bool:
        return self.inner.ensure_running()

    def drain(self) -> list[Answer]:
        with self._lock:
            answers, self._inbox = self._inbox, []
        return answers

    def _on_outcome(self, kind: type[RetrainFailed] | type[ChampionKept], value: bytes) -> None:
        try:
            outcome = kind.model_validate_json(value)
        except ValidationError as exc:
            log.warning("ignoring an unreadable retrain outcome: %s", str(exc)[:200])
            return
        if outcome.tenant is not None and outcome.request_event_id is not None:
            self._post(Answer(outcome.tenant, outcome.request_event_id))

    def _on_model(self, outcome: StoreLook) -> None:
        model = outcome.model
        answers = [Answer(hint.tenant, hint.request_event_id) for hint in outcome.hints]
        if model is not None:
            # The model goes with the announcement of its own revision when there is one.
            chosen = next(
                (i for i, h in enumerate(outcome.hints) if h.revision == model.revision),
                len(answers) - 1,
            )
            answers[chosen] = Answer(
                model.tenant,
                answers[chosen].request_event_id,
                LiveModel.from_verified(model, answers[chosen].request_event_id),
            )
        for answer in answers:
            self._post(answer)

    def _post(self, answer: Answer) -> None:
        with self._lock:
            self._inbox.append(answer)
