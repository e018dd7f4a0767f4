"""Settings of `slaops consume` (env `SLAOPS_*`, each also a CLI flag)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from consumer.window import DEFAULT_CAPACITY
from kernel.settings import StoreSettings, TopicName, TopicSettings
from schemas import topics
from schemas.telemetry import DEFAULT_MAX_MESSAGE_BYTES


class ConsumerSettings(StoreSettings, TopicSettings):
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
    follow_models: bool = Field(
        default=True,
        description="Load each tenant's live model from the store and watch its errors.",
    )
    publish_forecasts: bool = Field(
        default=False, description="Publish every live forecast to forecasts_topic."
    )
    performance_detector: Literal["adwin", "ddm", "hddm_w"] = Field(
        default="adwin", description="River detector on a live model's misclassifications."
    )
    performance_params: dict[str, float] = Field(
        default_factory=dict, description="Parameters of the performance detector as JSON."
    )
    performance_warmup: int = Field(
        default=100, ge=0, description="Scored forecasts of a new model before alarms count."
    )
    performance_settle_events: int = Field(
        default=240,
        ge=0,
        description="Events after a performance alarm before the request, so the "
        "retraining window holds post-change data.",
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
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=256,
        le=16 * 1024 * 1024,
        description="Raw telemetry messages larger than this are dead-lettered unparsed.",
    )
    window_span_s: float = Field(
        default=86_400.0, gt=0, description="Time span of a tenant's window (event time)."
    )
    window_max_events: int = Field(
        default=DEFAULT_CAPACITY,
        ge=10,
        le=1_000_000,
        description="Maximum events in a tenant's window.",
    )
    max_tenants: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Tenants held in memory; the least recently active is evicted beyond it.",
    )
    data_drift: bool = Field(
        default=True,
        description=(
            "Request retraining on data drift of the metric features (off for metrics with a "
            "strong daily cycle, which per-feature detectors read as drift)."
        ),
    )
    detector: Literal["adwin", "page_hinkley", "kswin"] = Field(
        default="adwin", description="River data-drift detector, one per feature."
    )
    detector_params: dict[str, float] = Field(
        default_factory=dict,
        description='Detector parameters as JSON, e.g. {"delta": 0.002} for ADWIN.',
    )
    detector_stride: int | None = Field(
        default=None,
        ge=1,
        description="Feed the detector means of this many events (default: per detector).",
    )
    drift_min_features: int = Field(
        default=2, ge=1, le=6, description="Features that must agree before drift is declared."
    )
    drift_agreement_events: int = Field(
        default=200, ge=1, description="Agreeing features must fire within this many events."
    )
    drift_warmup_events: int = Field(
        default=200, ge=10, description="Events that set a tenant's reference mean/std."
    )
    cold_start: bool = Field(
        default=True, description="Request a first model once a tenant's window is trainable."
    )
    cold_start_min_events: int = Field(
        default=500, ge=10, description="Labelled events a tenant needs before its first model."
    )
    cold_start_min_per_class: int = Field(
        default=10, ge=1, description="Events of each class (breach, no breach) needed too."
    )
    cooldown_s: float = Field(
        default=3_600.0, ge=0, description="Event-time pause between a tenant's requests."
    )
    request_timeout_s: float = Field(
        default=7_200.0,
        gt=0,
        description="Event time after which an unanswered request no longer blocks a new one.",
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
        ]
        if len(set(names)) != len(names):
            raise ValueError(
                "telemetry, DLQ, retrain, checkpoint, models and forecasts topics must all differ"
            )
        return self
