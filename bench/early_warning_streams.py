"""Streams for the early-warning benchmark: each with the metric and SLO an SRE would alert on.

Every stream of `bench.quality_streams` (simulator, River, NAB), but longer (the rules
and the forecasters are tuned on a stream's first half, at most `TRAIN_MAX` events, and
judged on the rest), and with all 17 CloudWatch series of NAB. A stream names the metric
that defines its breach and the SLO on it, which is what the SRE rules are given:

- NAB: the series' own column; an interval breaches above the 90th percentile of the
  stream's training part (the SLO is set on history, then applied going forward);
- simulator: p99 latency and the tenant's p99 threshold (its rule also breaches on the
  error rate, which a p99 rule cannot see, as in real services);
- River: the generators' classes are not thresholds of one metric; the rules get the
  column that separates breaches best on the training part, at the level that best
  separates them there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from schemas.telemetry import FEATURES
from testkit.quality_streams import (
    QualityStream,
    _nab_metrics,
    _seed,
    nab_dir,
    read_nab_series,
    river_streams,
    simulator_streams,
)

#: The training part: the first half of a stream, at most this many events.
TRAIN_MAX: Final = 2_500
SLO_QUANTILE: Final = 0.9
#: Synthetic streams' length (one-minute events: about 3.5 days).
SYNTHETIC_EVENTS: Final = 5_000
_NAB_ID: Final = 7


def train_size(n: int) -> int:
    """Events of a stream's training part: its first half, at most `TRAIN_MAX`."""
    return min(n // 2, TRAIN_MAX)


@dataclass(frozen=True, eq=False)
class WarningStream:
    """A `QualityStream` with the breach metric (a `FEATURES` name) and its SLO."""

    stream: QualityStream
    slo_metric: str
    slo: float

    @property
    def name(self) -> str:
        return self.stream.name

    @property
    def family(self) -> str:
        return self.stream.family

    @property
    def n_train(self) -> int:
        return train_size(self.stream.n)

    def metric(self) -> np.ndarray:
        return self.stream.metrics[:, FEATURES.index(self.slo_metric)].astype(np.float64)


def _kind(series: str) -> str:
    if "cpu" in series or "asg" in series:
        return "cpu"
    if "request_count" in series:
        return "count"
    return "bytes"


def nab_warning_streams(seed: int = 0) -> list[WarningStream]:
    """All CloudWatch series of NAB on disk, each one tenant ([] without the data)."""
    folder = nab_dir() / "realAWSCloudwatch"
    if not folder.is_dir():
        return []
    out = []
    for k, path in enumerate(sorted(Path(folder).glob("*.csv"))):
        series = path.stem
        kind = _kind(series)
        ts, values = read_nab_series(series)
        interval_s = float(np.median(np.diff(ts))) if len(ts) > 1 else 300.0
        slo_value = float(np.quantile(values[: train_size(len(values))], SLO_QUANTILE))
        metrics = _nab_metrics(
            kind, values, interval_s, np.random.default_rng(_seed(seed, _NAB_ID, k))
        )
        column = "cpu_util" if kind == "cpu" else "rps"
        stream = QualityStream(
            name=f"nab-{series}",
            family="nab",
            ts=ts,
            metrics=metrics,
            labels=values > slo_value,
            interval_s=interval_s,
            source=f"NAB realAWSCloudwatch/{series}.csv ({kind}); breach above {slo_value:.6g}",
        )
        scaled = metrics[:, FEATURES.index(column)].astype(np.float64)
        # The column holds the series scaled (cpu percent -> share, per interval -> per
        # second): the SLO in the column's units is the one that gives the same flags.
        train = slice(0, train_size(len(values)))
        slo_col = float(np.quantile(scaled[train], SLO_QUANTILE))
        out.append(WarningStream(stream, column, slo_col))
    return out


def _best_separating(stream: QualityStream) -> tuple[str, float]:
    """The column and level whose exceedance matches the training part's breaches best."""
    train = slice(0, train_size(stream.n))
    labels = stream.labels[train]
    best = ("latency_p99_ms", float("inf"), -1.0)
    for j, name in enumerate(FEATURES):
        values = stream.metrics[train, j].astype(np.float64)
        for sign in (1.0,):
            levels = np.unique(np.quantile(values, np.linspace(0.5, 0.99, 50)))
            for level in levels:
                flags = sign * values > sign * level
                tp = np.count_nonzero(flags & labels)
                denominator = np.count_nonzero(flags) + np.count_nonzero(labels)
                f1 = 2 * tp / denominator if denominator else 0.0
                if f1 > best[2]:
                    best = (name, float(level), f1)
    return best[0], best[1]


def synthetic_warning_streams(
    seed: int = 0, n_events: int = SYNTHETIC_EVENTS
) -> list[WarningStream]:
    """The simulator's and River's streams, with the metric and level a rule would watch."""
    out = []
    for stream in simulator_streams(n_events, seed):
        threshold = _simulator_threshold(stream)
        out.append(WarningStream(stream, "latency_p99_ms", threshold))
    for stream in river_streams(n_events, seed):
        metric, level = _best_separating(stream)
        out.append(WarningStream(stream, metric, level))
    return out


def _simulator_threshold(stream: QualityStream) -> float:
    """The tenant's p99 threshold, read from the stream's description."""
    text = stream.source.split("p99 > ", 1)[1]
    return float(text.split(" ms", 1)[0])


def warning_streams(seed: int = 0) -> list[WarningStream]:
    """The benchmark set: NAB's CloudWatch series, then the simulator and River."""
    return [*nab_warning_streams(seed), *synthetic_warning_streams(seed)]
