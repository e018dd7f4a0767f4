"""What a backtest warned of, per tenant, beside persistence and the SRE rules.

Every figure comes from `kernel.early_warning` (fresh onsets, leads, notifications,
false warnings), on each tenant's events after its training part (the first half, at
most `TRAIN_MAX` events): slaops's warning is on where its published forecast says
`breach_expected`; the rules (`retrainer.sre_rules`) are tuned on the training part,
within the tenant's false-warning budget, given the breach metric and its SLO (the
training part's `SLO_QUANTILE` of the metric), and judged on the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
from rich.console import Console
from rich.table import Table

from kernel.early_warning import (
    EMPTY,
    WarningRecord,
    fresh_onsets,
    leads,
    score_warnings,
)
from retrainer.sre_rules import RULES, Stretch, tune_rules, warning_series
from slaops.backtest import BacktestResult, ForecastSeries
from slaops.backtest_records import TenantEvents

#: The training part of a tenant's events: its first half, at most this many.
TRAIN_MAX: Final = 2_500
#: The SLO the rules are given: this quantile of the breach metric on the training part.
SLO_QUANTILE: Final = 0.9
#: The alertings of the table, in order: ours first, then the rules in report order.
ALERTINGS: Final = ("slaops", *RULES)


def training_part(n: int) -> int:
    """Events of a tenant's training part: its first half, at most `TRAIN_MAX`."""
    return min(n // 2, TRAIN_MAX)


@dataclass(frozen=True, eq=False)
class Scored:
    """One alerting on one stretch: its record, and the leads of the onsets it warned."""

    record: WarningRecord
    #: Leads (intervals) of the fresh onsets warned at lead >= 1, and the same in minutes.
    leads: np.ndarray
    lead_minutes: np.ndarray

    def __add__(self, other: Scored) -> Scored:
        return Scored(
            self.record + other.record,
            np.concatenate((self.leads, other.leads)),
            np.concatenate((self.lead_minutes, other.lead_minutes)),
        )

    @property
    def median_lead(self) -> float | None:
        return float(np.median(self.leads)) if len(self.leads) else None

    @property
    def median_lead_minutes(self) -> float | None:
        return float(np.median(self.lead_minutes)) if len(self.lead_minutes) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.record.as_dict(),
            "median_lead": self.median_lead,
            "median_lead_minutes": self.median_lead_minutes,
        }


NOTHING: Final = Scored(EMPTY, np.empty(0), np.empty(0))


def scored(on: np.ndarray, labels: np.ndarray, ts: np.ndarray, interval_s: float) -> Scored:
    """`on` judged against `labels` (one tenant's stretch), with its leads."""
    got = leads(on, labels, fresh_onsets(labels))
    hits = got[got >= 1].astype(np.float64)
    return Scored(score_warnings(on, labels, ts), hits, hits * interval_s / 60.0)


@dataclass(frozen=True, eq=False)
class TenantScore:
    tenant: str
    events: int
    #: Events after the training part, and the share of them slaops forecast.
    test_events: int
    coverage: float
    #: The SLO the rules were given (None: no breach metric, persistence only).
    slo: float | None
    by_alerting: dict[str, Scored]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "events": self.events,
            "test_events": self.test_events,
            "coverage": self.coverage,
            "slo": self.slo,
            "alerting": {name: s.as_dict() for name, s in self.by_alerting.items()},
        }


@dataclass(frozen=True, slots=True)
class RuleInput:
    """What the rules are given for a tenant: the breach metric's values and the SLO."""

    values: np.ndarray
    slo: float


def score_tenant(
    events: TenantEvents, series: ForecastSeries, rules: RuleInput | None, budget_per_day: float
) -> TenantScore:
    """slaops, persistence and (with `rules`) the SRE rules on the tenant's test part."""
    n = len(events)
    start = training_part(n)
    labels, ts, step = events.labels, events.ts, events.interval_s
    test = slice(start, n)
    out = {"slaops": scored(series.on[test], labels[test], ts[test], step)}
    if rules is None or start < 2:
        out["persistence"] = scored(labels[test], labels[test], ts[test], step)
    else:
        train = Stretch.of(rules.values[:start], labels[:start], ts[:start])
        tuned = tune_rules(train, rules.slo, budget_per_day)
        # Each rule runs over the whole stream, so its first tested intervals have the
        # history a rule running live would have had (as `sre_rules.score_rules`).
        stream = Stretch.of(rules.values, labels, ts)
        for rule in tuned:
            on = warning_series(rule, stream)[start:]
            out[rule.name] = scored(on, labels[test], ts[test], step)
    made = series.made[test]
    return TenantScore(
        tenant=events.tenant,
        events=n,
        test_events=n - start,
        coverage=float(made.mean()) if len(made) else 0.0,
        slo=None if rules is None else rules.slo,
        by_alerting=out,
    )


def rule_input(events: TenantEvents, slo_metric: str | None) -> RuleInput | None:
    """The breach metric and the SLO at the training part's `SLO_QUANTILE` of it."""
    start = training_part(len(events))
    if slo_metric is None or start < 1:
        return None
    values = events.column(slo_metric)
    return RuleInput(values, float(np.quantile(values[:start], SLO_QUANTILE)))


