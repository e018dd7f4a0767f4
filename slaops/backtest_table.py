"""What a backtest warned of, per tenant, beside persistence and the SRE rules.

Every figure comes from `kernel.early_warning` (fresh onsets, leads, notifications,
false warnings), on each tenant's events after its training part (the first half, at
most `TRAIN_MAX` events): slaops's warning is on where its published forecast says
`breach_expected`; the rules (`retrainer.sre_rules`) are tuned on the training part,
within the tenant's false-warning budget, given the breach metric and its SLO (the
training part's `SLO_QUANTILE` of the metric), and judged on the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
from retrainer.dataset import within_horizon
from retrainer.slices import (
    CHANGE_REASONS,
    Alerting,
    JudgedRows,
    evaluate_slices,
    load_edges,
    standard_slices,
)
from retrainer.sre_rules import RULES, Stretch, TunedRule, tune_rules, warning_series
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
    #: slaops by slice beside the prior and the best rule (`retrainer.slices` records).
    slices: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "events": self.events,
            "test_events": self.test_events,
            "coverage": self.coverage,
            "slo": self.slo,
            "alerting": {name: s.as_dict() for name, s in self.by_alerting.items()},
            "slices": self.slices,
        }


@dataclass(frozen=True, slots=True)
class RuleInput:
    """What the rules are given for a tenant: the breach metric's values and the SLO."""

    values: np.ndarray
    slo: float


def score_tenant(
    events: TenantEvents,
    series: ForecastSeries,
    rules: RuleInput | None,
    budget_per_day: float,
    *,
    horizon: int = 6,
    change_ts: float | None = None,
) -> TenantScore:
    """slaops, persistence and (with `rules`) the SRE rules on the tenant's test part.

    Also slaops by slice (`tenant_slices`): `horizon` is what its probabilities forecast
    a breach within, `change_ts` the newest detected change (None: no change slices).
    """
    n = len(events)
    start = training_part(n)
    labels, ts, step = events.labels, events.ts, events.interval_s
    test = slice(start, n)
    out = {"slaops": scored(series.on[test], labels[test], ts[test], step)}
    rule_on: dict[str, np.ndarray] = {}
    best: str | None = None
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
            rule_on[rule.name] = on
        best = best_rule(tuned, budget_per_day)
    made = series.made[test]
    return TenantScore(
        tenant=events.tenant,
        events=n,
        test_events=n - start,
        coverage=float(made.mean()) if len(made) else 0.0,
        slo=None if rules is None else rules.slo,
        by_alerting=out,
        slices=tenant_slices(
            events,
            series,
            None if best is None else (best, rule_on[best]),
            horizon=horizon,
            change_ts=change_ts,
        ),
    )


def best_rule(tuned: list[TunedRule], budget_per_day: float) -> str | None:
    """The SRE rule an SRE would deploy: the most fresh onsets warned at lead >= 1 on the
    training part within the budget (then at lead >= 3, then fewer false warnings).
    Persistence warns of nothing ahead and is no rule to beat here."""
    within = [
        r
        for r in tuned
        if r.name != "persistence"
        and r.train is not None
        and r.train.false_per_day <= budget_per_day
    ]
    if not within:
        return None
    key = lambda r: (r.train.warned_1, r.train.warned_3, -r.train.false_warnings)  # noqa: E731
    return max(within, key=key).name


