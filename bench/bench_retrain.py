"""The retrainer end to end: a request consumed to its `ModelPublished` acknowledged.

Starts a broker (`KAFKA_BOOTSTRAP_SERVERS`, or tansu on loopback), produces one
tenant's telemetry window (`testkit/retrain_data.py`: breaches follow p99 latency) to a
one-partition topic, then for each strategy runs the retrainer service (`build_service`,
in a thread, as `slaops retrain` does) on fresh topics, a fresh group and a fresh file
store, with one `RetrainRequested` whose source covers the window. Default grid
(15 candidates x 5 folds = 75 fits for `grid`), `n_jobs=2`.

Per strategy it prints the wall time from the moment the handler starts on the request
to the moment the `ModelPublished` is acknowledged by the broker and the request's
offset committed, split into replay (and dataset), search (`SearchResult.search_seconds`,
the scikit-learn search with its refit), threshold + holdout scoring, serialise + store
commit, and announce; CPU seconds of this process and its joblib workers over the same
interval; and the holdout log loss and F1 read back from the `ModelPublished` event.

Targets: default grid under 60 s end to end on 2 cores; halving at least 3x faster
than grid with holdout log loss within 2%.

    python bench/bench_retrain.py              # 5,000 rows, grid,halving,random
    python bench/bench_retrain.py --quick      # 1,000 rows, grid,halving
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed  # type: ignore[import-untyped]
from pydantic import SecretStr

import retrainer.pipeline as pipeline
from bench._measure import cpu_seconds
from kernel.kafka import TopicSpec, ensure_topics
from retrainer.cancel import CancelToken
from retrainer.main import build_service, topic_specs
from retrainer.publisher import RequestOutcome
from retrainer.search import SearchResult
from retrainer.settings import RetrainerSettings
from schemas import ModelPublished, RetrainRequested, retrain_event_id
from testkit.broker import kafka_bootstrap
from testkit.kafka_helpers import produce_all, read_topic
from testkit.retrain_data import telemetry_messages, tenant_rows

TENANT = "bench-tenant"
KEY = SecretStr("bench-retrain-tenant-key-0123456789")


def _warm_fit(seed: int) -> float:
    """One tiny fit: imports torch, scikit-learn, skorch and runs torch's lazy set-up."""
    from retrainer.estimator import SlaNet

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 6)).astype(np.float32)
    SlaNet(max_epochs=2, batch_size=16).fit(X, (X[:, 0] > 0).astype(np.float32))
    return time.perf_counter() - started


def warm_workers(n_jobs: int) -> float:
    """Start the joblib workers (reused by every later search) and fit once in each.

    A running retrainer pays this once, at its first request; no strategy should pay it
    here. `--cold` skips it, so the first strategy's figure includes it.
    """
    started = time.perf_counter()
    _warm_fit(0)  # the refit runs in the service's search thread, in this process
    Parallel(n_jobs=n_jobs)(delayed(_warm_fit)(i) for i in range(max(n_jobs, 1) * 3))
    return time.perf_counter() - started


@dataclass
class Run:
    strategy: str
    service_started: float = 0.0
    handle_started: float | None = None
    search_started: float | None = None
    search_ended: float | None = None
    handle_ended: float | None = None
    acked: float | None = None
    committed: float | None = None
    cpu_started: float = 0.0
    cpu_s: float = 0.0
    result: SearchResult | None = None
    outcome: str = ""
    event: ModelPublished | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def end_to_end_s(self) -> float:
        assert self.handle_started is not None and self.acked is not None
        return self.acked - self.handle_started


def request_message(telemetry_topic: str, end_offset: int, n_events: int) -> bytes:
    request = RetrainRequested.model_validate(
        {
            "event_id": retrain_event_id(TENANT, "cold_start", telemetry_topic, 0, end_offset - 1),
            "tenant": TENANT,
            "reason": "cold_start",
            "detector": "cold_start",
            "detected_at": "2026-11-05T00:00:00+00:00",
            "source": [
                {
                    "topic": telemetry_topic,
                    "partition": 0,
                    "start_offset": 0,
                    "end_offset": end_offset,
                }
            ],
            "n_events": n_events,
        },
        strict=False,
    )
    return request.model_dump_json().encode()


