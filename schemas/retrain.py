"""`RetrainRequested` (`sla.retrain`): the consumer asks the retrainer for a new model.

Anyone who can produce to `sla.retrain` may be hostile, and a request's words end up
in the published card and the fleet page. So every enum-like field is checked against
its registry (`reason`, `detector`, the detail's feature and statistic names),
every list is bounded as the consumer fills it, and a reader takes a request through
`parse_retrain_request`, which refuses one over `MAX_REQUEST_BYTES` before it parses.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Annotated, Final, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.errors import SlaopsError
from schemas.telemetry import FEATURES, TenantSlug
from schemas.topics import TOPIC_NAME_PATTERN

__all__ = [
    "DRIFT_DETECTORS",
    "MAX_DETAIL_STATISTICS",
    "MAX_REQUEST_BYTES",
    "MAX_SOURCE_RANGES",
    "DetectorDetails",
    "DetectorName",
    "OffsetRange",
    "RequestTooLarge",
    "RetrainReason",
    "RetrainRequested",
    "SignalFeature",
    "parse_retrain_request",
    "retrain_event_id",
]

#: Why a retrain is asked. `more_history` (added later; every earlier event still
#: validates): the tenant's history has grown to a multiple of what its forecaster was
#: trained on. A retry of a tenant with no forecaster is a
#: `cold_start` whose `detector` is "retry"; inputs out of the forecaster's training
#: range are `data_drift` with detector "out_of_distribution".
RetrainReason = Literal["cold_start", "data_drift", "performance_drift", "manual", "more_history"]
TopicName = Annotated[str, StringConstraints(pattern=TOPIC_NAME_PATTERN)]
EventId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]

#: The detector kinds of `consumer.detectors.DETECTORS` (a test keeps the two equal):
#: they raise `data_drift` and `performance_drift`.
DRIFT_DETECTORS: Final = ("adwin", "page_hinkley", "kswin", "cusum")
#: Every `detector` a request may name: the drift kinds, then the requests no detector
#: raises (`consumer.schedule`: cold start, its retry, more history), inputs out of the
#: training range (`consumer.ood`) and a person's request.
DetectorName = Literal[
    "adwin",
    "page_hinkley",
    "kswin",
    "cusum",
    "cold_start",
    "retry",
    "more_history",
    "out_of_distribution",
    "manual",
]
#: What a signal may name as its features: the metrics (data drift), the performance
#: watches (`consumer.performance`) and the out-of-distribution score (`consumer.ood`).
SignalFeature = Literal[
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "error_rate",
    "cpu_util",
    "rps",
    "calibration",
    "log_loss",
    "ood_score",
]
if not set(FEATURES) <= set(get_args(SignalFeature)):  # pragma: no cover - a bug
    raise RuntimeError("SignalFeature must name every metric of schemas.telemetry.FEATURES")
#: A statistic's name: `name` or `feature.name`, lower-case words (nothing to render).
StatisticName = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}(\.[a-z][a-z0-9_]{0,47})?$")
]
#: Statistics of one signal: data drift writes 4 per feature (24 for six metrics), the
#: performance watch about 15, the schedule 4.
MAX_DETAIL_STATISTICS: Final = 64
#: Offset ranges of a request's lineage: the consumer names one, the tenant's partition's
#: window; `retrainer.replay.ReplayLimits.max_ranges` refuses more by default as well.
MAX_SOURCE_RANGES: Final = 64
#: Own offsets a range may name (`OffsetRange.own_gaps`): a default window's 1,440 fit
#: with room; a longer window's request names its range alone.
MAX_OWN_OFFSETS: Final = 4_096
#: A request's JSON is refused above this size, before it is parsed. The consumer's
#: request (one range) at every bound above, its own offsets at 11 digits a gap, is
#: about 60 KiB.
MAX_REQUEST_BYTES: Final = 64 * 1024


class RequestTooLarge(SlaopsError, ValueError):
    """A request's bytes over the size limit: refused without being parsed."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request of {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class OffsetRange(BaseModel):
    """Offsets `[start_offset, end_offset)` of one partition: the lineage of a window.

    `own_gaps`, when given, names the tenant's own offsets in the range: other tenants
    on the partition may send thousands of records for each of the tenant's, and a
    replay that read them all would cost what they send. The first gap is from
    `start_offset`, each next one from the offset before; `own_offsets()` decodes them.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    topic: TopicName
    partition: int = Field(ge=0)
    start_offset: int = Field(ge=0)
    end_offset: int = Field(ge=0, description="Exclusive: the offset after the last event.")
    own_gaps: list[Annotated[int, Field(ge=0, le=2**53)]] | None = Field(
        default=None,
        max_length=MAX_OWN_OFFSETS,
        description="The tenant's own offsets in the range, as gaps (first from "
        "start_offset, then from the previous offset); absent: every offset in the range.",
    )

    @model_validator(mode="after")
    def _own_offsets_in_range(self) -> OffsetRange:
        gaps = self.own_gaps
        if gaps is None:
            return self
        if not gaps:
            raise ValueError("own_gaps is empty: omit it, or name at least one offset")
        if any(gap == 0 for gap in gaps[1:]):
            raise ValueError("own_gaps after the first must be positive (offsets increase)")
        if self.start_offset + sum(gaps) >= self.end_offset:
            raise ValueError("own_gaps reach beyond end_offset")
        return self

    def own_offsets(self) -> list[int] | None:
        """The tenant's own offsets in the range, increasing (None: not named)."""
        if self.own_gaps is None:
            return None
        return list(itertools.accumulate(self.own_gaps, initial=self.start_offset))[1:]

    def size(self) -> int:
        """Offsets a replay reads for this range: the tenant's own, where named."""
        if self.own_gaps is not None:
            return len(self.own_gaps)
        return max(0, self.end_offset - self.start_offset)

    @classmethod
    def of_offsets(cls, topic: str, partition: int, offsets: list[int]) -> OffsetRange:
        """The range from the first to the last of `offsets` (increasing, at least one),
        naming them where there are at most `MAX_OWN_OFFSETS`.

        >>> r = OffsetRange.of_offsets("t", 0, [5, 9, 10, 4_000])
        >>> (r.start_offset, r.end_offset, r.own_gaps, r.own_offsets())
        (5, 4001, [0, 4, 1, 3990], [5, 9, 10, 4000])
        """
        start, end = offsets[0], offsets[-1] + 1
        gaps = None
        if len(offsets) <= MAX_OWN_OFFSETS and len(offsets) < end - start:
            gaps = [0] + [b - a for a, b in itertools.pairwise(offsets)]
        return cls(
            topic=topic, partition=partition, start_offset=start, end_offset=end, own_gaps=gaps
        )