def tenant_slices(
    events: TenantEvents,
    series: ForecastSeries,
    rule: tuple[str, np.ndarray] | None,
    *,
    horizon: int,
    change_ts: float | None,
) -> list[dict[str, Any]]:
    """slaops on the tenant's test part by slice, beside the prior and the best rule.

    Log loss is of "a breach within the next `horizon` events", on the events slaops
    forecast (the prior's on the same): the prior is the training part's rate of it.
    Load terciles are of `rps` on the training part.
    """
    n = len(events)
    start = training_part(n)
    if n - start < 1 or start < 1:
        return []
    labels, ts = events.labels, events.ts
    y = within_horizon(labels, horizon).astype(np.float64)
    index = np.arange(n)
    judged_y = (index < n - horizon)[start:]
    scored_rows = series.made[start:] & judged_y & np.isfinite(series.proba[start:])
    rows = JudgedRows.of(ts[start:], labels[start:], y[start:], scored=scored_rows)
    proba = np.where(scored_rows, series.proba[start:], 0.5)
    rate = float(np.clip(y[: max(start - horizon, 1)].mean(), 1e-6, 1 - 1e-6))
    silent = np.zeros(n - start, bool)
    baselines = {"prior": Alerting(silent, np.full(n - start, rate))}
    if rule is not None:
        baselines[rule[0]] = Alerting(rule[1])
    load = events.column("rps")
    slices = standard_slices(ts[start:], load[start:], load_edges(load[:start]), change_ts)
    return evaluate_slices(rows, Alerting(series.on[start:], proba), baselines, slices)


def rule_input(events: TenantEvents, slo_metric: str | None) -> RuleInput | None:
    """The breach metric and the SLO at the training part's `SLO_QUANTILE` of it."""
    start = training_part(len(events))
    if slo_metric is None or start < 1:
        return None
    values = events.column(slo_metric)
    return RuleInput(values, float(np.quantile(values[:start], SLO_QUANTILE)))


def score_backtest(
    result: BacktestResult, slo_metric: str | None, budget_per_day: float, horizon: int = 6
) -> list[TenantScore]:
    """Every tenant of the backtest, in the order the input first names them."""
    return [
        score_tenant(
            events,
            result.series[tenant],
            rule_input(events, slo_metric),
            budget_per_day,
            horizon=horizon,
            change_ts=newest_change(result, tenant),
        )
        for tenant, events in result.telemetry.tenants.items()
    ]


def newest_change(result: BacktestResult, tenant: str) -> float | None:
    """Event time of the tenant's newest drift request (the event that raised it)."""
    offsets = [
        r.offset for r in result.retrains if r.tenant == tenant and r.reason in CHANGE_REASONS
    ]
    events = result.telemetry.tenants[tenant]
    if not offsets or not len(events.at):
        return None
    at = int(np.searchsorted(events.at, max(offsets)))
    return float(events.ts[min(at, len(events.ts) - 1)])


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
    for score in scores:
        render_slices(console, score)
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


_LOSS_WORDS: Final = {
    "log_loss": "log loss",
    "recall_lead_1": "onsets warned",
    "false_warnings": "false warnings",
}


def slice_verdict(record: dict[str, Any]) -> str:
    """ "insufficient evidence", "loses to prior (log loss), ..." or "holds"."""
    if not record["sufficient"]:
        return "insufficient evidence"
    if not record["loses_to"]:
        return "holds"
    return "loses to " + ", ".join(
        f"{name} ({_LOSS_WORDS.get(metric, metric)})"
        for name, _, metric in (loss.rpartition(".") for loss in record["loses_to"])
    )


def render_slices(console: Console, score: TenantScore) -> None:
    """slaops by slice beside the prior and the best rule, one tenant's table."""
    if not score.slices:
        return
    names = list(score.slices[0]["figures"])
    table = Table(
        title=f"{score.tenant}: slaops by slice, beside the baselines (test part)",
        caption="log loss · onsets warned at lead >= 1 · false warnings a day; "
        "fewer than 50 events or 5 fresh onsets: insufficient evidence",
    )
    table.add_column("slice", overflow="fold")
    for header in ("events", "positives", "onsets"):
        table.add_column(header, justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("verdict", overflow="fold")
    for record in score.slices:
        cells = []
        for name in names:
            f = record["figures"].get(name)
            if f is None:
                cells.append("-")
                continue
            loss = "-" if f["log_loss"] is None else f"{f['log_loss']:.3f}"
            cells.append(f"{loss} · {f['warned_lead_1']} · {f['false_per_day']:.2f}")
        table.add_row(
            f"{record['family']} {record['name']}",
            str(record["rows"]),
            str(record["positives"]),
            str(record["fresh_onsets"]),
            *cells,
            slice_verdict(record),
        )
    console.print(table)
