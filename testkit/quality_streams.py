"""Seeded telemetry streams for the forecast-quality benchmark (issue 10, item 7).

Every stream is one tenant's telemetry as arrays: event times, the six metric columns in
the order of `schemas.telemetry.FEATURES`, and the `sla_breached` flag of each interval.
Each row is valid telemetry (the schema's ranges, p50 <= p95 <= p99), and each label is a
function of the stream's own metrics and history, so the breach of interval t+1 is partly
predictable from what is known at t. Three families:

- ``simulator``: the project's own `TelemetrySimulator` (one-minute intervals): a stable
  tenant, a concept-drift tenant (the breach rule's thresholds drop at `drift_at`) and a
  data-drift tenant (the metrics shift at `drift_at`, the rule stays);
- ``river``: River's synthetic classification generators (Agrawal, SEA, Hyperplane,
  Sine). Each generated sample is held for 2-8 intervals (seeded), as telemetry persists;
  its numeric attributes map monotonically into the metric columns and its class is the
  breach flag. One Agrawal stream switches its classification function at `drift_at`;
- ``nab``: real Amazon CloudWatch series of the Numenta Anomaly Benchmark (see
  ``shared/data/nab/README.md``) on their real timestamps. The series value goes into the
  column it measures (CPU percent -> ``cpu_util``, counts and bytes per interval -> ``rps``
  per second), the other columns follow from it deterministically plus a little seeded
  noise, and an interval breaches when the value exceeds the 90th percentile of the
  first half of the events used (the SLO is set on history, then applied going forward).

`all_streams()` returns the benchmark set; `simulator_streams()`, `river_streams()` and
`nab_streams()` return one family each. ``python -m testkit.quality_streams`` prints the set
as a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
from river.datasets import synth

from schemas.telemetry import FEATURES, MAX_LATENCY_MS, MAX_RPS
from simulator.model import DEFAULT_START, DriftPlan, TelemetrySimulator

FAMILIES: Final = ("simulator", "river", "nab")
N_COLUMNS: Final = len(FEATURES)
P50, P95, P99, ERR, CPU, RPS = range(N_COLUMNS)
#: A River sample persists for this many intervals, inclusive, drawn per sample.
MIN_HOLD: Final = 2
MAX_HOLD: Final = 8
#: Where a drifting synthetic stream changes, as a fraction of its events.
DRIFT_FRACTION: Final = 0.6
#: The NAB SLO: breach above this quantile of the first `NAB_SLO_PART` of the events used.
NAB_SLO_QUANTILE: Final = 0.9
NAB_SLO_PART: Final = 0.5
#: The CloudWatch series of the benchmark, with the kind of metric each one measures.
NAB_SERIES: Final[dict[str, str]] = {
    "ec2_cpu_utilization_825cc2": "cpu",
    "ec2_network_in_257a54": "bytes",
    "elb_request_count_8c0756": "count",
    "rds_cpu_utilization_cc0c53": "cpu",
    "ec2_cpu_utilization_c6585a": "cpu",  # NAB's false-alarm control: no anomaly window
    "ec2_disk_write_bytes_c0d644": "bytes",
}
NAB_ENV: Final = "SLAOPS_NAB_DIR"
_NAB_DEFAULT: Final = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"
_NAB_SUBDIR: Final = "realAWSCloudwatch"
_SIM_INTERVAL_S: Final = 60.0
_RIVER_INTERVAL_S: Final = 60.0
# Stream ids for seed derivation: stable, so adding a stream never reseeds another.
_SIM, _RIVER, _NAB = 1, 2, 3


@dataclass(frozen=True, eq=False)
class QualityStream:
    """One tenant's telemetry for the quality benchmark.

    `ts` are float64 epoch seconds (strictly increasing), `metrics` float32 (n, 6) in the
    order of `schemas.telemetry.FEATURES`, `labels` bool (n,) the `sla_breached` of each
    interval. `drift_at` is the index of the first event after an injected change (None
    for a stream without one) and `drift_kind` says which: "concept" (the breach rule
    changes) or "data" (the metrics shift, the rule stays). Construction validates all of
    it, so a stream that exists is valid telemetry.
    """

    name: str
    family: str
    ts: np.ndarray
    metrics: np.ndarray
    labels: np.ndarray
    drift_at: int | None = None
    drift_kind: str | None = None
    interval_s: float = 60.0  # nominal reporting interval
    source: str = ""  # where the data came from, in words

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def breach_rate(self) -> float:
        return float(self.labels.mean()) if self.n else 0.0

    def events(self, tenant: str | None = None, service: str = "api") -> Iterator[dict]:
        """The rows as `TelemetryEvent` fields (JSON-ready), for feeding the product."""
        slug = tenant or self.name
        rows = self.metrics.astype(np.float64).tolist()
        for ts, row, label in zip(self.ts.tolist(), rows, self.labels.tolist(), strict=True):
            event: dict[str, object] = {
                "tenant": slug,
                "ts": datetime.fromtimestamp(ts, UTC).isoformat(),
                "service": service,
            }
            event.update(zip(FEATURES, row, strict=True))
            event["sla_breached"] = label
            yield event

    def messages(self, tenant: str | None = None) -> list[tuple[bytes, bytes]]:
        """The rows as the (key, value) messages a producer sends to `sla.telemetry`."""
        slug = tenant or self.name
        return [(slug.encode(), json.dumps(e).encode()) for e in self.events(slug)]


def _validate(s: QualityStream) -> None:
    n = s.labels.shape[0] if s.labels.ndim == 1 else -1
    problems = []
    if s.family not in FAMILIES:
        problems.append(f"family {s.family!r} is not one of {FAMILIES}")
    if s.ts.dtype != np.float64 or s.ts.shape != (n,):
        problems.append(f"ts must be float64 ({n},), not {s.ts.dtype} {s.ts.shape}")
    if s.metrics.dtype != np.float32 or s.metrics.shape != (n, N_COLUMNS):
        problems.append(
            f"metrics must be float32 ({n}, 6), not {s.metrics.dtype} {s.metrics.shape}"
        )
    if s.labels.dtype != np.bool_:
        problems.append(f"labels must be bool, not {s.labels.dtype}")
    if problems:
        raise ValueError(f"{s.name}: " + "; ".join(problems))
    m = s.metrics
    lat = m[:, [P50, P95, P99]]
    checks = {
        "ts strictly increasing and finite": bool(
            np.isfinite(s.ts).all() and (np.diff(s.ts) > 0).all()
        ),
        "metrics finite": bool(np.isfinite(m).all()),
        "latencies in [0, 3.6e6]": bool(((lat >= 0) & (lat <= MAX_LATENCY_MS)).all()),
        "p50 <= p95 <= p99": bool(((m[:, P50] <= m[:, P95]) & (m[:, P95] <= m[:, P99])).all()),
        "error_rate and cpu_util in [0, 1]": bool(
            ((m[:, [ERR, CPU]] >= 0) & (m[:, [ERR, CPU]] <= 1)).all()
        ),
        "rps in [0, 1e9]": bool(((m[:, RPS] >= 0) & (m[:, RPS] <= MAX_RPS)).all()),
        "drift_at inside the stream": s.drift_at is None or 0 < s.drift_at < n,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise ValueError(f"{s.name}: invalid telemetry: {', '.join(failed)}")


def _seed(seed: int, *path: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, *path])


def _int_seed(seed: int, *path: int) -> int:
    """A 31-bit seed for a library that takes an int (River uses `random.Random`)."""
    return int(_seed(seed, *path).generate_state(1)[0] >> 1)


def _metrics(columns: Iterable[np.ndarray]) -> np.ndarray:
    """Stack float64 columns into float32 metrics, clipped to the schema after the cast."""
    m = np.column_stack(list(columns)).astype(np.float32)
    m[:, [P50, P95, P99]] = np.clip(m[:, [P50, P95, P99]], 0.0, MAX_LATENCY_MS)
    m[:, P95] = np.maximum(m[:, P95], m[:, P50])
    m[:, P99] = np.maximum(m[:, P99], m[:, P95])
    m[:, [ERR, CPU]] = np.clip(m[:, [ERR, CPU]], 0.0, 1.0)
    m[:, RPS] = np.clip(m[:, RPS], 0.0, MAX_RPS)
    return m


def _minute_ts(n: int, interval_s: float) -> np.ndarray:
    return DEFAULT_START.timestamp() + interval_s * np.arange(n, dtype=np.float64)


# ---------------------------------------------------------------------------- simulator


def simulator_streams(n_events: int = 1440, seed: int = 0) -> list[QualityStream]:
    """Three simulator tenants: stable, concept drift and data drift at 60% of the events.

    One simulator run with three tenants (each tenant's profile derives from the seed and
    its index), at one-minute intervals; the drifting tenants change at magnitude 1. The
    rule follows a daily load cycle: give at least a day (1,440 events) for a tenant's
    usual breach rate; a few hours can sit in a trough (breaches only from label noise).
    """
    drift_at = max(1, int(DRIFT_FRACTION * n_events))
    plans = [DriftPlan(1, drift_at, "concept"), DriftPlan(2, drift_at, "data")]
    sim = TelemetrySimulator(3, seed, interval_s=_SIM_INTERVAL_S, drifts=plans)
    rows: list[list[list[float]]] = [[] for _ in range(3)]
    labels: list[list[bool]] = [[] for _ in range(3)]
    tenant_index = {name: i for i, name in enumerate(sim.tenants)}
    for _key, value, meta in sim.events(n_events):
        record = json.loads(value)
        t = tenant_index[meta.tenant]
        rows[t].append([record[f] for f in FEATURES])
        labels[t].append(bool(record["sla_breached"]))
    ts = np.array([sim.event_time(i).timestamp() for i in range(n_events)], dtype=np.float64)
    kinds: list[tuple[str, str | None]] = [("stable", None), ("concept", "concept")]
    kinds.append(("data", "data"))
    out = []
    for t, (label, kind) in enumerate(kinds):
        profile = sim.profiles[t]
        out.append(
            QualityStream(
                name=f"sim-{label}",
                family="simulator",
                ts=ts.copy(),
                metrics=_metrics(np.asarray(rows[t], dtype=np.float64).T),
                labels=np.asarray(labels[t], dtype=bool),
                drift_at=None if kind is None else drift_at,
                drift_kind=kind,
                interval_s=_SIM_INTERVAL_S,
                source=(
                    f"TelemetrySimulator(seed={seed}) {profile.name} ({profile.service}): "
                    f"p99 > {profile.threshold_ms} ms or error rate > {profile.err_threshold}"
                ),
            )
        )
    return out


# -------------------------------------------------------------------------------- river

Sample = tuple[dict, object]
Mapper = Callable[[np.ndarray], np.ndarray]


def _held(
    sources: list[tuple[int, Iterator[Sample]]],
    keys: tuple,
    n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` events from River samples, each held for MIN_HOLD..MAX_HOLD intervals.

    `sources` are (first event, generator) pairs in order: from its first event on, a
    generator supplies the samples; a hold in progress is cut where the next one starts.
    """
    x = np.empty((n, len(keys)), dtype=np.float64)
    y = np.empty(n, dtype=bool)
    starts = [start for start, _ in sources[1:]] + [n]
    i = 0
    for (_, gen), end in zip(sources, starts, strict=True):
        while i < end:
            features, target = next(gen)
            hold = min(int(rng.integers(MIN_HOLD, MAX_HOLD + 1)), end - i)
            x[i : i + hold] = [float(features[k]) for k in keys]
            y[i : i + hold] = bool(target)
            i += hold
    return x, y


