"""Early warning on the public streams: slaops as it is, beside the rules SREs use (issue 20).

Every stream of `bench.early_warning_streams.warning_streams()` (NAB's 17 CloudWatch
series, the simulator's tenants, River's generators; each with the metric that defines
its breach and the SLO on it) is one tenant of ONE backtest (`slaops.backtest`, the
library call of `slaops backtest`: the consumer's core, the retrainer's handler, event
time the clock, default settings). Each stream's training part is its first half, at
most 2,500 events; everything is judged on the rest, with `kernel.early_warning`'s
definitions:

1. per alerting (persistence, static threshold, `predict_linear`, burn rate, each
   tuned on the training part within 1 false warning a day and given the metric and
   SLO; slaops at its own published warnings): fresh onsets warned at lead >= 1 and
   >= 3 (pooled, with counts), false warnings a day (pooled, and the worst stream),
   forecast coverage (events with a forecast), and slaops's within-horizon log-loss
   skill over the training part's base rate (the share of streams above 0);
2. recall at lead >= 1 at budgets of 0.25, 0.5, 1 and 2 false warnings a day: the
   rules tuned at each budget; slaops with its threshold RE-CHOSEN at each budget on
   its own published probabilities of the training part (`choose_threshold`, warning
   only while quiet, as `warning_on`), not re-run with `warning_budget_per_day` (four
   more backtests would take hours here).

    python bench/bench_early_warning.py               # every stream (about 30 minutes)
    python bench/bench_early_warning.py --family nab  # one family
    python bench/bench_early_warning.py --quick       # 4 streams, short synthetic ones
    python bench/bench_early_warning.py --json        # the figures as one JSON object
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

from bench.early_warning_streams import (
    WarningStream,
    nab_warning_streams,
    synthetic_warning_streams,
)
from consumer.settings import ConsumerSettings
from kernel.early_warning import QUIET, choose_threshold, score_warnings, warning_on
from retrainer.dataset import within_horizon
from retrainer.settings import RetrainerSettings
from retrainer.sre_rules import RULES, Stretch, tune_rules, warning_series
from slaops.backtest import Backtest, BacktestResult, BacktestSetup, offline_setup
from slaops.backtest_records import TenantEvents, read_telemetry
from slaops.backtest_table import (
    RuleInput,
    TenantScore,
    pooled,
    retrain_summary,
    score_tenant,
    training_part,
)

BUDGETS: Final = (0.25, 0.5, 1.0, 2.0)
ALERTINGS: Final = (*RULES, "slaops")


def tenant_slug(name: str) -> str:
    """A stream's name as a tenant slug (``^[a-z0-9][a-z0-9_-]{0,62}$``)."""
    return re.sub(r"[^a-z0-9_-]", "-", name.lower())[:63]


def write_streams(streams: list[WarningStream], path: Path) -> Path:
    """The streams as one time-ordered `TelemetryEvent` JSONL, each stream one tenant."""
    rows = []
    for w in streams:
        slug = tenant_slug(w.name)
        for ts, event in zip(w.stream.ts.tolist(), w.stream.events(slug), strict=True):
            rows.append((ts, slug, json.dumps(event)))
    rows.sort(key=lambda row: (row[0], row[1]))
    path.write_text("".join(row[2] + "\n" for row in rows))
    return path


def run_backtest(path: Path, retrainer: RetrainerSettings) -> BacktestResult:
    """One backtest of the file with default settings (but `retrainer`'s), no outputs."""
    from rich.progress import Progress

    setup = BacktestSetup(ConsumerSettings(), retrainer)
    with offline_setup(setup) as ready:
        telemetry = read_telemetry(path, ready.consumer.telemetry_topic)
        with Progress(transient=True) as bar:
            task = bar.add_task("backtest", total=len(telemetry))
            return Backtest(ready, telemetry).run(
                lambda done, _retrains: bar.update(task, completed=done)
            )


def quiet(labels: np.ndarray) -> np.ndarray:
    """No breach in the last `QUIET` intervals, this one included (features' `quiet`)."""
    seen = np.concatenate(([0], np.cumsum(labels.astype(np.int64))))
    index = np.arange(len(labels))
    return np.asarray(seen[index + 1] - seen[np.maximum(index + 1 - QUIET, 0)] == 0)


def skill(events: TenantEvents, proba: np.ndarray, made: np.ndarray, horizon: int) -> float | None:
    """Within-horizon log-loss skill of the test part's forecasts over the base rate.

    The base rate is the training part's share of events followed by a breach within
    `horizon`; the last `horizon` events (their future unseen) are left out.
    """
    start, n = training_part(len(events)), len(events)
    y = within_horizon(events.labels, horizon).astype(np.float64)
    base = float(np.clip(y[:start].mean() if start else 0.5, 1e-4, 1 - 1e-4))
    chosen = np.zeros(n, bool)
    chosen[start : n - horizon] = True
    chosen &= made
    if not chosen.any():
        return None
    p = np.clip(proba[chosen], 1e-6, 1 - 1e-6)
    truth = y[chosen]
    model = -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p))
    prior = -np.mean(truth * np.log(base) + (1 - truth) * np.log(1 - base))
    return float(1.0 - model / prior) if prior > 0 else None


def recall_at(on: np.ndarray, labels: np.ndarray, ts: np.ndarray, start: int) -> tuple[int, int]:
    """(warned at lead >= 1, fresh onsets) of `on` on the test part."""
    record = score_warnings(on[start:], labels[start:], ts[start:])
    return record.warned_1, record.fresh_onsets


