"""The retrainer's metrics and health: every series `slaops retrain` exposes is defined here.

`RetrainerService` calls a `RetrainerHooks` at a few points (a poll came back, a
request arrived, requests were coalesced, a request was answered or will be retried);
`RetrainerHooks` itself does nothing, `RetrainerMetrics` records into its own
`CollectorRegistry`. Replay and publish are timed by wrapping what the handler is
given (`timed_replay`, `observed_store`), so the request handler knows nothing of
metrics. No series has a tenant label.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kernel.errors import StoreConflict, StoreError, StoreNotFound, StoreUnavailable
from kernel.observability import FAST_BUCKETS, SLOW_BUCKETS, Health
from kernel.store import ModelStore
from retrainer.publisher import RequestOutcome
from schemas import RetrainFailed
from schemas.outcomes import FailureReason

T = TypeVar("T")
R = TypeVar("R")

#: Outcome labels of `slaops_retrainer_requests_total`.
OUTCOMES = ("published", "champion_kept", "failed", "deduplicated", "coalesced")
_KIND_LABEL = {
    "published": "published",
    "kept": "champion_kept",
    "failed": "failed",
    "duplicates": "deduplicated",
}
#: Request arrival times kept for the request-to-announcement time (bounded).
_ARRIVALS_KEPT = 10_000


def store_error_kind(exc: BaseException) -> str:
    """A store error in one word: unavailable, conflict, not_found or refused."""
    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    if isinstance(exc, StoreConflict):
        return "conflict"
    if isinstance(exc, StoreNotFound):
        return "not_found"
    return "refused"


class RetrainerHooks:
    """What the retrainer loop reports; this base reports nowhere (metrics off)."""

    def polled(self) -> None:
        """A `consume` call came back (the loop is alive)."""

    def assigned(self) -> None:
        """The group gave this member its partitions (possibly none)."""

    def received(self, partition: int, offset: int, timestamp_ms: int | None) -> None:
        """A request record arrived (readable or not)."""

    def invalid(self, partition: int, offset: int) -> None:
        """An unreadable request was answered with a `RetrainFailed`."""

    def coalesced(self, count: int) -> None:
        """`count` waiting requests were folded into a newer one of the same tenant."""

    def finished(self, outcome: RequestOutcome, offsets: Iterable[tuple[int, int]]) -> None:
        """A request's outcome was acknowledged; `offsets` are the requests it answered."""

    def retried(self, exc: BaseException) -> None:
        """A request failed and will be tried again later."""

    def stopped(self) -> None:
        """The loop has ended."""