_AGRAWAL_KEYS: Final = ("salary", "commission", "age", "elevel", "hvalue", "loan")


def _agrawal_metrics(x: np.ndarray) -> np.ndarray:
    """Agrawal's attributes, each monotone into one column (latencies stacked by increments).

    age -> cpu_util, salary -> rps, elevel -> error_rate, loan -> p50, p95 - p50 grows with
    commission, p99 - p95 with the house value: every attribute the functions used here
    read can be recovered from the row.
    """
    salary, commission, age, elevel, hvalue, loan = x.T
    p50 = 20.0 + loan / 2_500.0  # 20 .. 220 ms
    p95 = p50 + 10.0 + commission / 1_000.0  # + 10 .. 95 ms
    p99 = p95 + 5.0 + hvalue / 10_000.0  # + 5 .. 125 ms
    err = 0.002 + 0.004 * elevel  # 0.002 .. 0.018
    cpu = 0.1 + 0.8 * (age - 20.0) / 60.0  # 0.1 .. 0.9
    rps = salary / 200.0  # 100 .. 750
    return _metrics([p50, p95, p99, err, cpu, rps])


def _sea_metrics(x: np.ndarray) -> np.ndarray:
    """SEA's three attributes in [0, 10]; the class is x0 + x1 above a threshold."""
    x0, x1, x2 = x.T
    p50 = 25.0 + 15.0 * x1  # 25 .. 175 ms
    p95 = p50 * 1.8
    p99 = p95 * 1.3
    err = 0.001 + 0.002 * x2  # irrelevant to the class
    cpu = 0.05 + 0.09 * x0  # 0.05 .. 0.95
    rps = 100.0 + 40.0 * x2
    return _metrics([p50, p95, p99, err, cpu, rps])


