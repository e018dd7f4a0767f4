"""The consumer's metrics and health: every series `slaops consume` exposes is defined here.

`ConsumerService` calls a `ConsumerHooks` at a few points of its loop (a poll came
back, a batch was handled, offsets were committed, partitions moved);
`ConsumerHooks` itself does nothing (metrics off, unit tests, benchmarks), and
`ConsumerMetrics` records into its own `CollectorRegistry`. Work is per batch, never
per record: the core already counts what a batch did (`BatchResult`), and gauges that
walk every tenant (window memory) are refreshed at most every `refresh_s`.

No series has a tenant label: with 10,000 tenants that would be 10,000 series per
metric. Labels are bounded sets: dead-letter reasons, retrain reasons, detector
kinds, refusal kinds, clear reasons, and the partitions of the telemetry topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, get_args

from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumer.core import BatchResult, IngestCore
from consumer.detectors import DETECTORS
from consumer.ood import DETECTOR as OOD_DETECTOR
from kernel.kafka import KafkaRecord
from kernel.model_follower import REFUSAL_KINDS
from kernel.observability import FAST_BUCKETS, Health, consumer_lags
from schemas import RejectReason
from schemas.warnings import ClearReason

if TYPE_CHECKING:
    from consumer.follower import AnswerFollower

_RETRAIN_REASONS = ("cold_start", "data_drift", "performance_drift", "more_history")


class ConsumerHooks:
    """What the consumer loop reports; this base reports nowhere (metrics off).

    Every method is cheap and never raises into the loop.
    """

    def polled(self) -> None:
        """A `consume` call came back (the loop is alive)."""

    def assigned(self, partitions: list[TopicPartition], resume_at: Mapping[int, int]) -> None:
        """Partitions assigned, each at the offset it starts from; replayed up to `resume_at`."""

    def revoked(self, partitions: Iterable[int]) -> None:
        """Partitions revoked or lost."""

    def batch(self, records: Sequence[KafkaRecord], result: BatchResult, seconds: float) -> None:
        """A batch was processed, delivered and committed (or its commit failed)."""

    def committed(self) -> None:
        """A batch's offsets were committed."""

    def model_swapped(self) -> None:
        """A loaded model went live in the core."""

    def warnings_sent(self, result: BatchResult) -> None:
        """Warning clears produced outside a batch (the tenants of revoked partitions)."""

    def stopped(self) -> None:
        """The loop has ended."""