def run_strategy(
    bootstrap: str,
    telemetry_topic: str,
    n_messages: int,
    strategy: str,
    store_dir: Path,
    args: argparse.Namespace,
    run: Run,
) -> Run:
    suffix = uuid.uuid4().hex[:8]
    settings = RetrainerSettings(
        bootstrap_servers=bootstrap,
        telemetry_topic=telemetry_topic,
        retrain_topic=f"bench.retrain.{suffix}",
        models_topic=f"bench.models.{suffix}",
        failures_topic=f"bench.failures.{suffix}",
        decisions_topic=f"bench.decisions.{suffix}",
        group_id=f"bench.retrainer.{suffix}",
        session_timeout_ms=6_000,
        store=f"file://{store_dir}",
        tenant_key=KEY,
        strategy=strategy,
        n_jobs=args.n_jobs,
        seed=args.seed,
    )
    ensure_topics(settings, topic_specs(settings))
    produce_all(
        bootstrap,
        settings.retrain_topic,
        [(TENANT.encode(), request_message(telemetry_topic, n_messages, n_messages))],
    )

    service = build_service(settings)
    handle = service.handler.handle
    commit = service._commit  # called right after the outcome's events are acknowledged

    def timed_handle(
        request: RetrainRequested, cancel: CancelToken | None = None
    ) -> RequestOutcome:
        run.cpu_started = cpu_seconds()
        run.handle_started = time.perf_counter()
        try:
            outcome = handle(request, cancel)
        finally:
            run.handle_ended = time.perf_counter()
        run.outcome = outcome.kind
        return outcome

    def timed_commit() -> None:
        if run.handle_ended is not None and run.acked is None:
            run.acked = time.perf_counter()
        commit()
        if run.acked is not None and run.committed is None:
            run.committed = time.perf_counter()
            run.cpu_s = cpu_seconds() - run.cpu_started

    service.handler.handle = timed_handle  # type: ignore[method-assign]
    service._commit = timed_commit  # type: ignore[method-assign]

    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True, name="retrainer")
    run.service_started = time.perf_counter()
    thread.start()
    deadline = time.monotonic() + args.timeout_s
    while run.committed is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    if run.committed is None:
        run.errors.append(
            f"no commit within {args.timeout_s:.0f} s (outcome {run.outcome or 'none'}, "
            f"stats {service.stats})"
        )
    stop.set()
    thread.join(timeout=args.timeout_s)
    if thread.is_alive():
        run.errors.append("the service did not stop")
        return run
    # Break the wrappers' reference cycles, so that the service's clients are destroyed
    # (by `gc.collect` in `main`) before the broker stops.
    del service.handler.handle, service._commit
    del service, thread

    if run.committed is not None:
        messages = read_topic(bootstrap, settings.models_topic, expect=1, partitions=6)
        if len(messages) != 1:
            run.errors.append(f"{len(messages)} ModelPublished events, expected 1")
        else:
            run.event = ModelPublished.model_validate_json(messages[0].value() or b"")
    return run


def _capture_search(runs: dict[str, Run], current: list[str]) -> Any:
    """Wrap `retrainer.pipeline.run_search` to keep each strategy's `SearchResult`."""
    original = pipeline.run_search

    def timed(*a: Any, **kw: Any) -> SearchResult:
        run = runs[current[0]]
        run.search_started = time.perf_counter()
        result = original(*a, **kw)
        run.search_ended = time.perf_counter()
        run.result = result
        return result

    pipeline.run_search = timed
    return original


def report(run: Run) -> None:
    if run.errors or run.event is None or run.result is None:
        print(f"{run.strategy:>8}: FAILED: {'; '.join(run.errors) or run.outcome}", flush=True)
        return
    assert run.handle_started is not None and run.search_started is not None
    assert run.search_ended is not None and run.handle_ended is not None
    assert run.acked is not None and run.committed is not None
    res, metrics = run.result, run.event.metrics
    print(
        f"{run.strategy:>8}: request → ModelPublished acked {run.end_to_end_s:6.1f} s, "
        f"committed {run.committed - run.handle_started:6.1f} s, cpu {run.cpu_s:6.1f} s  "
        f"(group join + consume {run.handle_started - run.service_started:4.1f} s before)\n"
        f"          replay + dataset {run.search_started - run.handle_started:5.2f} s | "
        f"search {res.search_seconds:5.1f} s ({res.n_fits} fits) | "
        f"threshold + holdout {res.fit_seconds - res.search_seconds:5.2f} s | "
        f"serialise + store {run.handle_ended - run.search_ended:5.2f} s | "
        f"announce {run.acked - run.handle_ended:5.2f} s\n"
        f"          holdout log_loss {metrics['log_loss']:.4f}  f1 {metrics['f1']:.3f}  "
        f"pr_auc {metrics.get('pr_auc', float('nan')):.3f}  "
        f"threshold {metrics.get('threshold', float('nan')):.3f}  "
        f"rows {metrics.get('n_rows', float('nan')):.0f}  best {res.best_params}",
        flush=True,
    )