def budget_curve(w: WarningStream, events: TenantEvents, result: BacktestResult) -> dict:
    """Per budget and alerting, (warned at lead >= 1, fresh onsets) on the test part."""
    series = result.series[events.tenant]
    start, labels, ts = training_part(len(events)), events.labels, events.ts
    stream = Stretch.of(w.metric(), labels, ts)
    train = Stretch.of(w.metric()[:start], labels[:start], ts[:start])
    calm = quiet(labels)
    scores = np.where(series.made & calm, series.proba, -np.inf)
    out: dict[float, dict[str, tuple[int, int]]] = {}
    for budget in BUDGETS:
        row = {
            rule.name: recall_at(warning_series(rule, stream), labels, ts, start)
            for rule in tune_rules(train, w.slo, budget)
        }
        policy = choose_threshold(scores[:start], labels[:start], ts[:start], budget)
        on = warning_on(np.nan_to_num(series.proba, nan=-1.0), calm & series.made, policy.threshold)
        row["slaops"] = recall_at(on, labels, ts, start)
        out[budget] = row
    return out


def figures(streams: list[WarningStream], result: BacktestResult, horizon: int) -> dict[str, Any]:
    """Everything the tables print, per stream and pooled."""
    scores: list[TenantScore] = []
    per_stream = []
    curves = []
    for w in streams:
        events = result.telemetry.tenants[tenant_slug(w.name)]
        series = result.series[events.tenant]
        score = score_tenant(events, series, RuleInput(w.metric(), w.slo), 1.0)
        scores.append(score)
        curves.append(budget_curve(w, events, result))
        per_stream.append(
            {
                **score.as_dict(),
                "family": w.family,
                "slo_metric": w.slo_metric,
                "skill": skill(events, series.proba, series.made, horizon),
            }
        )
    totals = pooled(scores)
    table = {}
    for name in ALERTINGS:
        worst = max(scores, key=lambda s: s.by_alerting[name].record.false_per_day)
        covered = [s.coverage for s in scores] if name == "slaops" else [1.0]
        skills = [p["skill"] for p in per_stream if p["skill"] is not None]
        table[name] = {
            **totals[name].as_dict(),
            "worst_false_per_day": worst.by_alerting[name].record.false_per_day,
            "worst_stream": worst.tenant,
            "coverage": float(np.mean(covered)),
            "skill_positive_share": (
                float(np.mean([s > 0 for s in skills])) if name == "slaops" and skills else None
            ),
        }
    curve = {
        str(budget): {
            name: _share(
                sum(c[budget][name][0] for c in curves), sum(c[budget][name][1] for c in curves)
            )
            for name in ALERTINGS
        }
        for budget in BUDGETS
    }
    return {
        "streams": per_stream,
        "alerting": table,
        "budget_curve": curve,
        "retrains": retrain_summary(result),
        "events": len(result.telemetry),
        "seconds": result.seconds,
    }


def _share(warned: int, onsets: int) -> dict[str, Any]:
    return {"warned": warned, "onsets": onsets, "recall": warned / onsets if onsets else None}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def print_tables(found: dict[str, Any]) -> None:
    print(
        f"{len(found['streams'])} streams, {found['events']} events, backtest "
        f"{found['seconds']:.0f} s; {found['retrains']['requests']} requests "
        f"({found['retrains']['outcomes']})"
    )
    print()
    head = (
        f"| alerting | lead >= 1 | lead >= 3 | false/day | worst stream | coverage "
        f"| skill > 0 |\n|{'---|' * 7}"
    )
    print(head)
    for name, row in found["alerting"].items():
        onsets = row["fresh_onsets"]
        print(
            f"| {name} | {_pct(row['recall_lead_1'])} ({row['warned_lead_1']}/{onsets}) "
            f"| {_pct(row['recall_lead_3'])} ({row['warned_lead_3']}/{onsets}) "
            f"| {row['false_per_day']:.2f} | {row['worst_false_per_day']:.1f} "
            f"({row['worst_stream']}) | {_pct(row['coverage'])} "
            f"| {_pct(row['skill_positive_share'])} |"
        )
    print()
    print("recall at lead >= 1 by false-warning budget (slaops: threshold re-chosen on its")
    print("published training-part probabilities at each budget)")
    print()
    print(f"| budget/day | {' | '.join(ALERTINGS)} |\n|{'---|' * (len(ALERTINGS) + 1)}")
    for budget, row in found["budget_curve"].items():
        cells = [
            f"{_pct(row[n]['recall'])} ({row[n]['warned']}/{row[n]['onsets']})" for n in ALERTINGS
        ]
        print(f"| {budget} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("nab", "simulator", "river"))
    parser.add_argument("--quick", action="store_true", help="4 streams, short synthetic ones")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    synthetic = synthetic_warning_streams(n_events=2_000 if args.quick else 5_000)
    streams = [*nab_warning_streams(), *synthetic]
    if args.family is not None:
        streams = [w for w in streams if w.family == args.family]
    if args.quick:
        picked: dict[str, list[WarningStream]] = {}
        for w in streams:
            picked.setdefault(w.family, []).append(w)
        firsts = [family[0] for family in picked.values()]
        streams = [*firsts, *[w for w in streams if w not in firsts]][:4]
    if not streams:
        raise SystemExit("no streams (is the NAB data in ../shared/data/nab?)")
    retrainer = RetrainerSettings()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = write_streams(streams, Path(folder) / "streams.jsonl")
        result = run_backtest(path, retrainer)
    found = figures(streams, result, retrainer.horizon)
    found["wall_seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(found))
    else:
        print_tables(found)


if __name__ == "__main__":
    main()
