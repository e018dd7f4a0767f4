"""The fleet report's data, read back from the topics and the store, validated and bounded.

Topics are read from the beginning by one reader outside any group (it never commits),
until they have been quiet for `idle_s`, `timeout_s` has passed or `max_records`
records were read, whichever comes first (watermarks are not trusted: tansu's are
wrong). Every record is validated by its schema (telemetry through the consumer's own
`parse_telemetry`); anything else is counted and skipped. Telemetry is kept as a few
columns per tenant and downsampled; live forecasts (`sla.forecasts`) as three columns.
The store is the authority on each tenant's live version: its newest revision and card
(validated, size-capped), and the plots published with it, used only if they name that
card's sha256.

What the report judges a model by (`model_flags`): its card's skill over each baseline
and each SRE rule judged beside it (a flag at <= 0), and its live error rate, scored
here from the live version's forecasts read against the outcomes in the telemetry read
(`live_score`), above its holdout's.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from confluent_kafka import KafkaException
from pydantic import BaseModel, SecretStr, ValidationError

from kernel.artifacts import ModelCard, sha256_hex
from kernel.errors import StoreError
from kernel.kafka import assign_all, base_config, is_record, make_reader
from kernel.model_report import PLOT_KINDS, report_card_digest
from kernel.model_report.plots import render_plots
from kernel.settings import ServiceSettings
from kernel.store import ModelStore, report_paths
from kernel.tenant_hash import tenant_hash
from kernel.time_rule import ACCEPTED, TimeRule
from schemas import (
    ChampionKept,
    Forecast,
    InvalidTelemetry,
    ModelPublished,
    RetrainFailed,
    RetrainRequested,
    parse_telemetry,
)

log = logging.getLogger(__name__)

#: Largest card and plot read back from the store.
MAX_CARD_BYTES = 4 * 1024 * 1024
MAX_PLOT_BYTES = 2 * 1024 * 1024
_EVENT_BYTES = 256 * 1024
_DRIFT = ("data_drift", "performance_drift")
#: Fewest scored live forecasts before the live error rate is set against the holdout's.
MIN_SCORED = 30
#: A forecast is matched to the telemetry event at its time within this (seconds).
_MATCH_S = 1e-3
_EPS = 1e-6


@dataclass(frozen=True)
class ReadLimits:
    timeout_s: float = 30.0
    idle_s: float = 2.0
    max_records: int = 500_000
    max_tenants: int = 100
    max_message_bytes: int = 65_536
    #: Telemetry whose time the rule refuses on the wall clock is skipped and counted.
    time_rule: TimeRule = field(default_factory=TimeRule)


@dataclass
class TenantEvents:
    """One tenant's records, in topic order (per partition: a tenant has one)."""

    ts: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    breached: list[bool] = field(default_factory=list)
    requests: list[RetrainRequested] = field(default_factory=list)
    models: list[ModelPublished] = field(default_factory=list)
    kept: list[ChampionKept] = field(default_factory=list)
    failed: list[RetrainFailed] = field(default_factory=list)
    #: Live forecasts (`sla.forecasts`): event time, probability, horizon, model revision.
    forecast_ts: list[float] = field(default_factory=list)
    forecast_p: list[float] = field(default_factory=list)
    forecast_h: list[int] = field(default_factory=list)
    forecast_revision: list[str] = field(default_factory=list)


@dataclass
class TopicRead:
    tenants: dict[str, TenantEvents] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    #: Telemetry events skipped because the time rule refuses their time.
    out_of_time: int = 0
    tenants_dropped: int = 0
    stopped_by: str = "quiet"


def read_topics(settings: ServiceSettings, topics: dict[str, str], limits: ReadLimits) -> TopicRead:
    """Every record of the named topics (role -> topic), as validated events per tenant.

    Roles: telemetry, retrain, models, decisions, failures and (optional) forecasts. A
    missing topic reads as empty.
    """
    kinds: dict[str, type[BaseModel]] = {
        topics["retrain"]: RetrainRequested,
        topics["models"]: ModelPublished,
        topics["decisions"]: ChampionKept,
        topics["failures"]: RetrainFailed,
    }
    if "forecasts" in topics:
        kinds[topics["forecasts"]] = Forecast
    telemetry = topics["telemetry"]
    out = TopicRead(records=dict.fromkeys(topics.values(), 0))
    reader = make_reader(base_config(settings), "slaops-report")
    try:
        assignment = assign_all(reader, topics.values(), timeout_s=min(limits.timeout_s, 15.0))
        started = last = time.monotonic()
        total = 0
        while assignment:
            now = time.monotonic()
            if now - last > limits.idle_s:
                break
            if now - started > limits.timeout_s:
                out.stopped_by = f"timeout ({limits.timeout_s:g} s)"
                break
            if total >= limits.max_records:
                out.stopped_by = f"max_records ({limits.max_records})"
                break
            batch = reader.consume(min(10_000, limits.max_records - total), 0.2)
            if batch:
                last = time.monotonic()
            for message in batch:
                if not is_record(message):
                    continue
                total += 1
                topic = message.topic() or ""
                out.records[topic] = out.records.get(topic, 0) + 1
                _take(out, topic, message, telemetry, kinds, limits)
    except KafkaException as exc:
        out.stopped_by = f"broker error: {exc}"
    finally:
        reader.close()
    _judge_times(out, limits.time_rule, time.time())
    return out