def _hyperplane_metrics(x: np.ndarray) -> np.ndarray:
    """Hyperplane's six attributes in [0, 1]; the class is linear in them (and the row)."""
    p50 = 20.0 + 150.0 * x[:, 0]
    p95 = p50 + 10.0 + 100.0 * x[:, 1]
    p99 = p95 + 5.0 + 100.0 * x[:, 2]
    err = 0.001 + 0.03 * x[:, 3]
    cpu = 0.05 + 0.9 * x[:, 4]
    rps = 50.0 + 950.0 * x[:, 5]
    return _metrics([p50, p95, p99, err, cpu, rps])


def _sine_metrics(x: np.ndarray) -> np.ndarray:
    """Sine's two attributes in [0, 1]; SINE1 breaches when x0 < sin(x1)."""
    x0, x1 = x.T
    p50 = 200.0 - 170.0 * x0  # low x0, high latency: breach side
    p95 = p50 * 1.8
    p99 = p95 * 1.3
    err = 0.003 + 0.01 * x1
    cpu = 0.05 + 0.9 * x1
    rps = 150.0 + 300.0 * x1
    return _metrics([p50, p95, p99, err, cpu, rps])


@dataclass(frozen=True, slots=True)
class _RiverSpec:
    name: str
    stream_id: int
    make: Callable[[int], list[tuple[float, Iterable[Sample]]]]  # river seed -> sources
    keys: tuple
    mapper: Mapper
    source: str
    drift_kind: str | None = None