class ConsumerMetrics(ConsumerHooks):
    """The consumer's series in their own registry, and its `Health`.

    `core` and `follower` are read at scrape time (counts the follower keeps itself)
    or per batch (the lag is of the core's `telemetry_topic`); `positions` (partition
    numbers → the consumer's next offsets, a local call) tells when a replayed
    partition has caught up, for readiness.
    """

    def __init__(
        self,
        *,
        core: IngestCore,
        liveness_timeout_s: float = 300.0,
        follower: AnswerFollower | None = None,
        positions: Callable[[list[int]], dict[int, int]] | None = None,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self.health = Health(liveness_timeout_s, clock=clock)
        self._core = core
        self._topic = core.config.telemetry_topic
        self._positions = positions
        self._refresh_s = refresh_s
        self._clock = clock
        self._next_refresh = 0.0
        self._expired_seen = 0
        self._polled_at: float | None = None
        self._joined = False
        self._assigned: set[int] = set()
        #: Partition → the offset its replay must reach before the state is rebuilt.
        self._rebuilding: dict[int, int] = {}
        r = self.registry
        self.records_consumed = Counter(
            "slaops_consumer_records_consumed",
            "Telemetry records handed to the core (replayed ones included).",
            registry=r,
        )
        self.records_valid = Counter(
            "slaops_consumer_records_valid", "Records that were valid telemetry.", registry=r
        )
        self.records_replayed = Counter(
            "slaops_consumer_records_replayed",
            "Records re-read to rebuild state after a restart or rebalance.",
            registry=r,
        )
        self.dead_letters = Counter(
            "slaops_consumer_dead_letters",
            "Records dead-lettered, by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "slaops_consumer_batch_duration_seconds",
            "Time to process a batch: validate, window, detect, forecast, deliver, commit.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.poll_to_commit = Histogram(
            "slaops_consumer_poll_to_commit_seconds",
            "From a poll's return to the commit of the batch it brought.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "slaops_consumer_lag_records",
            "Records of the telemetry topic not yet committed, per partition "
            "(librdkafka statistics).",
            ["partition"],
            registry=r,
        )
        self.tenants = Gauge("slaops_consumer_tenants", "Tenants held in memory.", registry=r)
        self.expired = Counter(
            "slaops_consumer_tenants_expired",
            "Tenants that left for idleness (tenant_idle_s, probation_idle_s); a held "
            "tenant is never evicted for a newcomer (refusals: dead letters by reason).",
            registry=r,
        )
        self.window_bytes = Gauge(
            "slaops_consumer_window_bytes", "Bytes held by the tenants' windows.", registry=r
        )
        self.alarms = Counter(
            "slaops_consumer_drift_alarms",
            "Drift alarms of the detectors, by reason and detector.",
            ["reason", "detector"],
            registry=r,
        )
        self.requests = Counter(
            "slaops_consumer_retrain_requests",
            "Retrain requests sent, by reason and detector.",
            ["reason", "detector"],
            registry=r,
        )
        self.held_back = Counter(
            "slaops_consumer_requests_held_back",
            "Retrain requests the gate held back (cooldown, or one in flight), by reason.",
            ["reason"],
            registry=r,
        )
        self.models_swapped = Counter(
            "slaops_consumer_models_swapped",
            "Loaded models that went live in the core (hot swaps included).",
            registry=r,
        )
        self.forecasts = Counter("slaops_consumer_forecasts", "Live forecasts made.", registry=r)
        self.forecasts_scored = Counter(
            "slaops_consumer_forecasts_scored",
            "Live forecasts scored against the interval they forecast.",
            registry=r,
        )
        self.forecast_errors = Counter(
            "slaops_consumer_forecast_errors",
            "Scored forecasts whose decision (at the model's threshold) was wrong; "
            "the live error rate is its rate over slaops_consumer_forecasts_scored_total's.",
            registry=r,
        )
        self.forecast_holdout_errors = Counter(
            "slaops_consumer_forecast_holdout_errors",
            "The errors the scored forecasts' models made on their holdouts, in expectation "
            "(each scored forecast adds its model's holdout error rate): the yardstick of "
            "slaops_consumer_forecast_errors_total (alert SlaopsLiveErrorAboveHoldout).",
            registry=r,
        )
        self.forecasts_non_finite = Counter(
            "slaops_consumer_forecasts_non_finite",
            "Forecasts that were not finite numbers: neither published nor scored.",
            registry=r,
        )
        self.warnings_raised = Counter(
            "slaops_consumer_warnings_raised",
            "Early warnings raised (rising edges sent to the warnings topic).",
            registry=r,
        )
        self.warnings_cleared = Counter(
            "slaops_consumer_warnings_cleared",
            "Early warnings cleared, by reason (risk_passed, breach_started, model_swapped, "
            "tenant_left).",
            ["reason"],
            registry=r,
        )
        self.false_warnings = Counter(
            "slaops_consumer_false_warnings",
            "Notifications (a raise, then every 12 intervals while on) with no breach in the "
            "12 intervals after, counted as their labels arrive.",
            registry=r,
        )
        self.tenants_over_budget = Gauge(
            "slaops_consumer_tenants_over_budget",
            "Tenants whose live warning threshold is raised: their false warnings ran over "
            "warning_budget_per_day.",
            registry=r,
        )
        self.ready = Gauge(
            "slaops_consumer_ready", "1 when /readyz answers ready, else 0.", registry=r
        )
        self.ready.set_function(lambda: float(self.health.readiness()[0]))
        for reject in RejectReason:
            self.dead_letters.labels(reject.value)
        for reason in _RETRAIN_REASONS:
            self.held_back.labels(reason)
        for clear in get_args(ClearReason):
            self.warnings_cleared.labels(clear)
        for kind in DETECTORS:
            self.alarms.labels("data_drift", kind)
            self.alarms.labels("performance_drift", kind)
        self.alarms.labels("data_drift", OOD_DETECTOR)
        self.health.beat("poll_loop")
        self.health.require("group_joined", lambda: self._joined)
        self.health.require("state_rebuilt", self._rebuilt)
        if follower is not None:
            r.register(_FollowerCollector(follower))
            inner = follower.inner
            self.health.watch("model_follower", lambda: inner.last_progress)
            self.health.require("models_caught_up", follower.caught_up.is_set)

    # -- librdkafka statistics (stats_cb, called from inside `consume`) --------------
    def on_stats(self, stats_json: str) -> None:
        try:
            lags = consumer_lags(stats_json, self._topic)
        except (ValueError, TypeError, AttributeError):
            return
        for partition, lag in lags.items():
            if partition in self._assigned:
                self.lag.labels(str(partition)).set(lag)

    # -- hooks ----------------------------------------------------------------------
    def polled(self) -> None:
        self._polled_at = self._clock()
        self.health.beat("poll_loop")

    def assigned(self, partitions: list[TopicPartition], resume_at: Mapping[int, int]) -> None:
        self._joined = True
        self._assigned = self._assigned | {tp.partition for tp in partitions}
        for tp in partitions:
            end = resume_at.get(tp.partition, -1)
            if tp.offset >= 0 and end > tp.offset:
                self._rebuilding[tp.partition] = end
        self._check_rebuilt()

    def revoked(self, partitions: Iterable[int]) -> None:
        numbers = set(partitions)
        self._assigned = self._assigned - numbers
        for partition in numbers:
            self._rebuilding.pop(partition, None)
            try:
                self.lag.remove(str(partition))
            except KeyError:
                pass

    def batch(self, records: Sequence[KafkaRecord], result: BatchResult, seconds: float) -> None:
        self.batch_seconds.observe(seconds)
        self.records_consumed.inc(len(records))
        self.records_valid.inc(result.valid)
        if result.replayed:
            self.records_replayed.inc(result.replayed)
        for letter in result.dead_letters:
            self.dead_letters.labels(letter.reason.value).inc()
        for request in result.requests:
            self.requests.labels(request.reason, request.detector).inc()
        for reason, detector in result.alarms:
            self.alarms.labels(reason, detector).inc()
        for reason in result.held_back:
            self.held_back.labels(reason).inc()
        if result.forecasts_made:
            self.forecasts.inc(result.forecasts_made)
        if result.forecasts_scored:
            self.forecasts_scored.inc(result.forecasts_scored)
            self.forecast_errors.inc(result.forecast_errors)
            self.forecast_holdout_errors.inc(result.forecast_holdout_errors)
        if result.forecasts_non_finite:
            self.forecasts_non_finite.inc(result.forecasts_non_finite)
        self.warnings_sent(result)
        core = self._core
        self.tenants.set(len(core))
        if core.expired > self._expired_seen:
            self.expired.inc(core.expired - self._expired_seen)
            self._expired_seen = core.expired
        now = self._clock()
        if now >= self._next_refresh:
            self._next_refresh = now + self._refresh_s
            held = list(core.tenants())
            self.window_bytes.set(sum(state.window.nbytes for state in held))
            self.tenants_over_budget.set(sum(state.warning.over_budget for state in held))
        if self._rebuilding:
            self._check_rebuilt()

    def committed(self) -> None:
        if self._polled_at is not None:
            self.poll_to_commit.observe(self._clock() - self._polled_at)

    def model_swapped(self) -> None:
        self.models_swapped.inc()

    def warnings_sent(self, result: BatchResult) -> None:
        if result.warnings_raised:
            self.warnings_raised.inc(result.warnings_raised)
        for reason in result.warnings_cleared:
            self.warnings_cleared.labels(reason).inc()
        if result.false_warnings:
            self.false_warnings.inc(result.false_warnings)

    def stopped(self) -> None:
        self.health.stop()

    # -- readiness ------------------------------------------------------------------
    def _rebuilt(self) -> bool:
        return not self._rebuilding

    def _check_rebuilt(self) -> None:
        if self._positions is None or not self._rebuilding:
            return
        try:
            positions = self._positions(sorted(self._rebuilding))
        except Exception:  # a position we cannot read yet: not rebuilt yet
            return
        for partition, offset in positions.items():
            if offset >= self._rebuilding.get(partition, 0):
                self._rebuilding.pop(partition, None)


class _FollowerCollector(Collector):
    """The model follower's own counts, read at scrape time (it runs in its own thread)."""

    def __init__(self, follower: AnswerFollower) -> None:
        self._follower = follower

    def collect(self) -> Iterable[Metric]:
        inner = self._follower.inner
        loaded = CounterMetricFamily(
            "slaops_consumer_models_loaded",
            "Models the follower loaded from the store (verified, the store's newest).",
        )
        loaded.add_metric([], inner.loaded)
        yield loaded
        refused = CounterMetricFamily(
            "slaops_consumer_models_refused",
            "Announced models refused, by reason.",
            labels=["reason"],
        )
        counts = dict(inner.refused_by_kind)
        for kind in REFUSAL_KINDS:
            refused.add_metric([kind], counts.get(kind, 0))
        yield refused
        restarts = CounterMetricFamily(
            "slaops_consumer_model_follower_restarts",
            "Times the model follower thread was restarted (died or stuck).",
        )
        restarts.add_metric([], inner.restarts)
        yield restarts
        progress = GaugeMetricFamily(
            "slaops_consumer_model_follower_last_progress_timestamp_seconds",
            "When the model follower last completed a poll (Unix time); a stuck follower "
            "shows as an old timestamp.",
        )
        # The follower keeps monotonic time; the gauge says Unix time.
        progress.add_metric([], time.time() - (time.monotonic() - inner.last_progress))
        yield progress

    def describe(self) -> Iterable[Metric]:
        return self.collect()
