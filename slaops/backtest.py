"""`slaops backtest`: recorded telemetry through the live loop's own code, event time the clock.

One process, no broker. The input's records (`slaops.backtest_records`) go through
the consumer's pure core (`consumer.core.IngestCore`, configured from the consumer's
settings by `consumer.main.core_config`); each retrain request it raises is served by
the retrainer's own `RequestHandler` (dedupe, replay of the request's lines of the
input, search, decision, publish to the store with its report); and each answer goes
back through the consumer's `AnswerFollower` exactly as one read from the topics would
(the store decides the newest model, `LiveModel.from_verified`, `core.apply_model`;
a kept champion or a failure only `core.resolve`s the request).

What makes it the live loop's twin:

* **A retrain is answered before the next event of its tenant is processed.** Chunks
  of the input are processed optimistically from a snapshot of the core; when a chunk
  raises a request for a tenant that has later events in the chunk, the core goes back
  to the snapshot and processes up to the triggering event only, answers, and goes on.
  The core's decisions do not depend on where a batch is cut (`consumer.triggers`), so
  the output does not depend on the chunk size either (a test holds it).
* **Event time is the clock**: `now` of each `process` call is the newest event time so
  far, so cooldowns and request timeouts run in event time.
* Forecasts are the core's own JSON (`publish_forecasts` on), written in input order;
  warning edges (`BatchResult.warnings`, where the core has them) likewise.

Requests are served one at a time, in the order they were raised; a search's fits run
on the retrainer's `n_jobs` workers, as in the service.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import numpy as np
import torch
from pydantic import SecretStr

from consumer.follower import AnswerFollower, AnswerTopics
from consumer.main import build_core
from consumer.main import prepare as prepare_consumer
from consumer.settings import ConsumerSettings
from kernel.errors import StoreError
from retrainer.main import build_handler
from retrainer.main import prepare as prepare_retrainer
from retrainer.publisher import RequestHandler, RequestOutcome
from retrainer.settings import RetrainerSettings
from schemas import RetrainFailed, RetrainRequested
from slaops.backtest_records import RecordedTelemetry, file_replay

log = logging.getLogger(__name__)

#: Events per optimistic core call: a request costs a re-run of at most this many.
DEFAULT_CHUNK_EVENTS = 2_000


@dataclass(frozen=True)
class BacktestSetup:
    """The two services' settings (as `slaops consume` and `slaops retrain` take them)."""

    consumer: ConsumerSettings
    retrainer: RetrainerSettings
    chunk_events: int = DEFAULT_CHUNK_EVENTS