def compare(runs: dict[str, Run]) -> None:
    ok = {s: r for s, r in runs.items() if r.event is not None and r.result is not None}
    grid = ok.get("grid")
    if grid is not None:
        verdict = "met" if grid.end_to_end_s < 60 else "MISSED"
        print(
            f"grid end to end: {grid.end_to_end_s:.1f} s (target < 60 s: {verdict}), "
            f"cpu {grid.cpu_s:.1f} s"
        )
    for other in ("halving", "random"):
        run = ok.get(other)
        if grid is None or run is None:
            continue
        assert grid.event is not None and run.event is not None
        assert grid.result is not None and run.result is not None
        speedup = grid.end_to_end_s / run.end_to_end_s
        g_ll, o_ll = grid.event.metrics["log_loss"], run.event.metrics["log_loss"]
        delta = 100 * (o_ll - g_ll) / g_ll
        line = (
            f"{other} vs grid: {speedup:.2f}x faster end to end "
            f"({grid.result.search_seconds / run.result.search_seconds:.2f}x search only, "
            f"{grid.cpu_s / run.cpu_s:.2f}x less CPU); holdout log loss {delta:+.1f}%, "
            f"f1 {run.event.metrics['f1']:.3f} vs {grid.event.metrics['f1']:.3f}"
        )
        if other == "halving":
            fast = "met" if speedup >= 3 else "MISSED"
            close = "met" if delta <= 2 else "MISSED"
            line += f"  (targets: >= 3x {fast}; log loss at most 2% worse {close})"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=5000, help="telemetry events in the window")
    parser.add_argument("--strategies", default="grid,halving,random")
    parser.add_argument("--quick", action="store_true", help="1,000 rows, grid and halving")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per strategy")
    parser.add_argument("--cold", action="store_true", help="do not warm the joblib workers")
    parser.add_argument("--verbose", action="store_true", help="the retrainer's INFO logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 1000)
        args.strategies = ",".join(args.strategies.split(",")[:2])
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )

    rows = tenant_rows(args.rows, seed=args.seed)
    messages = telemetry_messages(TENANT, rows)
    print(
        f"retrainer end to end: {len(messages)} events, breach rate {rows.labels.mean():.1%}, "
        f"default grid, n_jobs {args.n_jobs}, cpus {os.cpu_count()}, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    if not args.cold:
        print(f"joblib workers warmed in {warm_workers(args.n_jobs):.1f} s", flush=True)

    runs: dict[str, Run] = {s: Run(s) for s in strategies}
    current = [strategies[0]]
    original = _capture_search(runs, current)
    failed = False
    try:
        with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory() as tmp:
            telemetry = f"bench.telemetry.{uuid.uuid4().hex[:8]}"
            settings = RetrainerSettings(bootstrap_servers=bootstrap, tenant_key=KEY)
            ensure_topics(settings, [TopicSpec(telemetry, 1)])
            started = time.perf_counter()
            n = produce_all(bootstrap, telemetry, messages)
            print(f"produced {n} events in {time.perf_counter() - started:.1f} s", flush=True)
            for strategy in strategies:
                current[0] = strategy
                run = run_strategy(
                    bootstrap, telemetry, n, strategy, Path(tmp) / strategy, args, runs[strategy]
                )
                gc.collect()  # release this service's clients
                report(run)
                if run.errors:
                    failed = True
                    if "the service did not stop" in run.errors:
                        break  # its search still holds the workers: later figures are void
    finally:
        pipeline.run_search = original
    compare(runs)
    print(f"load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
