"""Benchmark the retrainer's search strategies against a plain PyTorch loop.

Builds a synthetic single-tenant window (a persistent latent load drives all six
metrics; a breach is p99 latency in its top 15%), then for each strategy runs
`run_search` and prints wall time, holdout log loss and F1. It also runs the very
same fits with a plain PyTorch training loop (same candidates x same
`TimeSeriesSplit` folds x same epochs, batch size, seed, optimiser, class weight and
joblib workers, plus the refit) and prints the skorch/plain time ratio.

Then the default grid again with its fits on a Dask `LocalCluster` (`search_backend=dask`)
of 1 and of 2 single-threaded worker processes on loopback (`--dask-workers`), each
warmed first, beside the local figure; each line says how many fits each worker ran.

Targets: default grid (15 candidates x 5 folds = 75 fits) under 60 s on 2 cores;
search within 1.5x of the plain loop; halving at least 3x faster than grid with
holdout log loss within 2%.

    python bench/bench_search.py                       # 5,000 rows, grid,halving,random
    python bench/bench_search.py --quick               # a smoke run in a few seconds
    python bench/bench_search.py --strategies grid --no-plain   # grid: local, 1, 2 workers

`--json` instead compares grid and Bayesian search (`bayes`, `--n-trials`) on the same
rows, folds and space, and prints one JSON object: `grid_loss`, `grid_fits`, `grid_s`,
`bayes_loss`, `bayes_fits`, `bayes_s` (CV log loss of each winner, fits, wall seconds),
the space (`space`, `grid_points`) and the Bayesian trials (`bayes_trials`,
`bayes_pruned`). `--space wide` (the default with `--json`) is 60 grid points: 4
learning rates x 3 weight decays x (depth 0, or depth 1-2 at width 16 or 32);
`--space default` is the retrainer's default grid. Target (wide): Bayesian CV loss
within 0.002 of the grid's with at most 40% of its fits.

    python bench/bench_search.py --json                  # wide space, 20 trials
    python bench/bench_search.py --json --space default
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import re
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed  # type: ignore[import-untyped]
from sklearn.metrics import log_loss, make_scorer
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit

from bench._measure import cpu_seconds
from kernel.mlp import SlaMLP
from retrainer.dataset import DEFAULT_HOLDOUT_FRACTION, build_pairs, time_split
from retrainer.search import SearchConfig, SearchResult, run_search
from testkit.retrain_data import window_from_load


def synthetic_window(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(ts, features, labels)` of one tenant; breach = p99 latency in its top 15%."""
    rng = np.random.default_rng(seed)
    load = np.zeros(n_rows)
    shocks = rng.normal(0.0, 0.45, n_rows)
    for t in range(1, n_rows):
        load[t] = 0.9 * load[t - 1] + shocks[t]
    return window_from_load(load, rng, breach_quantile=0.85)


def _plain_fit(
    X: np.ndarray, y: np.ndarray, params: dict[str, Any], config: SearchConfig
) -> SlaMLP:
    """What `SlaNet.fit` does, written as a bare PyTorch loop."""
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    lr = params.get("lr", config.lr)
    epochs = params.get("max_epochs", config.max_epochs)
    batch_size = params.get("batch_size", config.batch_size)
    module_kwargs = {k.split("__", 1)[1]: v for k, v in params.items() if k.startswith("module__")}
    module = SlaMLP(n_features=X.shape[1], **module_kwargs)
    module.set_normalization(X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64))
    n_pos = int(y.sum())
    pos_weight = torch.tensor((len(y) - n_pos) / n_pos if 0 < n_pos < len(y) else 1.0)
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, fused=True)
    X_t, y_t = torch.from_numpy(X.copy()), torch.from_numpy(y.copy())
    n = len(X_t)
    module.train()
    for _ in range(epochs):
        perm = torch.randperm(n)
        X_s, y_s = X_t[perm], y_t[perm]
        for start in range(0, n, batch_size):
            optimizer.zero_grad()
            loss = criterion(
                module(X_s[start : start + batch_size]), y_s[start : start + batch_size]
            )
            loss.backward()
            optimizer.step()
    module.eval()
    return module