class DetectorDetails(BaseModel):
    """What the detector saw: which features agreed and the statistics behind it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    features: list[SignalFeature] = Field(
        default_factory=list, max_length=len(get_args(SignalFeature))
    )
    statistic: dict[StatisticName, float] = Field(
        default_factory=dict, max_length=MAX_DETAIL_STATISTICS
    )

    @field_validator("features")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("features must be unique")
        return value


class RetrainRequested(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    event_id: EventId = Field(description="Deterministic: same trigger, same id.")
    tenant: TenantSlug
    reason: RetrainReason
    detector: DetectorName = Field(description="What raised it: a `DetectorName`.")
    details: DetectorDetails = Field(default_factory=DetectorDetails)
    detected_at: AwareDatetime
    source: list[OffsetRange] = Field(min_length=1, max_length=MAX_SOURCE_RANGES)
    n_events: int = Field(ge=0)


def parse_retrain_request(
    value: bytes | None, *, max_bytes: int = MAX_REQUEST_BYTES
) -> RetrainRequested:
    """The request in a record's value, its size checked before a byte is parsed.

    Raises `RequestTooLarge` over `max_bytes`, pydantic's `ValidationError` for
    anything else that is not a valid request.
    """
    data = value or b""
    if len(data) > max_bytes:
        raise RequestTooLarge(len(data), max_bytes)
    return RetrainRequested.model_validate_json(data)


def retrain_event_id(
    tenant: str, reason: RetrainReason, topic: str, partition: int, offset: int
) -> str:
    """Id of a retrain request, derived from what triggered it.

    A consumer that replays the same offset after a crash derives the same id, so the
    retrainer can drop the duplicate.
    """
    material = "\x00".join(
        ("slaops.retrain.v1", tenant, reason, topic, str(partition), str(offset))
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]
