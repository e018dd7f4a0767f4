"""Seeded telemetry for N tenants, with drift and malformed records injected on purpose.

Pure: no Kafka. The stream exists to exercise slaops end to end, so each property a
part of slaops relies on is built in deliberately:

- load is diurnal (a 24 h sine over event time) plus an AR(1) disturbance, so the next
  interval's load, and with it the next breach, is predictable from the current metrics;
- latencies and error rates grow with load, and `sla_breached` is the tenant's rule
  (p99 above `threshold_ms` OR error rate above `err_threshold`) applied to the interval's
  own metrics, with a little label noise;
- drift changes one tenant from one event on: concept drift lowers the rule's thresholds
  (the same metrics breach more often), data drift shifts the metrics (the rule stays);
- malformed records replace valid ones at a chosen rate, one of each `MalformedKind`.

Every random draw comes from a generator of its own (per tenant and purpose, in fixed
blocks), so drift changes only what it is meant to change, malformed injection leaves the
valid records untouched, and a shorter stream is a prefix of a longer one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import numpy as np

from simulator.malformed import MalformedKind, corrupt

DriftKind = Literal["concept", "data", "both"]
DRIFT_KINDS: Final = ("concept", "data", "both")
DEFAULT_START: Final = datetime(2026, 1, 5, tzinfo=UTC)
#: At magnitude 1: concept drift lowers both thresholds by 40%; data drift raises
#: latencies by 60% and multiplies error rates by 3.
CONCEPT_THRESHOLD_DROP: Final = 0.4
DATA_LATENCY_RISE: Final = 0.6
DATA_ERROR_RISE: Final = 2.0
MAX_MAGNITUDE: Final = 2.0
#: Events drawn at once per tenant; fixed, so that streams are prefixes of each other.
_BLOCK: Final = 256
_SERVICES: Final = ("checkout", "search", "payments", "auth", "catalog", "api")
_PROFILE, _METRICS, _LABELS, _MALFORMED = 0, 1, 2, 3


def tenant_name(index: int) -> str:
    return f"tenant-{index:03d}"


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


@dataclass(frozen=True, slots=True)
class TenantProfile:
    """One tenant's service and SLA rule, derived from (seed, tenant index) alone."""

    name: str
    service: str
    base_rps: float
    diurnal_amplitude: float  # load swings 1 ± this over a day
    phase_h: float  # hour of the daily peak's rising zero crossing
    load_ar: float  # AR(1) coefficient of the load disturbance, per interval
    load_noise: float  # innovation s.d. of that disturbance
    base_latency_ms: float  # p50 at load 1
    load_sensitivity: float  # latency grows as exp(sensitivity * (load - 1))
    p95_ratio: float
    p99_ratio: float  # p99 / p95
    base_error_rate: float
    error_sensitivity: float
    metric_noise: float  # log-normal s.d. of measurement noise
    threshold_ms: float  # breach when p99 is above this ...
    err_threshold: float  # ... or the error rate is above this
    label_noise: float  # chance that a label is flipped

    @classmethod
    def derive(cls, seed: int, index: int) -> TenantProfile:
        rng = _rng(seed, _PROFILE, index)
        u = rng.uniform
        amplitude, sensitivity, err_sensitivity = u(0.25, 0.5), u(0.8, 1.6), u(1.5, 3.0)
        base_latency, p95, p99, base_err = u(15.0, 120.0), u(1.8, 2.6), u(1.2, 1.6), u(1e-3, 1e-2)
        # The rule bites above load 1 + q * amplitude: over a day or more, 10-40% breach
        # whatever the phase (a few hours near a peak or a trough can be far off).
        q = u(0.7, 0.9)
        threshold = base_latency * p95 * p99 * np.exp(sensitivity * q * amplitude)
        err_threshold = base_err * np.exp(err_sensitivity * (q + 0.3) * amplitude)
        return cls(
            name=tenant_name(index),
            service=_SERVICES[int(rng.integers(len(_SERVICES)))],
            base_rps=float(np.exp(u(np.log(20.0), np.log(2_000.0)))),
            diurnal_amplitude=amplitude,
            phase_h=u(0.0, 24.0),
            load_ar=u(0.9, 0.97),
            load_noise=u(0.02, 0.04),
            base_latency_ms=base_latency,
            load_sensitivity=sensitivity,
            p95_ratio=p95,
            p99_ratio=p99,
            base_error_rate=base_err,
            error_sensitivity=err_sensitivity,
            metric_noise=u(0.03, 0.07),
            threshold_ms=round(float(threshold), 1),
            err_threshold=round(float(err_threshold), 5),
            label_noise=u(0.01, 0.03),
        )


