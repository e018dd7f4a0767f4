"""Each tenant's newest verified model, the store deciding: the public API for downstream.

A ``ModelPublished`` on ``sla.models`` is only a hint that a tenant may have a new
version. Whoever follows the topic (the consumer, or any downstream service) asks the
store, never the event, which version is newest:

* the revision is the store's newest for the tenant, the version its count of that
  tenant's versions (both from one bounded ``ModelStore.head`` lookup);
* the files are read at that revision and verified against the card read from the
  store (the loader checks the weights' sha256 against the card), and, when the event
  names that same revision, against the event's sha256s too;
* an event naming any other revision (an old one, or one the store never had) changes
  nothing: a forged announcement cannot roll a tenant back or pin it, and neither can
  replaying the topic after a restart.

Forged events cost little: an announcement whose cheap checks fail (store, tenant
HMAC, paths) never reaches the store; one naming the live revision, or a revision
already judged, is skipped; the rest only mark the tenant, and the store is asked at
most once per tenant per ``min_lookup_interval_s`` (and once per batch).

Use it::

    follower = ModelFollower(
        client_config=base_config(settings), models_topic="sla.models",
        authority=ModelAuthority(store, store_uri, tenant_key),
    )
    follower.start()
    model = follower.model("acme")   # a VerifiedModel, or None
    follower.ensure_running()        # from your own loop: restarts a dead/stuck thread

or, one tenant at a time without Kafka, :meth:`ModelAuthority.newest`
(``kernel.model_authority``; importable from here too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kernel.errors import REFUSAL_KINDS, ModelRefused
from kernel.kafka import assign_all, make_reader
from kernel.model_authority import ModelAuthority, VerifiedModel
from schemas import ModelPublished

__all__ = [
    "REFUSAL_KINDS",
    "FollowerOptions",
    "ModelAuthority",
    "ModelFollower",
    "ModelRefused",
    "StoreLook",
    "VerifiedModel",
]

log = logging.getLogger(__name__)

#: Revisions remembered per tenant as already judged (not the store's newest, or refused).
_JUDGED_KEPT = 64


@dataclass
class StoreLook:
    """What one look at the store gave for a tenant: a new model, or why not."""

    tenant: str
    hints: list[ModelPublished]
    model: VerifiedModel | None = None
    refused: str | None = None
    #: One of `REFUSAL_KINDS` when refused.
    refused_kind: str | None = None


@dataclass(frozen=True)
class FollowerOptions:
    """How a `ModelFollower` reads and paces itself; the defaults suit a service.

    `reader_name` fills the reader's `group.id` (it never joins or commits);
    `idle_s` of quiet marks it caught up; the store is asked about a tenant at most
    once per `min_lookup_interval_s`; a failed thread restarts after `restart_s`, and
    one without progress for `stall_s` counts as stuck. `clock` is monotonic seconds.
    """

    reader_name: str = "slaops-model-follower"
    idle_s: float = 1.0
    min_lookup_interval_s: float = 1.0
    restart_s: float = 5.0
    stall_s: float = 300.0
    clock: Callable[[], float] = time.monotonic


@dataclass
class _Tenant:
    live: VerifiedModel | None = None
    hints: list[ModelPublished] = field(default_factory=list)
    judged: OrderedDict[str, None] = field(default_factory=OrderedDict)
    next_lookup: float = 0.0


class ModelFollower:
    """Follows `models_topic` in a thread; each tenant's newest verified model, store-decided.

    Reads the topic from the beginning (so a restarted service knows every tenant);
    `caught_up` is set once it has read to the end. Every error of one record is
    caught and logged; an error of the thread itself is logged and the thread
    restarts after `restart_s`. `alive`, `last_progress` and `health()` show whether
    it is working; `ensure_running()` (call it from your own loop) starts a fresh
    thread when it died or made no progress for `stall_s`.

    `extra_topics` maps other topics to a handler of their raw values (the consumer
    follows retrain outcomes this way); `on_look` is called, in the follower's
    thread, with each `StoreLook`. `options` paces it (`FollowerOptions`).
    """

    def __init__(
        self,
        *,
        client_config: Mapping[str, Any],
        models_topic: str,
        authority: ModelAuthority,
        extra_topics: Mapping[str, Callable[[bytes], None]] | None = None,
        on_look: Callable[[StoreLook], None] | None = None,
        options: FollowerOptions | None = None,
    ) -> None:
        options = options if options is not None else FollowerOptions()
        self._config = dict(client_config)
        self._models_topic = models_topic
        self.authority = authority
        self._extra = dict(extra_topics or {})
        self._on_look = on_look
        self._reader_name = options.reader_name
        self._idle_s = options.idle_s
        self._min_lookup_s = options.min_lookup_interval_s
        self._restart_s = options.restart_s
        self._stall_s = options.stall_s
        self._clock = clock = options.clock
        self._lock = threading.RLock()
        self._tenants: dict[str, _Tenant] = {}
        self._stop = threading.Event()
        self._generation = 0
        self._thread: threading.Thread | None = None
        self.caught_up = threading.Event()
        self.last_progress = clock()
        self.loaded = 0
        self.refused = 0
        #: Refusals by `ModelRefused.kind`, since the start.
        self.refused_by_kind: dict[str, int] = {}
        self.lookups = 0
        self.record_errors = 0
        self.restarts = 0
        self.last_error: str | None = None

    # -- what a service reads -------------------------------------------------------
    def model(self, tenant: str) -> VerifiedModel | None:
        with self._lock:
            state = self._tenants.get(tenant)
            return state.live if state is not None else None

    def models(self) -> dict[str, VerifiedModel]:
        with self._lock:
            return {t: s.live for t, s in self._tenants.items() if s.live is not None}

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def stalled(self) -> bool:
        return self._clock() - self.last_progress > self._stall_s

    def health(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "stalled": self.alive and self.stalled,
            "caught_up": self.caught_up.is_set(),
            "seconds_since_progress": round(self._clock() - self.last_progress, 3),
            "loaded": self.loaded,
            "refused": self.refused,
            "lookups": self.lookups,
            "record_errors": self.record_errors,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }

    # -- the thread -----------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._generation += 1
            self.last_progress = self._clock()
            generation = self._generation
            self._thread = threading.Thread(
                target=self._run, args=(generation,), name="model-follower", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def ensure_running(self) -> bool:
        """Start a fresh thread if the follower died or is stuck; True when it did.

        A stuck thread cannot be killed; it is abandoned (its generation is stale, so
        nothing it finishes later is applied) and a new one re-reads the topic.
        """
        if self._stop.is_set() or self._thread is None:
            return False
        if self.alive and not self.stalled:
            return False
        why = "stopped" if not self.alive else f"made no progress for {self._stall_s:.0f} s"
        log.error("model follower %s; starting a fresh one", why)
        self.restarts += 1
        self.start()
        return True

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _run(self, generation: int) -> None:
        while self._current(generation):
            try:
                self._follow(generation)
            except Exception as exc:  # the thread must outlive any failure
                self.last_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                log.error("model follower failed: %s; restarting", self.last_error)
                self.restarts += 1
                self._stop.wait(self._restart_s)
        self.caught_up.set()

    def _follow(self, generation: int) -> None:
        consumer = make_reader(self._config, self._reader_name)
        try:
            assign_all(consumer, [self._models_topic, *self._extra], timeout_s=30.0)
            last_message = self._clock()
            while self._current(generation):
                messages = consumer.consume(500, 0.2)
                self.last_progress = self._clock()
                if messages:
                    last_message = self.last_progress
                elif self.last_progress - last_message > self._idle_s:
                    self.caught_up.set()
                for message in messages:
                    if message.error() is None:
                        self.handle(message.topic() or "", message.value() or b"", settle=False)
                if self._current(generation):
                    self.settle()
        finally:
            consumer.close()

    # -- records (callable directly, without Kafka) ---------------------------------
    def handle(self, topic: str, value: bytes, *, settle: bool = True) -> None:
        """One record; never raises. With `settle`, look at the store right away."""
        try:
            if topic == self._models_topic:
                self._hint(ModelPublished.model_validate_json(value))
            elif topic in self._extra:
                self._extra[topic](value)
        except ValidationError as exc:
            log.warning("ignoring an unreadable record on %s: %s", topic, _line(exc))
        except Exception as exc:
            self.record_errors += 1
            self.last_error = _line(exc)
            log.error("ignoring a record on %s that failed: %s", topic, self.last_error)
        if settle:
            self.settle()

    def _hint(self, event: ModelPublished) -> None:
        try:
            self.authority.check(event)
        except ModelRefused as exc:
            self._refuse(StoreLook(event.tenant, [event], refused=str(exc), refused_kind=exc.kind))
            return
        with self._lock:
            state = self._tenants.setdefault(event.tenant, _Tenant())
            state.hints.append(event)

    def settle(self) -> None:
        """Look at the store for each hinted tenant whose lookup interval has passed."""
        now = self._clock()
        with self._lock:
            due = [
                (tenant, state)
                for tenant, state in self._tenants.items()
                if state.hints and state.next_lookup <= now
            ]
        for tenant, state in due:
            try:
                self._look(tenant, state, now)
            except Exception as exc:  # one tenant's failure never stops the others
                self.record_errors += 1
                self.last_error = _line(exc)
                log.error(
                    "model lookup for tenant=%s failed: %s",
                    tenant,
                    self.last_error,
                    extra={"tenant": tenant},
                )

    def _look(self, tenant: str, state: _Tenant, now: float) -> None:
        with self._lock:
            hints, state.hints = state.hints, []
        live = state.live.revision if state.live is not None else None
        fresh = [h for h in hints if h.revision != live and h.revision not in state.judged]
        if not fresh:  # nothing could be new: answer without asking the store
            self._emit(StoreLook(tenant, hints))
            return
        state.next_lookup = now + self._min_lookup_s
        self.lookups += 1
        announced = fresh[-1]
        try:
            model = self.authority.newest(tenant, announced=announced, live_revision=live)
        except ModelRefused as exc:
            for hint in fresh:
                self._judge(state, hint.revision)
            self._refuse(StoreLook(tenant, hints, refused=str(exc), refused_kind=exc.kind))
            return
        if model is None:
            self._emit(StoreLook(tenant, hints))
            return
        if state.live is not None and model.version <= state.live.version:
            self._judge(state, model.revision)  # the store's history moved back: never follow
            self._refuse(
                StoreLook(
                    tenant,
                    hints,
                    refused=f"the store's newest {model.revision} is version {model.version}, "
                    f"not newer than the live version {state.live.version}",
                    refused_kind="older_version",
                )
            )
            return
        for hint in fresh:
            if hint.revision != model.revision:
                self._judge(state, hint.revision)
        with self._lock:
            state.live = model
        self.loaded += 1
        log.info(
            "loaded model tenant=%s version=%d revision=%s (the store's newest)",
            tenant,
            model.version,
            model.revision,
            extra={"tenant": tenant, "revision": model.revision},
        )
        self._emit(StoreLook(tenant, hints, model=model))

    def _judge(self, state: _Tenant, revision: str) -> None:
        state.judged[revision] = None
        while len(state.judged) > _JUDGED_KEPT:
            state.judged.popitem(last=False)

    def _refuse(self, look: StoreLook) -> None:
        self.refused += 1
        kind = look.refused_kind or "other"
        self.refused_by_kind[kind] = self.refused_by_kind.get(kind, 0) + 1
        hint = look.hints[-1]
        log.warning(
            "refused model tenant=%r revision=%r: %s; keeping the previous one",
            hint.tenant,
            hint.revision,
            look.refused,
            extra={"tenant": hint.tenant, "revision": hint.revision},
        )
        self._emit(look)

    def _emit(self, look: StoreLook) -> None:
        if self._on_look is not None:
            self._on_look(look)


def _line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