class RetrainerMetrics(RetrainerHooks):
    """The retrainer's series in their own registry, and its `Health`."""

    def __init__(
        self,
        *,
        liveness_timeout_s: float = 300.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.health = Health(liveness_timeout_s, clock=clock)
        self._wall = wall_clock
        self._joined = False
        self._arrivals: OrderedDict[tuple[int, int], float] = OrderedDict()
        r = self.registry
        self.received_total = Counter(
            "slaops_retrainer_requests_received",
            "Retrain request records read (readable or not).",
            registry=r,
        )
        self.requests = Counter(
            "slaops_retrainer_requests",
            "Retrain requests by outcome: published, champion_kept, failed, deduplicated "
            "(already served), coalesced (folded into a newer request of the tenant).",
            ["outcome"],
            registry=r,
        )
        self.failed = Counter(
            "slaops_retrainer_requests_failed",
            "Requests answered with RetrainFailed, by reason.",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "slaops_retrainer_request_retries",
            "Requests that failed (store down, delivery) and will be served again later.",
            registry=r,
        )
        self.replay_seconds = Histogram(
            "slaops_retrainer_replay_duration_seconds",
            "Time to replay a request's offset ranges.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.search_seconds = Histogram(
            "slaops_retrainer_search_duration_seconds",
            "Time of a search (cross-validated fits, before the refit).",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.publish_seconds = Histogram(
            "slaops_retrainer_publish_duration_seconds",
            "Time to publish a model to the store (one commit).",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.request_to_announcement = Histogram(
            "slaops_retrainer_request_to_announcement_seconds",
            "From a request reaching sla.retrain (its record time) to its model's "
            "announcement being acknowledged; coalesced requests count from the oldest.",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.fits = Counter(
            "slaops_retrainer_fits", "Cross-validation fits run by the searches.", registry=r
        )
        self.store_retries = Counter(
            "slaops_retrainer_store_retries",
            "Store operations retried after a transient failure (inside one operation).",
            registry=r,
        )
        self.store_errors = Counter(
            "slaops_retrainer_store_errors",
            "Store operations that failed, by kind (unavailable, conflict, not_found, refused).",
            ["kind"],
            registry=r,
        )
        self.ready = Gauge(
            "slaops_retrainer_ready", "1 when /readyz answers ready, else 0.", registry=r
        )
        self.ready.set_function(lambda: float(self.health.readiness()[0]))
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        for reason in get_args(FailureReason):
            self.failed.labels(reason)
        for kind in ("unavailable", "conflict", "not_found", "refused"):
            self.store_errors.labels(kind)
        self.health.beat("poll_loop")
        self.health.require("group_joined", lambda: self._joined)

    # -- wrappers of what the request handler is given -------------------------------
    def timed_replay(self, replay: Callable[[T], R]) -> Callable[[T], R]:
        """`replay`, timed (failures too: a range that is gone still took its time)."""

        def timed(request: T) -> R:
            with self.replay_seconds.time():
                return replay(request)

        return timed

    def observed_store(self, store: ModelStore) -> ModelStore:
        """`store` with its publishes timed and its errors counted by kind."""
        return cast(ModelStore, _ObservedStore(store, self))

    def store_sleep(self, seconds: float) -> None:
        """The store's pause before a retry: counted, then slept."""
        self.store_retries.inc()
        time.sleep(seconds)

    # -- hooks ----------------------------------------------------------------------
    def polled(self) -> None:
        self.health.beat("poll_loop")

    def assigned(self) -> None:
        self._joined = True

    def received(self, partition: int, offset: int, timestamp_ms: int | None) -> None:
        self.received_total.inc()
        arrived = timestamp_ms / 1000 if timestamp_ms and timestamp_ms > 0 else self._wall()
        self._arrivals[(partition, offset)] = arrived
        while len(self._arrivals) > _ARRIVALS_KEPT:
            self._arrivals.popitem(last=False)

    def invalid(self, partition: int, offset: int) -> None:
        self._arrivals.pop((partition, offset), None)
        self.requests.labels("failed").inc()
        self.failed.labels("invalid_request").inc()

    def coalesced(self, count: int) -> None:
        self.requests.labels("coalesced").inc(count)

    def finished(self, outcome: RequestOutcome, offsets: Iterable[tuple[int, int]]) -> None:
        arrivals = [self._arrivals.pop(position, None) for position in offsets]
        self.requests.labels(_KIND_LABEL.get(outcome.kind, outcome.kind)).inc()
        if outcome.kind == "failed":
            for _topic, _key, event in outcome.events:
                if isinstance(event, RetrainFailed):
                    self.failed.labels(event.reason).inc()
        if outcome.training is not None and outcome.training.result is not None:
            self.search_seconds.observe(outcome.training.result.search_seconds)
            self.fits.inc(outcome.training.result.n_fits)
        known = [a for a in arrivals if a is not None]
        if outcome.kind == "published" and known:
            self.request_to_announcement.observe(max(0.0, self._wall() - min(known)))

    def retried(self, exc: BaseException) -> None:
        self.retries.inc()

    def stopped(self) -> None:
        self.health.stop()


class _ObservedStore:
    """A `ModelStore` passing every call through; publishes timed, errors counted."""

    def __init__(self, inner: ModelStore, metrics: RetrainerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def publish(self, tenant_hash: str, files: Any, **kwargs: Any) -> Any:
        with self._metrics.publish_seconds.time():
            return self._call(self._inner.publish, tenant_hash, files, **kwargs)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except StoreError as exc:
            self._metrics.store_errors.labels(store_error_kind(exc)).inc()
            raise

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(attribute, *args, **kwargs)

        return call
