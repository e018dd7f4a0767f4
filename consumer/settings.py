"""Settings of `slaops consume` (env `SLAOPS_*`, each also a CLI flag).

A setting the core reads has the name of its field in `CoreConfig` (or in the
`DriftConfig` and `PerformanceConfig` inside it), and the default from there:
`consumer.main.core_config` builds the core's config by name. Those configs check
their own fields when built (at start-up, before any connection), so the settings do
not check them again; the settings check what no single config can (the topics, and
rules across them).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, Field, model_validator
from pydantic_settings import NoDecode

from consumer.batch import CoreConfig
from consumer.detectors import DETECTORS, DriftConfig, detector_spec
from consumer.performance import PerformanceConfig
from kernel.settings import (
    EventTimeSettings,
    ObservabilitySettings,
    StoreSettings,
    TopicName,
    TopicSettings,
)
from schemas import topics

#: The defaults below are the core's: one source (`CoreConfig` and the configs in it).
_CORE: Final = CoreConfig()
_DRIFT: Final = DriftConfig()
_PERF: Final = PerformanceConfig()
_KINDS: Final = ", ".join(DETECTORS)


def _known_detector(kind: str) -> str:
    detector_spec(kind)
    return kind


DetectorName = Annotated[str, AfterValidator(_known_detector)]


def _pattern(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"tenant_allow is not a valid regular expression: {exc}") from None
    return value


def _names(value: object) -> object:
    """A comma-separated list (as an env var or flag gives it) as a set of names."""
    if isinstance(value, str):
        return frozenset(name.strip() for name in value.split(",") if name.strip())
    return value


TenantPattern = Annotated[str | None, AfterValidator(_pattern)]
TenantNames = Annotated[frozenset[str], NoDecode, BeforeValidator(_names)]


class ConsumerSettings(StoreSettings, TopicSettings, ObservabilitySettings, EventTimeSettings):
    telemetry_topic: TopicName = Field(default=topics.TELEMETRY, description="Telemetry input.")
    dlq_topic: TopicName = Field(default=topics.TELEMETRY_DLQ, description="Dead letters.")
    retrain_topic: TopicName = Field(default=topics.RETRAIN, description="Retrain requests.")
    checkpoint_topic: TopicName = Field(
        default=topics.CONSUMER_CHECKPOINTS,
        description="Compacted topic recording where each partition's windows start.",
    )
    models_topic: TopicName = Field(default=topics.MODELS, description="ModelPublished in.")
    failures_topic: TopicName = Field(
        default=topics.RETRAIN_FAILURES, description="RetrainFailed in (answers a request)."
    )
    decisions_topic: TopicName = Field(
        default=topics.RETRAIN_DECISIONS, description="ChampionKept in (answers a request)."
    )
    forecasts_topic: TopicName = Field(default=topics.FORECASTS, description="Forecasts out.")
    warnings_topic: TopicName = Field(
        default=topics.WARNINGS,
        description="Warning edges out (raised, cleared) of every tenant with a live model.",
    )
    follow_models: bool = Field(
        default=True,
        description="Load each tenant's live model from the store and watch its errors.",
    )
    publish_forecasts: bool = Field(
        default=_CORE.publish_forecasts,
        description="Publish every live forecast to forecasts_topic.",
    )
    warning_budget_per_day: float = Field(
        default=_CORE.warning_budget_per_day,
        ge=0,
        description="False warnings a tenant-day (counted live, as labels arrive) before "
        "the consumer raises that tenant's warning threshold.",
    )
    performance_detector: DetectorName = Field(
        default=_PERF.performance_detector,
        description=f"Detector ({_KINDS}) on block means of a live model's log loss minus "
        "what its card's out-of-fold record says each forecast earns (persistence's loss "
        "for older cards; cusum compares them with 0 itself).",
    )
    performance_params: dict[str, float] = Field(
        default_factory=dict, description="Parameters of the performance detector as JSON."
    )
    performance_stride: int = Field(
        default=_PERF.performance_stride,
        description="Scored forecasts averaged per detector update.",
    )
    performance_warmup: int = Field(
        default=_PERF.performance_warmup,
        description="Scored forecasts of a new model before alarms count.",
    )
    performance_settle_events: int = Field(
        default=_PERF.performance_settle_events,
        description="Events after a performance alarm before the request, so the "
        "retraining window holds post-change data; a calibration alarm counts them from "
        "where its CUSUM estimates the change began.",
    )
    performance_calibration_threshold: float = Field(
        default=_PERF.performance_calibration_threshold,
        ge=0,
        description="Threshold of the Bernoulli CUSUM that watches whether breaches still "
        "follow forecasts at the rate the card's out-of-fold record says (odds x2 or /2); "
        "0: off.",
    )
    performance_calibration_warmup: int = Field(
        default=_PERF.performance_calibration_warmup,
        ge=0,
        description="Scored forecasts of a new model that measure how its record's rate "
        "differs at go-live; the calibration watch looks for changes beyond that.",
    )
    group_id: str = Field(
        default="slaops-consumer", pattern=r"^[A-Za-z0-9._-]{1,200}$", description="Group id."
    )
    batch_size: int = Field(
        default=50_000,
        ge=1,
        le=200_000,
        description="Messages per poll; large batches amortise per-tenant work across events.",
    )
    poll_timeout_s: float = Field(default=0.5, gt=0, le=60, description="Wait per poll.")
    max_poll_interval_ms: int = Field(
        default=300_000, ge=1_000, description="librdkafka max.poll.interval.ms."
    )
    max_message_bytes: int = Field(
        default=_CORE.max_message_bytes,
        ge=256,
        le=16 * 1024 * 1024,
        description="Raw telemetry messages larger than this are dead-lettered unparsed.",
    )
    window_max_events: int = Field(
        default=_CORE.window_max_events,
        ge=10,
        le=1_000_000,
        description="Maximum events in a tenant's window.",
    )
    max_tenants: int = Field(
        default=_CORE.max_tenants,
        ge=1,
        le=10_000_000,
        description="Tenants held in memory; beyond it a new tenant's events are dead-lettered "
        "(tenant_capacity) until one leaves for idleness: a held tenant is never evicted.",
    )
    data_drift: bool = Field(
        default=_CORE.data_drift,
        description=(
            "Request retraining on data drift of the metric features (off for metrics with a "
            "strong daily cycle, which per-feature detectors read as drift)."
        ),
    )
    detector: DetectorName = Field(
        default=_DRIFT.detector, description=f"Data-drift detector ({_KINDS}), one per feature."
    )
    detector_params: dict[str, float] = Field(
        default_factory=dict,
        description='Detector parameters as JSON, e.g. {"delta": 0.002} for ADWIN.',
    )
    detector_stride: int | None = Field(
        default=_DRIFT.detector_stride,
        description="Feed the detector means of this many events (default: per detector).",
    )
    min_agreeing_features: int = Field(
        default=_DRIFT.min_agreeing_features,
        description="Features whose detectors must agree before data drift is declared.",
    )
    agreement_window: int = Field(
        default=_DRIFT.agreement_window,
        description="Agreeing features must fire within this many events.",
    )
    drift_warmup_events: int = Field(
        default=_DRIFT.drift_warmup_events,
        description="Events that set a tenant's reference mean/std (with drift_seasonal: "
        "the least its first day must hold).",
    )
    drift_seasonal: bool = Field(
        default=_DRIFT.drift_seasonal,
        description="Compare each event with the same hour of the day: the reference is a "
        "per-tenant profile of hourly means learnt over its first full day (UTC), and no "
        "data drift is raised before that day is covered; off: one mean/std over the first "
        "drift_warmup_events events (for telemetry with no daily cycle, detected sooner).",
    )
    cold_start: bool = Field(
        default=_CORE.cold_start,
        description="Request a first model once a tenant's window is trainable.",
    )
    cold_start_min_events: int = Field(
        default=_CORE.cold_start_min_events,
        ge=10,
        description="Labelled events a tenant needs before its first model.",
    )
    cold_start_min_per_class: int = Field(
        default=_CORE.cold_start_min_per_class,
        ge=1,
        description="Events of each class (breach, no breach) needed too.",
    )
    catch_up_lag_s: float = Field(
        default=_CORE.catch_up_lag_s,
        ge=0,
        description="A partition whose newest event in a batch is this far behind the "
        "consumer's clock is a backlog: its tenants' first (and scheduled) requests wait "
        "until it is caught up or their window is full, so they train on the history "
        "that is waiting. 0: never (history replayed with old timestamps).",
    )
    retry_after_fraction: float = Field(
        default=_CORE.retry_after_fraction,
        gt=0,
        le=10,
        description="A tenant whose request was answered without a forecaster asks again "
        "after this fraction of the window it asked with in new events, the wait doubling "
        "per such answer, up to window_max_events.",
    )
    more_history_factor: float = Field(
        default=_CORE.more_history_factor,
        ge=0,
        le=100,
        description="A tenant with a forecaster asks again once its window gives this "
        "multiple of the rows it was trained on (a last step to the full window if that "
        "adds at least the square root of it); 0 or 1: never.",
    )
    recalibration_events: int = Field(
        default=_CORE.recalibration_events,
        ge=0,
        description="Scored forecasts (per head: quiet or not) whose outcomes set the "
        "log-odds offset of a live model's published probabilities, refitted every 24 events "
        "(or horizon, if longer); warnings and the performance monitor use the model's own; "
        "0: off.",
    )
    ood_events: int = Field(
        default=_CORE.ood_events,
        ge=0,
        description="Consecutive events whose inputs lie outside the live forecaster's "
        "training range (out-of-distribution score >= 0.5) before a retrain is asked "
        "(data_drift, detector out_of_distribution); 0: never.",
    )
    tenant_idle_s: float = Field(
        default=_CORE.tenant_idle_s,
        gt=0,
        description="A tenant with no event for this long (consumer clock) leaves, freeing "
        "its place; the only way a held tenant leaves (held tenants are never evicted).",
    )
    probation_idle_s: float = Field(
        default=_CORE.probation_idle_s,
        gt=0,
        description="The same for a tenant whose window still holds fewer than 16 events "
        "(junk keys leave quickly).",
    )
    max_new_tenants_per_min: int = Field(
        default=_CORE.max_new_tenants_per_min,
        ge=0,
        description="New tenants admitted per minute (consumer clock) at most; beyond it and "
        "beyond max_tenants a newcomer's events are dead-lettered (tenant_capacity); replays "
        "after a restart are not held to it; 0: no bound.",
    )
    tenant_allow: TenantPattern = Field(
        default=_CORE.tenant_allow,
        description="A regular expression a new tenant's name must match in full, or its "
        "events are dead-lettered (tenant_not_allowed); unset: any tenant.",
    )
    tenant_admit: TenantNames = Field(
        default=_CORE.tenant_admit,
        description="Comma-separated tenants always admitted, whatever max_tenants, "
        "max_new_tenants_per_min and tenant_allow say (the operator's way to admit one).",
    )
    cooldown_s: float = Field(
        default=_CORE.cooldown_s,
        ge=0,
        description="Pause between a tenant's requests, in event time and in the consumer's "
        "own clock alike (a producer's stamps cannot shorten it).",
    )
    wall_cooldown: bool = Field(
        default=_CORE.wall_cooldown,
        description="Hold cooldown_s on the consumer's clock as well as on event time; "
        "turn off only to run recorded telemetry through the services at speed (as "
        "slaops backtest does, on event time alone).",
    )
    delivery_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Wait for the broker to acknowledge a batch's records before logging and "
        "waiting again (the consumer never gives up on an unreachable broker: it keeps its "
        "state and resumes when the broker returns).",
    )
    request_timeout_s: float = Field(
        default=_CORE.request_timeout_s,
        ge=0,
        description="Wall-clock seconds after which an unanswered request no longer blocks "
        "its tenant's next one (0: requests are never held in flight).",
    )
    lag_interval_s: float = Field(
        default=5.0,
        ge=0.1,
        le=3_600,
        description="How often librdkafka reports statistics, whence the per-partition "
        "consumer lag metric (with metrics_port on).",
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> ConsumerSettings:
        if self.cold_start_min_events > self.window_max_events:
            raise ValueError(
                "cold_start_min_events exceeds window_max_events: a window could never qualify"
            )
        if self.drift_warmup_events >= self.window_max_events:
            raise ValueError("drift_warmup_events must be below window_max_events")
        names = [
            self.telemetry_topic,
            self.dlq_topic,
            self.retrain_topic,
            self.checkpoint_topic,
            self.models_topic,
            self.forecasts_topic,
            self.warnings_topic,
        ]
        if len(set(names)) != len(names):
            raise ValueError(
                "telemetry, DLQ, retrain, checkpoint, models, forecasts and warnings topics "
                "must all differ"
            )
        return self