def score_backtest(
    result: BacktestResult, slo_metric: str | None, budget_per_day: float
) -> list[TenantScore]:
    """Every tenant of the backtest, in the order the input first names them."""
    return [
        score_tenant(events, result.series[tenant], rule_input(events, slo_metric), budget_per_day)
        for tenant, events in result.telemetry.tenants.items()
    ]


def pooled(scores: list[TenantScore]) -> dict[str, Scored]:
    """Each alerting summed over the tenants that have it (medians over all onsets)."""
    out: dict[str, Scored] = {}
    for score in scores:
        for name, one in score.by_alerting.items():
            out[name] = out.get(name, NOTHING) + one
    return {name: out[name] for name in ALERTINGS if name in out}


def retrain_summary(result: BacktestResult) -> dict[str, Any]:
    """The requests served: how many of each outcome, and their seconds."""
    seconds = [r.seconds for r in result.retrains]
    searched = [r.seconds for r in result.retrains if r.n_fits]
    kinds: dict[str, int] = {}
    failures: dict[str, int] = {}
    for record in result.retrains:
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
        if record.failure is not None:
            failures[record.failure] = failures.get(record.failure, 0) + 1
    return {
        "requests": len(seconds),
        "outcomes": kinds,
        "failures": failures,
        "seconds": float(sum(seconds)),
        "searched": len(searched),
        "median_search_retrain_seconds": float(np.median(searched)) if searched else None,
        "max_retrain_seconds": max(seconds) if seconds else None,
        "each": [asdict(record) for record in result.retrains],
    }


def as_json(scores: list[TenantScore], result: BacktestResult) -> dict[str, Any]:
    """The table's figures as one JSON-ready object."""
    return {
        "tenants": [s.as_dict() for s in scores],
        "pooled": {name: s.as_dict() for name, s in pooled(scores).items()},
        "events": len(result.telemetry),
        "invalid": result.telemetry.invalid,
        "forecasts": result.forecasts,
        "warnings": result.warnings,
        "retrains": retrain_summary(result),
        "seconds": result.seconds,
    }


def _count(warned: int, onsets: int) -> str:
    return f"{warned} ({warned / onsets:.0%})" if onsets else "-"


def _lead(s: Scored) -> str:
    if s.median_lead is None:
        return "-"
    return f"{s.median_lead:g} ({s.median_lead_minutes:.0f} min)"


def _row(table: Table, cells: tuple[str, str, str], s: Scored, *, last: bool) -> None:
    """`cells`: the tenant (or blank), the alerting and its forecast coverage (or blank)."""
    r = s.record
    tenant, name, coverage = cells
    table.add_row(
        tenant,
        name,
        str(r.fresh_onsets),
        _count(r.warned_1, r.fresh_onsets),
        _count(r.warned_3, r.fresh_onsets),
        f"{r.false_per_day:.2f}",
        _lead(s),
        coverage,
        end_section=last,
    )


def render(console: Console, scores: list[TenantScore], result: BacktestResult) -> None:
    """The per-tenant table, the pooled totals at the bottom, and what it cost."""
    if not console.is_terminal:  # a file or a pipe: wide enough for the tenant names
        console = Console(file=console.file, width=150)
    table = Table(
        title="fresh onsets warned, after each tenant's training part",
        caption="slaops: its published warnings (breach_expected); the rules tuned on the "
        "training part within the false-warning budget, given the breach metric and SLO",
    )
    for header in ("tenant", "alerting"):
        table.add_column(header, overflow="fold")
    for header in ("onsets", "lead >= 1", "lead >= 3", "false/day", "median lead", "forecast"):
        table.add_column(header, justify="right")
    for score in scores:
        names = list(score.by_alerting)
        for k, name in enumerate(names):
            coverage = f"{score.coverage:.0%}" if name == "slaops" else ""
            cells = (score.tenant if k == 0 else "", name, coverage)
            _row(table, cells, score.by_alerting[name], last=k == len(names) - 1)
    totals = pooled(scores)
    tested = sum(s.test_events for s in scores)
    covered = sum(s.coverage * s.test_events for s in scores) / tested if tested else 0.0
    for k, (name, s) in enumerate(totals.items()):
        coverage = f"{covered:.0%}" if name == "slaops" else ""
        _row(table, ("all tenants" if k == 0 else "", name, coverage), s, last=False)
    console.print(table)
    if scores and all(s.slo is None for s in scores):
        console.print(
            "The SRE rules need the breach metric: pass --slo-metric (e.g. latency_p99_ms) "
            "to judge them too; persistence only here."
        )
    summary = retrain_summary(result)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items()))
    failures = ", ".join(f"{k} {v}" for k, v in sorted(summary["failures"].items()))
    console.print(
        f"{len(result.telemetry)} events, {len(scores)} tenants, {result.forecasts} forecasts, "
        f"{result.warnings} warning edges; {summary['requests']} requests "
        f"({outcomes or 'none'}{f'; failed: {failures}' if failures else ''}) "
        f"served in {summary['seconds']:.0f} s of {result.seconds:.0f} s"
    )