def _judge_times(out: TopicRead, rule: TimeRule, now: float) -> None:
    """Drop each tenant's telemetry the time rule refuses: one stamp in year 2999 (or
    0001) would stretch every plot's time axis past what matplotlib can draw."""
    for events in out.tenants.values():
        if not events.ts:
            continue
        keep = rule.judge_all(np.asarray(events.ts, dtype=np.float64), now) == ACCEPTED
        if keep.all():
            continue
        out.out_of_time += int(keep.shape[0] - np.count_nonzero(keep))
        chosen = np.flatnonzero(keep).tolist()
        events.ts = [events.ts[i] for i in chosen]
        events.p99 = [events.p99[i] for i in chosen]
        events.breached = [events.breached[i] for i in chosen]


def _tenant(out: TopicRead, slug: str | None, limits: ReadLimits) -> TenantEvents | None:
    if slug is None:
        return None
    events = out.tenants.get(slug)
    if events is None:
        if len(out.tenants) >= limits.max_tenants:
            out.tenants_dropped += 1
            return None
        events = out.tenants[slug] = TenantEvents()
    return events


def _take(
    out: TopicRead,
    topic: str,
    message: Any,
    telemetry: str,
    kinds: dict[str, type[BaseModel]],
    limits: ReadLimits,
) -> None:
    value = message.value() or b""
    if topic == telemetry:
        try:
            event = parse_telemetry(message.key(), value, max_bytes=limits.max_message_bytes)
        except InvalidTelemetry:
            out.unreadable += 1
            return
        target = _tenant(out, event.tenant, limits)
        if target is not None:
            target.ts.append(event.ts.timestamp())
            target.p99.append(event.latency_p99_ms)
            target.breached.append(event.sla_breached)
        return
    kind = kinds.get(topic)
    try:
        if kind is None or len(value) > _EVENT_BYTES:
            raise ValueError("unknown topic or oversize record")
        parsed = kind.model_validate_json(value)
    except (ValidationError, ValueError):
        out.unreadable += 1
        return
    target = _tenant(out, getattr(parsed, "tenant", None), limits)
    if target is None:
        return
    if isinstance(parsed, RetrainRequested):
        target.requests.append(parsed)
    elif isinstance(parsed, ModelPublished):
        target.models.append(parsed)
    elif isinstance(parsed, ChampionKept):
        target.kept.append(parsed)
    elif isinstance(parsed, RetrainFailed):
        target.failed.append(parsed)
    elif isinstance(parsed, Forecast):
        target.forecast_ts.append(parsed.ts.timestamp())
        target.forecast_p.append(parsed.probability)
        target.forecast_h.append(parsed.horizon)
        target.forecast_revision.append(sys.intern(parsed.model_revision))


