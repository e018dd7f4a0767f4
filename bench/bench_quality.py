"""Forecast quality on streams nobody here wrote: the model beside forecasts that need none.

Per stream (testkit/quality_streams.py: the simulator's tenants, River's generators with
samples held for several intervals, real CloudWatch series from NAB):

1. The first `--window` events (the consumer's default window, 1,440) go through the
   retrainer's own pipeline (`train_and_decide`: the one feature pipeline, the
   candidates, their warning policies and the gate) exactly as a cold-start request
   would. The chosen forecaster's out-of-fold log loss, Brier, ECE, PR-AUC and F1 (of
   "a breach within the horizon") are printed beside the prior, persistence, the
   logistic regression and a gradient-boosted trees reference (scikit-learn's
   HistGradientBoostingClassifier), all fitted and scored on the same blocked folds.
2. The rest of the stream goes through the consumer's pure core with that model live
   (as the product runs it, forecasts published): the live forecasts are scored against
   the labels that follow (log loss beside the prior), and every `performance_drift`
   alarm is counted -- before the stream's injected change (false) or after it (delay).

    python bench/bench_quality.py                 # every stream
    python bench/bench_quality.py --family river  # one family
    python bench/bench_quality.py --quick         # 3 streams, small grid (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from consumer.core import CoreConfig, IngestCore
from consumer.live_model import LiveModel
from kernel.artifacts import load_model
from retrainer.metrics import evaluate_proba
from retrainer.pipeline import Trained, TrainingConfig, TrainingOutcome, train_and_decide
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from testkit.quality_streams import QualityStream, all_streams
from testkit.retrain_data import request_for
from testkit.streams import RawRecord

TOPIC = "sla.telemetry"
QUICK_GRID: dict[str, list[Any]] = {
    "lr": [1e-2, 1e-3],
    "module__hidden_layers": [1],
    "module__width": [32],
}


@dataclass
class StreamReport:
    name: str
    family: str
    n_window: int
    breach_rate: float
    model: dict[str, float]
    baselines: dict[str, dict[str, float]]
    trees: dict[str, float]
    skill: dict[str, float]
    verdict: str
    search_s: float
    live_log_loss: float
    live_prior_log_loss: float
    live_forecasts: int
    false_alarms: int
    delay: int | None
    drift_at: int | None


def trees_reference(trained: Trained) -> dict[str, float]:
    """Boosted trees on the same features and the same blocked folds, out of fold."""
    rows, folds = trained.rows, trained.folds
    parts = []
    for train, valid in folds.splits:
        model = HistGradientBoostingClassifier(random_state=0)
        model.fit(rows.X[train], rows.y[train].astype(np.int64))
        parts.append(model.predict_proba(rows.X[valid])[:, 1])
    p = np.concatenate(parts) if parts else np.zeros(0)
    return evaluate_proba(rows.y[folds.valid], p, 0.5)


def live_run(
    stream: QualityStream, outcome: TrainingOutcome, window: int, tenant: str
) -> tuple[float, float, int, int, int | None]:
    """The rest of the stream through the consumer core with the model live.

    Returns (live log loss, prior log loss on the same events, forecasts scored, false
    alarms, detection delay).
    """
    if outcome.artifacts is None or stream.n <= window + 1:
        return math.nan, math.nan, 0, 0, None
    module, card = load_model(outcome.artifacts.card, outcome.artifacts.safetensors, "safetensors")
    model = LiveModel(tenant, "0" * 40, 1, "0" * 32, module, card)
    core = IngestCore(
        replace(
            CoreConfig(),
            telemetry_topic=TOPIC,
            data_drift=False,
            cold_start=False,
            cooldown_s=0.0,
            request_timeout_s=0.0,
            publish_forecasts=True,
        )
    )
    messages = stream.messages(tenant)
    records = [RawRecord(k, v, 0, i, TOPIC) for i, (k, v) in enumerate(messages)]
    core.process(records[:window])
    core.apply_model(model)
    proba: list[float] = []
    alarms: list[int] = []
    start_ts = float(stream.ts[0])
    index_of = {float(t): i for i, t in enumerate(stream.ts.tolist())}
    for start in range(window, stream.n, 2_000):
        result = core.process(records[start : start + 2_000])
        proba += [json.loads(v)["probability"] for _k, v in result.forecasts]
        for request in result.requests:
            if request.reason == "performance_drift":
                alarm_ts = request.details.statistic.get("alarm_ts", start_ts)
                alarms.append(index_of.get(float(alarm_ts), -1))
    p = np.clip(np.asarray(proba[:-1], dtype=np.float64), 1e-6, 1 - 1e-6)
    y = stream.labels[window + 1 : window + 1 + len(p)].astype(np.float64)
    p = p[: len(y)]
    live = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    rate = float(np.clip(stream.labels[:window].mean(), 1e-6, 1 - 1e-6))
    prior = float(-np.mean(y * np.log(rate) + (1 - y) * np.log(1 - rate)))
    change = stream.drift_at if stream.drift_at is not None and stream.drift_at >= window else None
    false = sum(1 for a in alarms if change is None or a < change)
    late = [a - change for a in alarms if change is not None and a >= change]
    return live, prior, len(y), false, (late[0] if late else None)


def run_stream(
    stream: QualityStream, window: int, search: SearchConfig, tenant: str = "bench-tenant"
) -> StreamReport:
    n = min(window, stream.n)
    rows = TenantRows(
        ts=stream.ts[:n],
        features=stream.metrics[:n],
        labels=stream.labels[:n],
        other_tenants=0,
        invalid=0,
    )
    started = time.perf_counter()
    outcome = train_and_decide(rows, request_for(tenant), TrainingConfig(search=search), None)
    search_s = time.perf_counter() - started
    trained = outcome.trained
    trees = trees_reference(trained)
    live, live_prior, n_live, false, delay = live_run(stream, outcome, n, tenant)
    return StreamReport(
        name=stream.name,
        family=stream.family,
        n_window=n,
        breach_rate=float(stream.labels[:n].mean()),
        model=outcome.metrics,
        baselines=trained.baselines.metrics,
        trees=trees,
        skill=trained.skill,
        verdict=f"{outcome.decision.verdict} ({trained.choice.best.kind})",
        search_s=search_s,
        live_log_loss=live,
        live_prior_log_loss=live_prior,
        live_forecasts=n_live,
        false_alarms=false,
        delay=delay,
        drift_at=stream.drift_at,
    )


def _f(value: float, width: int = 6) -> str:
    return f"{value:>{width}.3f}" if math.isfinite(value) else f"{'-':>{width}}"


def print_table(reports: list[StreamReport]) -> None:
    head = (
        f"{'stream':<32} {'rate':>5} | {'LL':>6} {'Brier':>6} {'ECE':>6} {'PR-AUC':>6} "
        f"{'F1':>6} | {'prior':>6} | {'pers':>6} {'persF1':>6} | {'logit':>6} {'lgF1':>6} | "
        f"{'trees':>6} {'trF1':>6} | {'skill':>6} | {'live':>6} {'lprior':>6} | "
        f"{'alarms':>6} {'delay':>5} | {'s':>4} verdict"
    )
    print(head)
    print("-" * len(head))
    for r in reports:
        b = r.baselines
        delay = "-" if r.delay is None else str(r.delay)
        print(
            f"{r.name:<32} {r.breach_rate:>5.2f} | {_f(r.model['log_loss'])} "
            f"{_f(r.model['brier'])} {_f(r.model['ece'])} {_f(r.model['pr_auc'])} "
            f"{_f(r.model['f1'])} | {_f(b['prior']['log_loss'])} | "
            f"{_f(b['persistence']['log_loss'])} {_f(b['persistence']['f1'])} | "
            f"{_f(b['logistic']['log_loss'])} {_f(b['logistic']['f1'])} | "
            f"{_f(r.trees['log_loss'])} {_f(r.trees['f1'])} | "
            f"{_f(r.skill['log_loss_skill_vs_prior'])} | {_f(r.live_log_loss)} "
            f"{_f(r.live_prior_log_loss)} | {r.false_alarms:>6} {delay:>5} | "
            f"{r.search_s:>4.0f} {r.verdict}"
        )


def summarise(reports: list[StreamReport]) -> dict[str, Any]:
    n = len(reports)
    f1 = np.array([r.model["f1"] for r in reports])
    trees_f1 = np.array([r.trees["f1"] for r in reports])
    beats_pers = sum(r.model["f1"] >= r.baselines["persistence"]["f1"] for r in reports)
    beats_logit = sum(r.model["f1"] >= r.baselines["logistic"]["f1"] for r in reports)
    beats_both = sum(
        r.model["f1"] >= max(r.baselines["persistence"]["f1"], r.baselines["logistic"]["f1"])
        for r in reports
    )
    skilled = sum(r.skill["log_loss_skill_vs_prior"] > 0 for r in reports)
    live_skilled = sum(
        r.live_log_loss < r.live_prior_log_loss for r in reports if math.isfinite(r.live_log_loss)
    )
    live_runs = sum(math.isfinite(r.live_log_loss) for r in reports)
    return {
        "streams": n,
        "log_loss_skill_over_prior": f"{skilled}/{n}",
        "f1_at_least_persistence": f"{beats_pers}/{n}",
        "f1_at_least_logistic": f"{beats_logit}/{n}",
        "f1_at_least_both": f"{beats_both}/{n} ({beats_both / n:.0%})",
        "mean_f1": round(float(f1.mean()), 4),
        "mean_f1_trees": round(float(trees_f1.mean()), 4),
        "mean_f1_gap_to_trees": round(float(f1.mean() - trees_f1.mean()), 4),
        "published": sum(r.verdict.startswith("published") for r in reports),
        "live_skill_over_prior": f"{live_skilled}/{live_runs}",
        "false_performance_alarms": sum(r.false_alarms for r in reports),
        "drift_delays": {r.name: r.delay for r in reports if r.drift_at is not None},
        "search_seconds_mean": round(float(np.mean([r.search_s for r in reports])), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--window", type=int, default=1_440, help="events trained on")
    parser.add_argument("--events", type=int, default=3_000, help="synthetic stream length")
    parser.add_argument("--family", choices=["simulator", "river", "nab"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 streams, a 2-candidate grid")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    streams = all_streams(args.events, args.seed)
    if args.family:
        streams = [s for s in streams if s.family == args.family]
    search = SearchConfig(seed=args.seed)
    if args.quick:
        streams = [streams[0], streams[len(streams) // 2], streams[-1]]
        search = replace(search, grid=QUICK_GRID, n_splits=3)
    reports = []
    for stream in streams:
        report = run_stream(stream, args.window, search)
        reports.append(report)
        print(
            f"{stream.name}: log loss {report.model['log_loss']:.3f} "
            f"(prior {report.baselines['prior']['log_loss']:.3f}) f1 {report.model['f1']:.3f} "
            f"{report.verdict} in {report.search_s:.0f} s",
            flush=True,
        )
    print()
    print_table(reports)
    print()
    summary = summarise(reports)
    for key, value in summary.items():
        print(f"{key}: {value}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"summary": summary, "streams": [r.__dict__ for r in reports]},
                indent=2,
                default=float,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