def _plain_score(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    params: dict[str, Any],
    config: SearchConfig,
) -> float:
    module = _plain_fit(X[train], y[train], params, config)
    with torch.no_grad():
        proba = torch.sigmoid(module(torch.from_numpy(X[val].copy()))).numpy()
    # float32 like skorch's predict_proba: log_loss clips saturated probabilities per dtype
    return float(log_loss(y[val], proba, labels=[0, 1]))


def _candidates(config: SearchConfig) -> list[dict[str, Any]]:
    names = list(config.grid)
    return [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(config.grid[k] for k in names))
    ]


def _timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args)
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def skorch_grid(X: np.ndarray, y: np.ndarray, config: SearchConfig) -> dict[str, float]:
    """`GridSearchCV` over `SlaNet` exactly as `run_search` sets it up; mean val log loss."""
    search = GridSearchCV(
        config.estimator(),
        {k: list(v) for k, v in config.grid.items()},
        scoring=make_scorer(
            log_loss, greater_is_better=False, response_method="predict_proba", labels=[0, 1]
        ),
        cv=TimeSeriesSplit(n_splits=config.n_splits),
        refit=True,
        error_score="raise",
        n_jobs=config.n_jobs,
    )
    search.fit(X, y)
    return {
        _key(p): -float(s)
        for p, s in zip(
            search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
        )
    }


def plain_grid(X: np.ndarray, y: np.ndarray, config: SearchConfig) -> dict[str, float]:
    """The same grid search by hand: every candidate on every fold, then the refit."""
    candidates = _candidates(config)
    splits = list(TimeSeriesSplit(n_splits=config.n_splits).split(X))
    losses = Parallel(n_jobs=config.n_jobs)(
        delayed(_plain_score)(X, y, tr, va, params, config)
        for params in candidates
        for tr, va in splits
    )
    means = np.asarray(losses).reshape(len(candidates), len(splits)).mean(axis=1)
    threads = torch.get_num_threads()
    _plain_fit(X, y, candidates[int(np.argmin(means))], config)  # refit, in-process
    torch.set_num_threads(threads)
    return {_key(p): float(m) for p, m in zip(candidates, means, strict=True)}


def _key(params: dict[str, Any]) -> str:
    return repr(sorted(params.items()))


def _warm_workers(n_jobs: int) -> None:
    """Start the joblib workers and train once in each process before anything is timed.

    A cold process spends seconds importing torch, scikit-learn and skorch and on torch's
    lazy set-up at the first optimiser step; the service pays that once per worker pool
    (joblib reuses it), so no strategy should pay it here.
    """
    _warm_fit(0)  # the refit runs here, in the parent
    Parallel(n_jobs=n_jobs)(delayed(_warm_fit)(i) for i in range(max(n_jobs, 1) * 3))


def _warm_fit(seed: int) -> float:
    started = time.perf_counter()
    search = importlib.import_module("retrainer.search")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 6)).astype(np.float32)
    search.SlaNet(max_epochs=2, batch_size=16).fit(X, (X[:, 0] > 0).astype(np.float32))
    return time.perf_counter() - started


def dask_grid(
    data: Any, config: SearchConfig, n_workers: int
) -> tuple[SearchResult, float, float, dict[str, int]]:
    """The grid with its fits on a fresh `LocalCluster` of `n_workers` one-thread processes.

    Returns the result, wall and CPU seconds (this process and the workers), and the
    fits each worker ran. The workers are warmed (imports, a first fit) before timing.
    """
    from distributed import Client, LocalCluster, get_task_stream

    from retrainer.dask_fits import DaskFits

    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    try:
        with Client(cluster, set_as_default=False) as client:
            warm = [
                client.submit(_warm_fit, i, pure=False, workers=[worker])
                for i, worker in enumerate(sorted(client.nthreads()))
            ]
            client.gather(warm)
            with get_task_stream(client) as stream:
                fits = replace(config, strategy="grid", fits=DaskFits(cluster.scheduler_address))
                result, wall_s, cpu_s = _timed(run_search, data, fits)
        per_worker: dict[str, int] = {}
        for task in stream.data:
            match = re.match(r"batch_of_\w+?_(\d+)_calls-", task["key"])
            if match:
                port = task["worker"].rsplit(":", 1)[1]
                per_worker[port] = per_worker.get(port, 0) + int(match.group(1))
        return result, wall_s, cpu_s, per_worker
    finally:
        cluster.close()