@contextmanager
def offline_setup(setup: BacktestSetup) -> Iterator[BacktestSetup]:
    """`setup` as the backtest runs it: forecasts on, no ports, a store and a tenant key.

    Without a store (`store`, or `local_mode`'s), a temporary `file://` store is made
    (and removed after); without a tenant key, a random one for this run.
    """
    consumer, retrainer = setup.consumer, setup.retrainer
    temporary = None
    update: dict[str, Any] = {"metrics_port": 0}
    if consumer.store is None and not consumer.local_mode:
        temporary = tempfile.mkdtemp(prefix="slaops-backtest-")
        update["store"] = f"file://{temporary}/models"
    if consumer.tenant_key is None and not consumer.local_mode:
        update["tenant_key"] = SecretStr(secrets.token_urlsafe(32))
    try:
        yield BacktestSetup(
            consumer=consumer.model_copy(
                update={**update, "publish_forecasts": True, "follow_models": True}
            ),
            retrainer=retrainer.model_copy(update=update),
            chunk_events=setup.chunk_events,
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class RetrainRecord:
    """One request and how it was answered (what the table and the bench report)."""

    tenant: str
    reason: str
    event_id: str
    #: The offset (input line) of the event that raised it.
    offset: int
    kind: str
    #: The `RetrainFailed` reason, when it failed.
    failure: str | None
    forecaster: str | None
    seconds: float
    search_seconds: float
    n_fits: int
    #: The decision's verdict and why (None and "" when the request failed).
    verdict: str | None = None
    detail: str = ""


@dataclass(eq=False)
class ForecastSeries:
    """What the live loop published for each of a tenant's events (NaN/False: nothing)."""

    proba: np.ndarray
    on: np.ndarray
    made: np.ndarray

    @classmethod
    def empty(cls, n: int) -> ForecastSeries:
        return cls(np.full(n, np.nan), np.zeros(n, bool), np.zeros(n, bool))


@dataclass(eq=False)
class BacktestResult:
    telemetry: RecordedTelemetry
    series: dict[str, ForecastSeries]
    retrains: list[RetrainRecord] = field(default_factory=list)
    forecasts: int = 0
    warnings: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    #: Core calls re-run from their snapshot because a request came mid-chunk.
    reruns: int = 0


Progress = Callable[[int, int], None]


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Torch intra-op threads for a while: 1 for forecasts, as the consumer sets it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _micros(stamp: str) -> int:
    return round(datetime.fromisoformat(stamp).timestamp() * 1e6)


class Backtest:
    """Runs the input through the core and the retrainer once (see the module doc).

    Writes every forecast line to `forecasts` and every warning edge to `warnings` (when
    given) as it goes; `run` returns what was published, per tenant, for scoring.
    Raises what the settings raise (`SlaopsError`) when the parts are built; a request
    whose serving raises is retried `max_attempts` times in all and then answered with
    a `RetrainFailed`, as the retrainer service does.
    """

    def __init__(
        self,
        setup: BacktestSetup,
        telemetry: RecordedTelemetry,
        forecasts: IO[bytes] | None = None,
        warnings: IO[bytes] | None = None,
    ) -> None:
        self.setup = setup
        self.telemetry = telemetry
        self._forecasts_out = forecasts
        self._warnings_out = warnings
        consumer = prepare_consumer(setup.consumer)
        assert consumer.models is not None  # noqa: S101 - follow_models is forced on
        self.core = build_core(consumer)
        self.follower = AnswerFollower(
            client_config={},  # never started: answers are handed to it, one by one
            topics=AnswerTopics(
                models_topic=setup.consumer.models_topic,
                failures_topic=setup.consumer.failures_topic,
                decisions_topic=setup.consumer.decisions_topic,
            ),
            authority=consumer.models,
            min_lookup_interval_s=0.0,
        )
        retrainer = prepare_retrainer(setup.retrainer)
        self.handler: RequestHandler = build_handler(
            setup.retrainer, retrainer, file_replay(telemetry, setup.retrainer)
        )
        self.result = BacktestResult(
            telemetry,
            {t: ForecastSeries.empty(len(e)) for t, e in telemetry.tenants.items()},
        )

    # -- the loop -------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> BacktestResult:
        started = time.perf_counter()
        total, lo = len(self.telemetry), 0
        chunk = max(1, self.setup.chunk_events)
        while lo < total:
            stop = min(lo + chunk, total)
            saved = self._snapshot()
            result = self._process(lo, stop)
            cut = self._first_early_request(result.requests, stop)
            if cut is not None:
                self.core = saved
                self.result.reruns += 1
                stop = cut + 1
                result = self._process(lo, stop)
                if cut not in {_raised_at(r) for r in result.requests}:
                    log.warning("offset=%d: the request did not come again on a re-run", cut)
            self._publish(result)
            for request in sorted(result.requests, key=_raised_at):
                self._answer(request)
                if progress is not None:
                    progress(stop, len(self.result.retrains))
            lo = stop
            if progress is not None:
                progress(stop, len(self.result.retrains))
        self.result.seconds = time.perf_counter() - started
        return self.result

    def _process(self, lo: int, hi: int) -> Any:
        """The core's `BatchResult` for records [lo, hi), its clock at the newest of them."""
        now = float(self.telemetry.clock[hi])
        with _threads(1):
            return self.core.process(
                self.telemetry.records[lo:hi], now=None if np.isnan(now) else now
            )

    def _snapshot(self) -> Any:
        """A copy of the core to go back to; live models are shared (never changed)."""
        memo: dict[int, Any] = {id(self.core.config): self.core.config}
        for tenant in self.telemetry.tenants:
            model = self.core.model(tenant)
            if model is not None:
                memo[id(model)] = model
        return copy.deepcopy(self.core, memo)

    def _first_early_request(self, requests: list[RetrainRequested], stop: int) -> int | None:
        """The first offset raising a request whose tenant has later events before `stop`.

        A request whose tenant has none can be answered after the whole chunk: nothing
        of that tenant was processed without its answer.
        """
        early = [
            _raised_at(r)
            for r in requests
            if self.telemetry.span_of(r.tenant, _raised_at(r) + 1, stop)
        ]
        return min(early) if early else None

    # -- outputs --------------------------------------------------------------------
    def _publish(self, result: Any) -> None:
        """Record and write the call's forecasts (in input order) and warning edges."""
        tenants, series = self.telemetry.tenants, self.result.series
        placed: list[tuple[int, bytes]] = []
        for _key, value in result.forecasts:
            document = json.loads(value)
            tenant = document["tenant"]
            held, made = tenants[tenant], series[tenant]
            candidates = held.by_micros.get(_micros(document["ts"]), [])
            index = next((i for i in candidates if not made.made[i]), None)
            if index is None:  # pragma: no cover - the core forecasts input events only
                raise AssertionError(f"a forecast of {tenant} at {document['ts']} matches no event")
            made.made[index] = True
            made.proba[index] = document["probability"]
            made.on[index] = bool(document["breach_expected"])
            placed.append((int(held.at[index]), value))
        placed.sort(key=lambda item: item[0])
        self._write(self._forecasts_out, [value for _offset, value in placed])
        self.result.forecasts += len(placed)
        self.result.dead_letters += len(result.dead_letters)
        edges = [value for _key, value in getattr(result, "warnings", None) or []]
        self._write(self._warnings_out, edges)
        self.result.warnings += len(edges)

    @staticmethod
    def _write(out: IO[bytes] | None, lines: list[bytes]) -> None:
        if out is not None and lines:
            out.write(b"".join(line + b"\n" for line in lines))

    # -- answers --------------------------------------------------------------------
    def _answer(self, request: RetrainRequested) -> None:
        """Serve the request now, and hand its answer to the core as the follower would."""
        started = time.perf_counter()
        outcome = self._serve(request)
        training = outcome.training
        search = training.result if training is not None else None
        self.result.retrains.append(
            RetrainRecord(
                tenant=request.tenant,
                reason=request.reason,
                event_id=request.event_id,
                offset=_raised_at(request),
                kind=outcome.kind,
                failure=next(
                    (e.reason for _t, _k, e in outcome.events if isinstance(e, RetrainFailed)),
                    None,
                ),
                forecaster=training.decision.forecaster if training is not None else None,
                seconds=time.perf_counter() - started,
                search_seconds=search.search_seconds if search is not None else 0.0,
                n_fits=search.n_fits if search is not None else 0,
                verdict=training.decision.verdict if training is not None else None,
                detail=training.decision.detail if training is not None else "",
            )
        )
        for topic, _key, event in outcome.events:
            self.follower.inner.handle(topic, event.model_dump_json().encode())
        for answer in self.follower.drain():
            if answer.model is not None:
                self.core.apply_model(answer.model)
            else:
                self.core.resolve(answer.tenant, answer.request_event_id)

    def _serve(self, request: RetrainRequested) -> RequestOutcome:
        """`handler.handle`, tried `max_attempts` times in all, then a `RetrainFailed`.

        The service's failure policy without its pauses (nothing here recovers with
        time): the reasons are the service's own.
        """
        attempts = self.setup.retrainer.max_attempts
        error: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                return self.handler.handle(request)
            except Exception as exc:  # as the service: one request never stops the run
                error = exc
                log.warning(
                    "tenant=%s event_id=%s attempt %d of %d failed: %s: %s",
                    request.tenant,
                    request.event_id,
                    attempt,
                    attempts,
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
        assert error is not None  # noqa: S101 - max_attempts >= 1
        reason = "store_refused" if isinstance(error, StoreError) else "unexpected_error"
        detail = f"{type(error).__name__} after {attempts} attempts: {error}"
        return self.handler.failed(request, reason, detail)


def _raised_at(request: RetrainRequested) -> int:
    """The offset of the event that raised `request` (its window ends there)."""
    return max(span.end_offset for span in request.source) - 1
