"""The quality benchmark's streams: valid telemetry, learnable labels, seeded, NAB SLO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from schemas.telemetry import FEATURES, MAX_LATENCY_MS, MAX_RPS, parse_telemetry
from testkit import quality_streams as qs
from testkit.quality_streams import QualityStream, all_streams, nab_available, nab_streams

N = 300
SYNTHETIC = ("simulator", "river")


@pytest.fixture(scope="module")
def streams() -> list[QualityStream]:
    return all_streams(n_events=N)


@pytest.fixture(scope="module")
def nab() -> list[QualityStream]:
    if not nab_available():
        pytest.skip(f"NAB data not found under {qs.nab_dir()} (set {qs.NAB_ENV})")
    return [s for s in all_streams(n_events=N) if s.family == "nab"]


def test_benchmark_set_covers_the_families(streams: list[QualityStream]) -> None:
    by_family = {f: [s.name for s in streams if s.family == f] for f in qs.FAMILIES}
    assert len(by_family["simulator"]) == 3
    assert len(by_family["river"]) >= 8
    assert sum("agrawal-f4" in name for name in by_family["river"]) == 4
    assert len({s.name for s in streams}) == len(streams), "names are unique"
    kinds = {s.drift_kind for s in streams if s.family == "simulator"}
    assert kinds == {None, "concept", "data"}
    for s in streams:
        assert (s.drift_at is None) == (s.drift_kind is None), s.name
        if s.family in SYNTHETIC:
            assert s.n == N, s.name


def test_shapes_dtypes_and_ranges(streams: list[QualityStream]) -> None:
    for s in streams:
        n = s.n
        assert s.ts.dtype == np.float64 and s.ts.shape == (n,), s.name
        assert s.metrics.dtype == np.float32 and s.metrics.shape == (n, len(FEATURES)), s.name
        assert s.labels.dtype == np.bool_ and s.labels.shape == (n,), s.name
        assert (np.diff(s.ts) > 0).all(), f"{s.name}: ts not strictly increasing"
        m = s.metrics.astype(np.float64)
        assert np.isfinite(m).all(), s.name
        p50, p95, p99, err, cpu, rps = m.T
        assert (p50 >= 0).all() and (p99 <= MAX_LATENCY_MS).all(), s.name
        assert (p50 <= p95).all() and (p95 <= p99).all(), f"{s.name}: latencies out of order"
        assert ((err >= 0) & (err <= 1)).all() and ((cpu >= 0) & (cpu <= 1)).all(), s.name
        assert ((rps >= 0) & (rps <= MAX_RPS)).all(), s.name
        assert 0 < s.labels.sum() < n, f"{s.name}: one class only"
        if s.drift_at is not None:
            assert 0 < s.drift_at < n, s.name


def test_rows_pass_the_telemetry_schema(streams: list[QualityStream]) -> None:
    """A few rows of each stream, the extremes of every column among them, decoded."""
    for s in streams:
        rows = {0, s.n - 1, *np.argmax(s.metrics, axis=0).tolist()}
        rows |= set(np.argmin(s.metrics, axis=0).tolist())
        events = list(s.events(tenant="t-quality"))
        for i in sorted(rows):
            event = parse_telemetry(b"t-quality", json.dumps(events[i]).encode())
            assert event.sla_breached == bool(s.labels[i])
            assert event.ts.timestamp() == pytest.approx(s.ts[i])
            got = [getattr(event, f) for f in FEATURES]
            assert np.array_equal(np.asarray(got, dtype=np.float32), s.metrics[i]), s.name


def test_synthetic_breaches_persist_so_the_next_one_is_predictable(
    streams: list[QualityStream],
) -> None:
    """A breach makes the next interval's breach far likelier than a non-breach does.

    (NAB labels are the real series against its SLO, checked below; some of those series
    breach in isolated spikes, and the benchmark must show what a model makes of that.)
    """
    for s in streams:
        if s.family not in SYNTHETIC:
            continue
        now, after = s.labels[:-1], s.labels[1:]
        after_breach, after_ok = float(after[now].mean()), float(after[~now].mean())
        assert after_breach > after_ok + 0.15, f"{s.name}: {after_breach:.3f} vs {after_ok:.3f}"


def _same(a: QualityStream, b: QualityStream) -> bool:
    return (
        np.array_equal(a.ts, b.ts)
        and np.array_equal(a.metrics, b.metrics)
        and np.array_equal(a.labels, b.labels)
        and a.drift_at == b.drift_at
    )


def test_deterministic_for_a_seed_and_different_across_seeds(
    streams: list[QualityStream],
) -> None:
    again = all_streams(n_events=N)
    assert [s.name for s in again] == [s.name for s in streams]
    for a, b in zip(streams, again, strict=True):
        assert _same(a, b), f"{a.name} differs between two runs with the same seed"
    other = {s.name: s for s in all_streams(n_events=N, seed=1)}
    for s in streams:
        if s.family in SYNTHETIC:
            assert not np.array_equal(s.metrics, other[s.name].metrics), s.name
            assert not np.array_equal(s.labels, other[s.name].labels), s.name


def test_a_shorter_synthetic_stream_keeps_its_drift_point() -> None:
    for s in qs.simulator_streams(200) + qs.river_streams(200):
        if s.drift_at is not None:
            assert s.drift_at == int(qs.DRIFT_FRACTION * 200), s.name


def test_invalid_telemetry_is_refused() -> None:
    n = 4
    metrics = np.tile(np.array([10, 20, 30, 0.01, 0.5, 100], dtype=np.float32), (n, 1))
    ts = np.arange(n, dtype=np.float64)
    labels = np.array([True, False, True, False])
    QualityStream("ok", "river", ts, metrics, labels)
    bad = metrics.copy()
    bad[1, 1] = 5.0  # p95 below p50
    with pytest.raises(ValueError, match="p50 <= p95"):
        QualityStream("bad", "river", ts, bad, labels)
    with pytest.raises(ValueError, match="strictly increasing"):
        QualityStream("bad", "river", ts[::-1].copy(), metrics, labels)
    with pytest.raises(ValueError, match="float32"):
        QualityStream("bad", "river", ts, metrics.astype(np.float64), labels)


def test_nab_yields_the_series_on_their_real_timestamps(nab: list[QualityStream]) -> None:
    assert len(nab) >= 6
    names = {s.name.removeprefix("nab-") for s in nab}
    assert set(qs.NAB_SERIES) == names
    for s in nab:
        ts, values = qs.read_nab_series(s.name.removeprefix("nab-"))
        assert s.n == len(values) >= 1_000, "the whole series by default"
        assert np.array_equal(s.ts, ts)
        assert s.interval_s == 300.0


def test_nab_breaches_near_ten_percent_of_the_first_half(nab: list[QualityStream]) -> None:
    """Above the first half's 90th percentile: ~10% of it, less only where values tie."""
    for s in nab:
        _, values = qs.read_nab_series(s.name.removeprefix("nab-"))
        threshold = qs.nab_slo(values)
        assert np.array_equal(s.labels, values > threshold), s.name
        half = len(values) // 2
        first = values[:half]
        rate = float((first > threshold).mean())
        tied = float((first == threshold).mean())
        slack = 2.0 / half
        assert rate <= 0.10 + slack, f"{s.name}: {rate:.3f}"
        assert rate + tied >= 0.10 - slack, f"{s.name}: {rate:.3f} (+{tied:.3f} tied)"
        if tied < 0.01:
            assert rate == pytest.approx(0.10, abs=0.01), s.name


def test_nab_first_events_take_their_own_slo(nab: list[QualityStream]) -> None:
    for s in nab_streams(n_events=N):
        _, values = qs.read_nab_series(s.name.removeprefix("nab-"))
        assert s.n == N
        assert np.array_equal(s.labels, values[:N] > qs.nab_slo(values[:N])), s.name


def test_missing_nab_data_gives_no_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(qs.NAB_ENV, str(tmp_path))
    assert not nab_available()
    assert nab_streams() == []
    assert {s.family for s in all_streams(n_events=50)} == {"simulator", "river"}
