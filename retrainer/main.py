"""Wires `slaops retrain`: settings → store, tenant key, clients → handler → service.

What is the retrainer's own: its configs (`prepare`, no network), its topics and its
service object. Start-up itself (broker, topics, signals) is the application's runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from kernel.backoff import Backoff
from kernel.errors import ConfigError
from kernel.features import FeatureSpec
from kernel.kafka import (
    DeliveryTracker,
    TopicSpec,
    base_config,
    make_group_consumer,
    make_producer,
    slaops_topics,
)
from kernel.store import ModelStore
from retrainer.fits import FitBackend, LocalFits
from retrainer.observability import RetrainerMetrics
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.replay import ReplayLimits, TenantRows, plan_replay, replay_ranges
from retrainer.search import SearchConfig, default_grid
from retrainer.selection import EvidenceRule
from retrainer.service import RetrainerService, RetryPolicy
from retrainer.settings import RetrainerSettings
from schemas import RetrainRequested


def _local_fits(settings: RetrainerSettings) -> FitBackend:
    return LocalFits()


def _dask_fits(settings: RetrainerSettings) -> FitBackend:
    """The dask extra is imported here, only when it is asked for."""
    try:
        from retrainer.dask_fits import DaskFits
    except ImportError as exc:
        raise ConfigError(
            "search_backend=dask (SLAOPS_SEARCH_BACKEND or --search-backend) needs "
            f"dask.distributed, which is not installed ({exc}): pip install 'slaops[dask]', "
            "or set search_backend=local"
        ) from exc
    if settings.dask_scheduler is None:  # the settings refuse this; mypy does not know
        raise ConfigError(
            "search_backend=dask needs dask_scheduler (SLAOPS_DASK_SCHEDULER or "
            "--dask-scheduler), e.g. tcp://dask-scheduler:8786"
        )
    return DaskFits(
        settings.dask_scheduler,
        tls=settings.dask_tls(),
        allow_insecure=settings.dask_allow_insecure,
    )


#: search_backend -> where the fits run.
FIT_BACKENDS: dict[str, Callable[[RetrainerSettings], FitBackend]] = {
    "local": _local_fits,
    "dask": _dask_fits,
}


def fit_backend(settings: RetrainerSettings) -> FitBackend:
    """Where the searches' fits run (`search_backend`); raises `ConfigError` if it cannot."""
    return FIT_BACKENDS[settings.search_backend](settings)


def training_config(settings: RetrainerSettings) -> TrainingConfig:
    grid = settings.search_grid()
    search = SearchConfig(
        strategy=settings.strategy,
        n_splits=settings.n_splits,
        n_jobs=settings.n_jobs,
        seed=settings.seed,
        max_epochs=settings.max_epochs,
        batch_size=settings.batch_size,
        patience=settings.patience,
        n_iter=settings.n_iter,
        n_trials=settings.n_trials,
        grid=grid if grid is not None else default_grid(),
        fits=fit_backend(settings),
    )
    return TrainingConfig(
        search=search,
        horizon=settings.horizon,
        features=FeatureSpec(lags=settings.lags, rolling_window=settings.rolling_window),
        min_rows=settings.min_rows,
        evidence=EvidenceRule(
            budget_per_day=settings.warning_budget_per_day,
            min_positives=settings.min_positives,
            min_fresh_onsets=settings.min_fresh_onsets,
            confidence=settings.champion_confidence,
            seed=settings.seed,
        ),
    )


@dataclass(frozen=True)
class RetrainerParts:
    """What start-up builds from the settings once, before any connection."""

    training: TrainingConfig
    store: ModelStore
    tenant_key: SecretStr
    #: The service's metrics and health (None with metrics_port 0).
    metrics: RetrainerMetrics | None = None


def prepare(settings: RetrainerSettings) -> RetrainerParts:
    """Build the configs and open the store; bad settings raise `SlaopsError` here."""
    training = training_config(settings)
    key = settings.tenant_secret()
    if not settings.metrics_port:
        return RetrainerParts(training, settings.open_model_store(), key)
    metrics = RetrainerMetrics(liveness_timeout_s=settings.liveness_timeout_s)
    store = settings.open_model_store(sleep=metrics.store_sleep)  # its retries are counted
    return RetrainerParts(training, store, key, metrics)


def replay_limits(settings: RetrainerSettings) -> ReplayLimits:
    """What a request may name (its ranges' topic and extent), from the settings."""
    return ReplayLimits(
        topic=settings.telemetry_topic,
        max_ranges=settings.max_request_ranges,
        max_offsets=settings.max_request_offsets,
    )


def build_handler(
    settings: RetrainerSettings,
    parts: RetrainerParts,
    replay: Callable[[RetrainRequested], TenantRows],
) -> RequestHandler:
    """The request handler on `parts`' store, replaying with `replay`.

    The service replays from the broker; `slaops backtest` from its input file.
    """
    metrics = parts.metrics
    return RequestHandler(
        store=parts.store if metrics is None else metrics.observed_store(parts.store),
        store_uri=settings.store_uri(),
        tenant_key=parts.tenant_key,
        training=parts.training,
        replay=replay if metrics is None else metrics.timed_replay(replay),
        topics=OutcomeTopics(
            models=settings.models_topic,
            failures=settings.failures_topic,
            decisions=settings.decisions_topic,
        ),
    )


def build_service(
    settings: RetrainerSettings, parts: RetrainerParts | None = None
) -> RetrainerService:
    """The service with its Kafka clients (`parts` from `prepare`, built if not given)."""
    parts = prepare(settings) if parts is None else parts
    client = base_config(settings)
    limits = replay_limits(settings)

    def replay_request(request: RetrainRequested) -> TenantRows:
        return replay_ranges(
            client,
            plan_replay(request.source, limits),
            tenant=request.tenant,
            max_bytes=settings.max_message_bytes,
            timeout_s=settings.replay_timeout_s,
            rule=settings.time_rule(),
        )

    handler = build_handler(settings, parts, replay_request)
    consumer = make_group_consumer(
        settings, settings.group_id, **{"max.poll.interval.ms": settings.max_poll_interval_ms}
    )
    return RetrainerService(
        handler=handler,
        consumer=consumer,
        tracker=DeliveryTracker(make_producer(settings)),
        retrain_topic=settings.retrain_topic,
        retry=RetryPolicy(
            Backoff(settings.retry_backoff_s, settings.retry_max_backoff_s),
            settings.max_attempts,
        ),
        hooks=parts.metrics,
        max_request_bytes=settings.max_request_bytes,
        max_queued=settings.max_queued,
    )


def describe(settings: RetrainerSettings) -> str:
    return (
        f"retraining topic={settings.retrain_topic} group={settings.group_id} "
        f"store={settings.store_uri()} strategy={settings.strategy} "
        f"fits={fit_backend(settings).describe()}"
    )


def topic_specs(settings: RetrainerSettings) -> list[TopicSpec]:
    return slaops_topics(
        settings.telemetry_partitions,
        retrain=settings.retrain_topic,
        models=settings.models_topic,
        failures=settings.failures_topic,
        decisions=settings.decisions_topic,
    )