def _agrawal(function: int) -> Callable[[int], list[tuple[float, Iterable[Sample]]]]:
    return lambda s: [(0.0, synth.Agrawal(classification_function=function, seed=s))]


def _river_specs() -> list[_RiverSpec]:
    specs = [
        _RiverSpec(
            f"river-agrawal-f{f}",
            10 + f,
            _agrawal(f),
            _AGRAWAL_KEYS,
            _agrawal_metrics,
            f"river Agrawal(classification_function={f})",
        )
        for f in (1, 2, 6)
    ]
    specs += [
        _RiverSpec(
            f"river-agrawal-f4-r{r}",
            20 + r,
            _agrawal(4),
            _AGRAWAL_KEYS,
            _agrawal_metrics,
            f"river Agrawal(classification_function=4), replicate {r}",
        )
        for r in range(4)
    ]
    specs += [
        _RiverSpec(
            "river-agrawal-f1-to-f2",
            30,
            lambda s: [
                (0.0, synth.Agrawal(classification_function=1, seed=s)),
                (DRIFT_FRACTION, synth.Agrawal(classification_function=2, seed=s + 1)),
            ],
            _AGRAWAL_KEYS,
            _agrawal_metrics,
            "river Agrawal function 1, switching to function 2 at drift_at",
            drift_kind="concept",
        ),
        _RiverSpec(
            "river-sea",
            40,
            lambda s: [(0.0, synth.SEA(variant=0, noise=0.05, seed=s))],
            (0, 1, 2),
            _sea_metrics,
            "river SEA(variant=0, noise=0.05)",
        ),
        _RiverSpec(
            "river-hyperplane",
            50,
            lambda s: [
                (
                    0.0,
                    synth.Hyperplane(
                        seed=s,
                        n_features=6,
                        n_drift_features=2,
                        mag_change=0.001,
                        noise_percentage=0.05,
                    ),
                )
            ],
            tuple(range(6)),
            _hyperplane_metrics,
            "river Hyperplane(n_features=6, n_drift_features=2, mag_change=0.001, noise 5%)",
        ),
        _RiverSpec(
            "river-sine",
            60,
            lambda s: [(0.0, synth.Sine(classification_function=0, seed=s))],
            (0, 1),
            _sine_metrics,
            "river Sine(classification_function=0)",
        ),
    ]
    return specs