#: 4 x 3 x (1 + 2 x 2) = 60 grid points (depth 0 is searched at one width).
WIDE_SPACE: dict[str, list[Any]] = {
    "lr": [3e-2, 1e-2, 3e-3, 1e-3],
    "optimizer__weight_decay": [0.0, 1e-4, 1e-3],
    "module__hidden_layers": [0, 1, 2],
    "module__width": [16, 32],
}


def compare_bayes(data: Any, config: SearchConfig, n_trials: int) -> dict[str, Any]:
    """Grid and Bayesian search over `config.grid` on the same data and folds."""
    grid, grid_s, _cpu = _timed(run_search, data, replace(config, strategy="grid"))
    bayes_config = replace(config, strategy="bayes", n_trials=n_trials)
    bayes, bayes_s, _cpu = _timed(run_search, data, bayes_config)
    return {
        "space": {k: list(v) for k, v in config.grid.items()},
        "grid_points": config.n_candidates,
        "folds": config.n_splits,
        "rows": len(data),
        "grid_loss": round(cv_loss(grid), 6),
        "grid_fits": grid.n_fits,
        "grid_s": round(grid_s, 2),
        "grid_best": grid.best_params,
        "bayes_loss": round(cv_loss(bayes), 6),
        "bayes_fits": bayes.n_fits,
        "bayes_s": round(bayes_s, 2),
        "bayes_best": bayes.best_params,
        "bayes_trials": len(bayes.trials),
        "bayes_pruned": sum(t["pruned"] for t in bayes.trials),
        "fits_ratio": round(bayes.n_fits / grid.n_fits, 3),
        "loss_gap": round(cv_loss(bayes) - cv_loss(grid), 6),
    }


def cv_loss(result: SearchResult) -> float:
    """The winner's mean validation log loss over the search's folds."""
    return float(result.cv_table[0]["mean_val_log_loss"])