@dataclass(frozen=True, slots=True)
class DriftPlan:
    """Drift of one tenant (index or name) from its `at_event`-th event on."""

    tenant: int | str
    at_event: int
    kind: DriftKind = "concept"
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        if self.at_event < 0:
            raise ValueError(f"at_event must be >= 0, not {self.at_event}")
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"kind must be one of {DRIFT_KINDS}, not {self.kind!r}")
        if not 0.0 < self.magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"magnitude must be in (0, {MAX_MAGNITUDE}], not {self.magnitude}")

    @property
    def concept(self) -> bool:
        return self.kind in ("concept", "both")

    @property
    def data(self) -> bool:
        return self.kind in ("data", "both")


@dataclass(frozen=True, slots=True)
class ScheduledDrift:
    """Where a drift starts: the tenant's event index, its event time, its stream position."""

    tenant: str
    at_event: int
    kind: DriftKind
    magnitude: float
    ts: datetime
    position: int  # of the first drifted record in the interleaved stream, from 0


@dataclass(frozen=True, slots=True)
class EventMeta:
    """What a test or demo needs to count: who, when, whether malformed, which drift."""

    tenant: str
    index: int  # in the tenant's own stream
    position: int  # in the interleaved stream
    ts: datetime
    breached: bool  # the label the tenant's rule gave (also for malformed records)
    drift: DriftKind | None  # drift in effect for this event
    malformed: MalformedKind | None


class TelemetrySimulator:
    """Round-robin telemetry of `n_tenants` tenants, one event each per `interval_s`.

    Seeded: the same arguments give the same bytes. Injects the planned drifts and,
    at `malformed_rate`, malformed records (each event's metadata says which).
    Raises `ValueError` for impossible arguments; sends nothing itself (the simulator
    service produces what it yields)."""

    def __init__(
        self,
        n_tenants: int,
        seed: int,
        *,
        interval_s: float = 60.0,
        start: datetime = DEFAULT_START,
        drifts: Sequence[DriftPlan] = (),
        malformed_rate: float = 0.0,
    ) -> None:
        if n_tenants < 1:
            raise ValueError(f"n_tenants must be >= 1, not {n_tenants}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError(f"malformed_rate must be in [0, 1], not {malformed_rate}")
        self.seed = seed
        self.n_tenants = n_tenants
        self.interval_s = interval_s
        self.start = start
        self.malformed_rate = malformed_rate
        self.profiles = tuple(TenantProfile.derive(seed, i) for i in range(n_tenants))
        self.drifts = tuple((self._tenant_index(d.tenant), d) for d in drifts)

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)

    def _tenant_index(self, tenant: int | str) -> int:
        index = self.tenants.index(tenant) if tenant in self.tenants else tenant
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.n_tenants:
            raise ValueError(
                f"drift names tenant {tenant!r}; the tenants are 0..{self.n_tenants - 1} "
                f"({self.tenants[0]}..{self.tenants[-1]})"
            )
        return index

    def event_time(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.interval_s)

    def schedule(self) -> tuple[ScheduledDrift, ...]:
        """The planned drifts in stream order, for "drift injected at event X" reports."""
        n = self.n_tenants
        planned = [
            ScheduledDrift(
                tenant=self.profiles[t].name,
                at_event=d.at_event,
                kind=d.kind,
                magnitude=d.magnitude,
                ts=self.event_time(d.at_event),
                position=d.at_event * n + t,
            )
            for t, d in self.drifts
        ]
        return tuple(sorted(planned, key=lambda s: s.position))

    def events(self, n_per_tenant: int) -> Iterator[tuple[bytes, bytes, EventMeta]]:
        """Yield `(key, value, meta)`: `n_per_tenant` records per tenant, in event time."""
        n = self.n_tenants
        streams = [self._tenant_rows(t) for t in range(n)]
        bad = _rng(self.seed, _MALFORMED)
        kinds = list(MalformedKind)
        for index in range(n_per_tenant):
            ts = self.event_time(index)
            ts_text = ts.isoformat()
            for t, stream in enumerate(streams):
                profile = self.profiles[t]
                metrics, breached, drift = next(stream)
                record: dict[str, object] = {
                    "tenant": profile.name,
                    "ts": ts_text,
                    "service": profile.service,
                }
                record.update(metrics)
                record["sla_breached"] = breached
                key = profile.name.encode()
                malformed = None
                if bad.random() < self.malformed_rate:
                    malformed = kinds[int(bad.integers(len(kinds)))]
                    other = self.profiles[(t + 1) % n].name if n > 1 else f"{profile.name}-x"
                    key, value = corrupt(malformed, record, key, other, bad)
                else:
                    value = json.dumps(record).encode()
                meta = EventMeta(profile.name, index, index * n + t, ts, breached, drift, malformed)
                yield key, value, meta

    def _tenant_rows(self, t: int) -> Iterator[tuple[dict[str, float], bool, DriftKind | None]]:
        """One tenant's metrics, label and active drift per event, drawn in fixed blocks."""
        p = self.profiles[t]
        plans = [d for i, d in self.drifts if i == t]
        metrics_rng, labels_rng = _rng(self.seed, _METRICS, t), _rng(self.seed, _LABELS, t)
        disturbance = 0.0
        for first in itertools.count(0, _BLOCK):
            idx = np.arange(first, first + _BLOCK)
            hours = idx * self.interval_s / 3600.0
            eps = metrics_rng.normal(0.0, p.load_noise, _BLOCK)
            noise = metrics_rng.normal(0.0, p.metric_noise, (5, _BLOCK))
            cpu_noise = metrics_rng.normal(0.0, 0.02, _BLOCK)
            flips = labels_rng.random(_BLOCK) < p.label_noise
            ar = np.empty(_BLOCK)
            for i in range(_BLOCK):
                disturbance = p.load_ar * disturbance + eps[i]
                ar[i] = disturbance
            diurnal = p.diurnal_amplitude * np.sin(2 * np.pi * (hours - p.phase_h) / 24.0)
            load = np.maximum(0.05, 1.0 + diurnal + ar)
            scales = _DriftScales.over(idx, plans)
            lat_scale, err_scale, threshold_scale = scales.latency, scales.error, scales.threshold
            p50 = p.base_latency_ms * np.exp(p.load_sensitivity * (load - 1) + noise[0]) * lat_scale
            p95 = np.maximum(p50, p50 * p.p95_ratio * np.exp(noise[1]))
            p99 = np.maximum(p95, p95 * p.p99_ratio * np.exp(noise[2]))
            err = p.base_error_rate * np.exp(p.error_sensitivity * (load - 1) + 2 * noise[3])
            err = np.minimum(1.0, err * err_scale)
            cpu = np.clip(0.15 + 0.45 * load / (1 + p.diurnal_amplitude) + cpu_noise, 0.0, 1.0)
            rps = p.base_rps * load * np.exp(noise[4] / 2)
            columns = {
                "latency_p50_ms": np.round(p50, 3),
                "latency_p95_ms": np.round(p95, 3),
                "latency_p99_ms": np.round(p99, 3),
                "error_rate": np.round(err, 6),
                "cpu_util": np.round(cpu, 4),
                "rps": np.round(rps, 2),
            }
            # The rule sees exactly the values that are sent.
            breach = (columns["latency_p99_ms"] > p.threshold_ms * threshold_scale) | (
                columns["error_rate"] > p.err_threshold * threshold_scale
            )
            labels = (breach ^ flips).tolist()
            lists = {k: v.tolist() for k, v in columns.items()}
            kinds = scales.kinds()
            for i in range(_BLOCK):
                yield {k: v[i] for k, v in lists.items()}, labels[i], kinds[i]