def river_streams(n_events: int = 1440, seed: int = 0) -> list[QualityStream]:
    """River generator streams: Agrawal functions 1, 2, 6, function 4 four times (four
    seeds), an Agrawal function switch at 60% (concept drift), SEA, Hyperplane, Sine.

    Each sample is held for 2-8 one-minute intervals (drawn per sample, seeded); its class
    is the breach flag of every interval it is held for.
    """
    out = []
    for spec in _river_specs():
        river_seed = _int_seed(seed, _RIVER, spec.stream_id)
        rng = np.random.default_rng(_seed(seed, _RIVER, spec.stream_id, 1))
        fractions = spec.make(river_seed)
        sources = [(int(round(f * n_events)), iter(gen)) for f, gen in fractions]
        x, y = _held(sources, spec.keys, n_events, rng)
        drift_at = sources[1][0] if len(sources) > 1 else None
        out.append(
            QualityStream(
                name=spec.name,
                family="river",
                ts=_minute_ts(n_events, _RIVER_INTERVAL_S),
                metrics=spec.mapper(x),
                labels=y,
                drift_at=drift_at,
                drift_kind=spec.drift_kind if drift_at is not None else None,
                interval_s=_RIVER_INTERVAL_S,
                source=f"{spec.source}, seed {river_seed}, held {MIN_HOLD}-{MAX_HOLD}",
            )
        )
    return out


# ---------------------------------------------------------------------------------- nab


def nab_dir() -> Path:
    """Where the NAB data lives: `$SLAOPS_NAB_DIR`, else ``shared/data/nab`` beside the repo."""
    env = os.environ.get(NAB_ENV)
    return Path(env) if env else _NAB_DEFAULT


def _nab_path(series: str) -> Path:
    return nab_dir() / _NAB_SUBDIR / f"{series}.csv"


def nab_available() -> bool:
    """Whether every series of `NAB_SERIES` is on disk (else `nab_streams()` returns [])."""
    return all(_nab_path(series).is_file() for series in NAB_SERIES)