def _report(name: str, result: SearchResult, wall_s: float, cpu_s: float) -> None:
    print(
        f"{name:>8}: wall {wall_s:6.1f} s cpu {cpu_s:6.1f} s "
        f"(search {result.search_seconds:5.1f} s, "
        f"{result.n_fits:3d} fits)  CV log_loss {cv_loss(result):.4f}  best {result.best_params}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--strategies", default="grid,halving,random")
    parser.add_argument("--quick", action="store_true", help="1,500 rows, 2x1x1 grid, 5 epochs")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plain", action="store_true", help="skip the plain PyTorch loop")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of everything (best of)")
    parser.add_argument(
        "--dask-workers",
        default="1,2",
        help="LocalCluster sizes to run the grid on (one thread each); '' for none",
    )
    parser.add_argument("--json", action="store_true", help="grid vs bayes, one JSON object")
    parser.add_argument("--space", choices=("wide", "default"), default="wide")
    parser.add_argument("--n-trials", type=int, default=SearchConfig.n_trials)
    args = parser.parse_args(argv)

    config = SearchConfig(n_jobs=args.n_jobs, seed=args.seed)
    rows = args.rows
    if args.quick:
        rows = min(rows, 1500)
        config = replace(
            config,
            grid={"lr": [1e-2, 1e-3], "module__hidden_layers": [1], "module__width": [32]},
            max_epochs=5,
            n_splits=3,
        )
    if args.max_epochs is not None:
        config = replace(config, max_epochs=args.max_epochs)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    data = build_pairs(*synthetic_window(rows, args.seed), horizon=1)
    if args.json:
        if args.space == "wide" and not args.quick:
            config = replace(config, grid=WIDE_SPACE)
        _warm_workers(config.n_jobs)
        print(json.dumps(compare_bayes(data, config, args.n_trials), sort_keys=True))
        return 0
    print(
        f"rows {len(data)}  positives {data.n_positive / len(data):.1%}  "
        f"grid {config.n_candidates} candidates x {config.n_splits} folds  "
        f"epochs {config.max_epochs}  batch {config.batch_size}  n_jobs {config.n_jobs}  "
        f"cpus {os.cpu_count()}  load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    _warm_workers(config.n_jobs)

    results: dict[str, tuple[SearchResult, float, float]] = {}
    for _ in range(args.repeat):  # best of `repeat`, strategies interleaved
        for strategy in strategies:
            result, wall_s, cpu_s = _timed(run_search, data, replace(config, strategy=strategy))
            _report(strategy, result, wall_s, cpu_s)
            if strategy in results:
                wall_s = min(wall_s, results[strategy][1])
                cpu_s = min(cpu_s, results[strategy][2])
            results[strategy] = (result, wall_s, cpu_s)

    if not args.no_plain:
        train_idx, _ = time_split(len(data), DEFAULT_HOLDOUT_FRACTION)
        X, y = data.X[train_idx].copy(), data.y[train_idx].copy()
        rounds = []
        for _ in range(args.repeat):  # interleaved, so a burst of outside load hits both
            sk, sk_wall, sk_cpu = _timed(skorch_grid, X, y, config)
            pl, pl_wall, pl_cpu = _timed(plain_grid, X, y, config)
            rounds.append((sk_wall, sk_cpu, pl_wall, pl_cpu))
            print(
                f"GridSearchCV(SlaNet): wall {sk_wall:6.1f} s cpu {sk_cpu:6.1f} s | plain loop "
                f"(same fits + refit): wall {pl_wall:6.1f} s cpu {pl_cpu:6.1f} s",
                flush=True,
            )
        best = np.asarray(rounds).min(axis=0)
        print(
            f"skorch/plain: {best[1] / best[3]:.2f}x CPU, {best[0] / best[2]:.2f}x wall "
            f"(best of {args.repeat}; target <= 1.5x)"
        )
        diff = max(abs(sk[k] - pl[k]) for k in pl)
        print(f"max |skorch - plain| mean validation log loss per candidate: {diff:.2e}")

    if "grid" in results:
        grid, grid_wall, grid_cpu = results["grid"]
        print(
            f"grid end to end (best of {args.repeat}): wall {grid_wall:.1f} s (target < 60 s), "
            f"cpu {grid_cpu:.1f} s"
        )
        for other in ("halving", "random"):
            if other in results:
                res, wall, cpu = results[other]
                g_ll, o_ll = cv_loss(grid), cv_loss(res)
                print(
                    f"{other} vs grid: {grid_cpu / cpu:.2f}x less CPU, {grid_wall / wall:.2f}x "
                    f"faster wall end to end ({grid.search_seconds / res.search_seconds:.2f}x "
                    f"search only); CV log loss {100 * (o_ll - g_ll) / g_ll:+.1f}%"
                )
    sizes = [int(n) for n in args.dask_workers.split(",") if n.strip()]
    dask_walls: dict[int, float] = {}
    for n_workers in sizes:
        result, wall_s, cpu_s, per_worker = dask_grid(data, config, n_workers)
        _report(f"dask x{n_workers}", result, wall_s, cpu_s)
        print(f"  fits per worker (by port): {per_worker}", flush=True)
        dask_walls[n_workers] = wall_s
    if dask_walls:
        local = (
            f"local (n_jobs {config.n_jobs}) {results['grid'][1]:.1f} s, "
            if "grid" in results
            else ""
        )
        workers = ", ".join(f"{n} worker(s) {wall:.1f} s" for n, wall in dask_walls.items())
        print(f"default grid wall: {local}dask {workers}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