@dataclass(frozen=True, slots=True)
class _DriftScales:
    """Per-event factors of a block: what drift does to thresholds and metrics."""

    threshold: np.ndarray
    latency: np.ndarray
    error: np.ndarray
    concept_on: np.ndarray
    data_on: np.ndarray

    @classmethod
    def over(cls, idx: np.ndarray, plans: Sequence[DriftPlan]) -> _DriftScales:
        threshold, latency, error = np.ones(len(idx)), np.ones(len(idx)), np.ones(len(idx))
        concept_on, data_on = np.zeros(len(idx), bool), np.zeros(len(idx), bool)
        for d in plans:
            on = idx >= d.at_event
            if d.concept:
                concept_on |= on
                threshold[on] *= max(0.05, 1.0 - CONCEPT_THRESHOLD_DROP * d.magnitude)
            if d.data:
                data_on |= on
                latency[on] *= 1.0 + DATA_LATENCY_RISE * d.magnitude
                error[on] *= 1.0 + DATA_ERROR_RISE * d.magnitude
        return cls(threshold, latency, error, concept_on, data_on)

    def kinds(self) -> list[DriftKind | None]:
        pairs = zip(self.concept_on.tolist(), self.data_on.tolist(), strict=True)
        return [_KIND_OF[c, d] for c, d in pairs]


_KIND_OF: Final[dict[tuple[bool, bool], DriftKind | None]] = {
    (False, False): None,
    (True, False): "concept",
    (False, True): "data",
    (True, True): "both",
}