def read_nab_series(series: str) -> tuple[np.ndarray, np.ndarray]:
    """One CloudWatch series as (epoch seconds, value), in time order, stamps unique."""
    path = _nab_path(series)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected the header timestamp,value, not {header}")
        stamps, values = [], []
        for stamp, value in reader:
            stamps.append(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp())
            values.append(float(value))
    ts, v = np.asarray(stamps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    order = np.argsort(ts, kind="stable")  # the chosen series are sorted; be sure anyway
    ts, v = ts[order], v[order]
    keep = np.concatenate([[True], np.diff(ts) > 0])  # a repeated stamp keeps its first row
    return ts[keep], v[keep]


def nab_slo(values: np.ndarray) -> float:
    """The SLO threshold of a series: the 90th percentile of its first half."""
    first = values[: max(1, int(NAB_SLO_PART * len(values)))]
    return float(np.quantile(first, NAB_SLO_QUANTILE))


def _nab_metrics(
    kind: str, values: np.ndarray, interval_s: float, rng: np.random.Generator
) -> np.ndarray:
    """The series in its own column; the rest rise with its load, plus small noise."""
    n = len(values)
    first = values[: max(1, int(NAB_SLO_PART * n))]
    scale = float(np.quantile(first, 0.99)) or float(first.max()) or 1.0
    load = np.clip(values / scale, 0.0, 3.0)  # ~[0, 1] on the first part, beyond it later
    noise = rng.normal(0.0, 1.0, (5, n))
    p50 = 30.0 * np.exp(0.8 * load + 0.05 * noise[0])
    p95 = p50 * (1.8 + 0.3 * load) * np.exp(0.05 * np.abs(noise[1]))
    p99 = p95 * (1.25 + 0.1 * load) * np.exp(0.05 * np.abs(noise[2]))
    err = 0.002 * np.exp(1.5 * load + 0.1 * noise[3])
    if kind == "cpu":
        cpu = values / 100.0
        rps = 200.0 * (0.2 + load) * np.exp(0.05 * noise[4])
    else:
        cpu = 0.1 + 0.5 * np.minimum(load, 1.6) + 0.02 * noise[4]
        rps = values / interval_s  # per interval -> per second
    return _metrics([p50, p95, p99, err, cpu, rps])


def nab_streams(n_events: int | None = None, seed: int = 0) -> list[QualityStream]:
    """The CloudWatch series of `NAB_SERIES`, each as one tenant, [] if the data is absent.

    `n_events`: the first that many events of each series, or all (up to ~4,000, two
    weeks at five minutes) when None. The SLO is set on the first half of those events.
    The seed moves only the noise of the filled-in columns, never the labels.
    """
    if not nab_available():
        return []
    out = []
    for k, (series, kind) in enumerate(NAB_SERIES.items()):
        ts, values = read_nab_series(series)
        if n_events is not None:
            ts, values = ts[:n_events], values[:n_events]
        interval_s = float(np.median(np.diff(ts))) if len(ts) > 1 else 300.0
        threshold = nab_slo(values)
        rng = np.random.default_rng(_seed(seed, _NAB, k))
        out.append(
            QualityStream(
                name=f"nab-{series}",
                family="nab",
                ts=ts,
                metrics=_nab_metrics(kind, values, interval_s, rng),
                labels=values > threshold,
                interval_s=interval_s,
                source=(
                    f"NAB realAWSCloudwatch/{series}.csv ({kind}); breach above "
                    f"{threshold:.6g} (p90 of the first half)"
                ),
            )
        )
    return out


# ---------------------------------------------------------------------------------- all


def all_streams(
    n_events: int = 1440, seed: int = 0, *, nab_events: int | None = None
) -> list[QualityStream]:
    """The benchmark set: simulator, River and NAB streams, in that order.

    `n_events` sizes the synthetic streams; the NAB series take `nab_events` (all their
    rows when None: 1,440 five-minute events would be only five days).
    """
    return [
        *simulator_streams(n_events, seed),
        *river_streams(n_events, seed),
        *nab_streams(nab_events, seed),
    ]


def table(streams: Iterable[QualityStream]) -> str:
    """A plain-text table: name, family, n, breach rate, drift."""
    lines = [f"{'stream':<36} {'family':<9} {'n':>6} {'breach':>7} {'drift':>12}"]
    for s in streams:
        drift = "-" if s.drift_at is None else f"{s.drift_kind}@{s.drift_at}"
        lines.append(f"{s.name:<36} {s.family:<9} {s.n:>6} {s.breach_rate:>7.3f} {drift:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n-events", type=int, default=1440)
    parser.add_argument("--nab-events", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not nab_available():
        print(f"NAB data not found under {nab_dir()} (set {NAB_ENV}): no nab streams")
    print(table(all_streams(args.n_events, args.seed, nab_events=args.nab_events)))


if __name__ == "__main__":
    main()