def downsample(
    ts: list[float], values: list[float], breached: list[bool], points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, mean value, breach rate) over at most `points` equal-count buckets, by time.

    >>> t, v, b = downsample([3.0, 1.0, 2.0, 4.0], [30, 10, 20, 40], [True, False, False, True], 2)
    >>> t.tolist(), v.tolist(), b.tolist()
    ([1.5, 3.5], [15.0, 35.0], [0.0, 1.0])
    """
    if not ts:
        empty = np.zeros(0)
        return empty, empty, empty
    order = np.argsort(np.asarray(ts, dtype=np.float64), kind="stable")
    t = np.asarray(ts, dtype=np.float64)[order]
    v = np.asarray(values, dtype=np.float64)[order]
    b = np.asarray(breached, dtype=np.float64)[order]
    chunks = np.array_split(np.arange(t.shape[0]), min(points, t.shape[0]))
    return (
        np.array([t[c].mean() for c in chunks]),
        np.array([v[c].mean() for c in chunks]),
        np.array([b[c].mean() for c in chunks]),
    )


@dataclass
class LiveVersion:
    """A tenant's live version as the store says, with its report's plots (or the problem).

    What the fleet report shows of a version: metadata and pictures, never a loaded
    module (the model a consumer serves is `consumer.live_model.LiveModel`).
    """

    revision: str
    version: int
    card: ModelCard | None
    plots: dict[str, bytes] = field(default_factory=dict)
    plots_from_store: bool = False
    problem: str | None = None


@dataclass(frozen=True)
class LiveScore:
    """The live version's forecasts, scored against the outcomes in the telemetry read.

    A forecast is scored when the telemetry holds its event and the `horizon` events
    after it (the newest `horizon` are still open). Its outcome is the card's target:
    a breach within those events ("within") or at the last of them ("at"); it is wrong
    when ``probability >= threshold`` disagrees with the outcome, as the consumer counts
    `slaops_consumer_forecast_errors`. Skill is ``1 - log loss / the prior's``, the prior
    being the card's holdout breach rate (what the model knew), else the live rate.
    """

    forecasts: int
    scored: int
    errors: int
    log_loss: float
    prior_log_loss: float

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.scored if self.scored else None

    @property
    def skill_vs_prior(self) -> float | None:
        if not self.scored or not self.prior_log_loss > 0:
            return None
        return 1.0 - self.log_loss / self.prior_log_loss


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def holdout_error_rate(card: ModelCard) -> float | None:
    """(fp + fn) / (tn + fp + fn + tp) of the card's holdout; None without the counts."""
    counts = [_finite(card.metrics.get(k)) for k in ("tn", "fp", "fn", "tp")]
    if any(c is None or c < 0 for c in counts):
        return None
    tn, fp, fn, tp = (c or 0.0 for c in counts)
    total = tn + fp + fn + tp
    return (fp + fn) / total if total > 0 else None


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def live_score(events: TenantEvents, live: LiveVersion | None) -> LiveScore | None:
    """The live version's forecasts read, scored (see `LiveScore`); None without a card."""
    if live is None or live.card is None:
        return None
    card = live.card
    mine = [i for i, r in enumerate(events.forecast_revision) if r == live.revision]
    if not mine:
        return LiveScore(0, 0, 0, math.nan, math.nan)
    f_ts = np.asarray([events.forecast_ts[i] for i in mine], dtype=np.float64)
    f_ts, first = np.unique(f_ts, return_index=True)  # a forecast re-sent after a restart
    f_p = np.asarray([events.forecast_p[i] for i in mine], dtype=np.float64)[first]
    f_h = np.asarray([events.forecast_h[i] for i in mine], dtype=np.int64)[first]
    t = np.asarray(events.ts, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    flags = np.asarray(events.breached, dtype=np.int64)[order] if t.size else np.zeros(0, int)
    at = np.searchsorted(t, f_ts - _MATCH_S)
    inside = at < t.size
    matched = np.zeros(f_ts.shape, dtype=bool)
    matched[inside] = np.abs(t[at[inside]] - f_ts[inside]) <= _MATCH_S
    last = at + f_h
    scored = matched & (f_h >= 1) & (last < t.size)
    if not scored.any():
        return LiveScore(len(f_ts), 0, 0, math.nan, math.nan)
    at, last, p = at[scored], last[scored], f_p[scored]
    if card.target == "within":
        breaches = np.concatenate(([0], np.cumsum(flags)))
        y = ((breaches[last + 1] - breaches[at + 1]) > 0).astype(np.float64)
    else:
        y = flags[last].astype(np.float64)
    wrong = int(np.count_nonzero((p >= card.threshold) != (y >= 0.5)))
    rate = _finite(card.metrics.get("positive_rate"))
    if rate is None or not 0 < rate < 1:
        rate = float(y.mean())
    prior = np.full(y.shape, float(np.clip(rate, _EPS, 1 - _EPS)))
    return LiveScore(len(f_ts), int(y.size), wrong, _log_loss(y, p), _log_loss(y, prior))


def model_flags(card: ModelCard, score: LiveScore | None) -> list[str]:
    """Why a person should look at this model, in words; [] when nothing is wrong.

    A log-loss skill <= 0 over a baseline (prior, persistence, logistic) or over an SRE
    rule judged beside it (its out-of-fold log loss, the card's own kind and the prior
    aside), and a live error rate above the holdout's once `MIN_SCORED` are scored.
    """
    flags = []
    for baseline in ("prior", "persistence", "logistic"):
        skill = _finite(card.skill.get(f"log_loss_skill_vs_{baseline}"))
        if skill is not None and skill <= 0:
            flags.append(f"does not beat the {baseline} baseline (log-loss skill {skill:+.3f})")
    mine = _finite(card.metrics.get("log_loss"))
    for kind in sorted(card.rules):
        rule = card.rules[kind]
        theirs = _finite(rule.get("log_loss")) if isinstance(rule, dict) else None
        if kind in ("mlp", "prior", card.forecaster) or mine is None or not theirs:
            continue
        skill = 1.0 - mine / theirs
        if skill <= 0:
            flags.append(f"does not beat the {kind} rule (log-loss skill {skill:+.3f})")
    holdout = holdout_error_rate(card)
    if score is None or score.scored < MIN_SCORED:
        return flags
    live = score.error_rate
    if live is not None and holdout is not None and live > holdout:
        flags.append(
            f"live error rate {live:.1%} is above the holdout's {holdout:.1%} "
            f"({score.scored:,} forecasts scored)"
        )
    return flags


@dataclass
class TenantReport:
    label: str
    tenant_hash: str | None
    events: TenantEvents
    live: LiveVersion | None
    problem: str | None = None

    @property
    def last_alarm(self) -> RetrainRequested | None:
        alarms = [r for r in self.events.requests if r.reason in _DRIFT]
        return max(alarms, key=lambda r: r.detected_at) if alarms else None

    @property
    def open_request(self) -> RetrainRequested | None:
        """The newest request, if nothing answered it yet."""
        if not self.events.requests:
            return None
        newest = self.events.requests[-1]
        answered: set[str | None] = {m.request_event_id for m in self.events.models}
        answered |= {k.request_event_id for k in self.events.kept}
        answered |= {f.request_event_id for f in self.events.failed}
        return None if newest.event_id in answered else newest

    @property
    def card(self) -> ModelCard | None:
        return self.live.card if self.live is not None else None

    @functools.cached_property
    def live_score(self) -> LiveScore | None:
        """Computed once, when first shown (after `live` is set)."""
        return live_score(self.events, self.live)

    @property
    def flags(self) -> list[str]:
        card = self.card
        return [] if card is None else model_flags(card, self.live_score)

    @property
    def trained_at(self) -> datetime | None:
        if self.live is None:
            return None
        for event in self.events.models:
            if event.revision == self.live.revision:
                return event.published_at
        return None


def tenant_label(slug: str, key: SecretStr | None, announced_hash: str | None, n: int) -> str:
    """The slug only for someone holding the key; otherwise the hash, or a number."""
    if key is not None:
        return slug
    return announced_hash[:16] if announced_hash else f"tenant without a model #{n}"


def build_reports(read: TopicRead, store: ModelStore, key: SecretStr | None) -> list[TenantReport]:
    """One report per tenant seen, its live version from the store."""
    reports = []
    unnamed = 0
    for slug in sorted(read.tenants):
        events = read.tenants[slug]
        if key is not None:
            hashed: str | None = tenant_hash(slug, key)
            events.models = [m for m in events.models if m.tenant_hash == hashed]
        else:  # without the key, the announcements' hash (one per tenant) names it
            hashes = {m.tenant_hash for m in events.models}
            hashed = hashes.pop() if len(hashes) == 1 else None
        if hashed is None and key is None:
            unnamed += 1
        label = tenant_label(slug, key, hashed, unnamed)
        report = TenantReport(label=label, tenant_hash=hashed, events=events, live=None)
        if hashed is not None:
            try:
                report.live = live_version(store, hashed)
            except StoreError as exc:
                report.problem = f"store unreadable: {exc}"
        reports.append(report)
    return reports


def live_version(store: ModelStore, hashed: str) -> LiveVersion | None:
    """The store's newest version of `hashed`, its card and its plots (checked)."""
    head = store.head(hashed)  # bounded: the same few reads whatever the store holds
    if head is None:
        return None
    latest, version = head.files, head.version
    try:
        card_bytes = store.read(
            latest.paths["card"], revision=latest.revision, max_bytes=MAX_CARD_BYTES
        )
        card = ModelCard.model_validate_json(card_bytes)
    except (StoreError, ValidationError) as exc:
        return LiveVersion(latest.revision, version, None, problem=f"card unreadable: {exc}")
    digest = sha256_hex(card_bytes)
    plots: dict[str, bytes] = {}
    paths = report_paths(hashed)
    for kind in PLOT_KINDS:
        try:
            data = store.read(paths[kind], revision=latest.revision, max_bytes=MAX_PLOT_BYTES)
        except StoreError:
            break
        if report_card_digest(kind, data) != digest:
            break  # not this card's plot (an older version's, or not ours)
        plots[kind] = data
    if len(plots) == len(PLOT_KINDS):
        return LiveVersion(latest.revision, version, card, plots, plots_from_store=True)
    return LiveVersion(latest.revision, version, card, render_plots(card, digest))
