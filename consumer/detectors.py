"""Data drift per tenant: one River detector per watched metric, confirmed by agreement.

Why z-scores: the metrics live on scales five orders of magnitude apart (rps ~200,
error_rate ~0.01), and River's defaults assume roughly unit-scale inputs; on raw
features PageHinkley alarmed on ~2% of updates. So each monitor first learns a
per-feature reference mean/std from `drift_warmup_events` events, then feeds its detectors
z-scores, clipped to +-`Z_CLIP` so that one spike is not a drift.

Why agreement: a single feature's detector alarms now and then on stationary data
(that is what its significance level means); a real change in a service moves
several metrics at once. A drift is confirmed only when `min_agreeing_features`
detectors alarm within `agreement_window` events of each other.

Why the time of day: real traffic has a daily cycle, and a detector comparing the
evening with the morning reads the cycle as drift (the demo's simulator raised 5
`data_drift` requests in 40 hours with nothing changing from day to day). So with
`drift_seasonal` (the default) the reference is a per-tenant profile: each feature's
cycle (three daily harmonics fitted to its means in each of `SEASON_BINS` hours of
the day, UTC), learnt over the tenant's first full day, and its spread around that
cycle. Detectors see the residuals from it, so like is compared with like, and a
level shift still stands out. Detection waits until that day is covered (every hour
seen): until then no data drift is raised at all. The profile is compact (7 x 6
coefficients, 6 spreads, hourly accumulators: about 3 KB a tenant, less than the
200-event warmup buffer it replaces; 30 MB for 10,000 tenants). Weekly cycles are not
modelled: the default window holds one day.

Why a stride: detectors see means of `detector_stride` consecutive z-scores, not events.
Telemetry is autocorrelated (a slow minute is followed by another), and every River
detector here assumes independent inputs: fed event by event, ADWIN confirmed a false
drift every ~500 events on an AR(1) stream with phi=0.7; fed stride-8 means, none in
200,000. Averaging also divides the cost per event by `stride`, which the consumer's
~2 us/event detection budget needs for PageHinkley (~0.7 us per update, pure Python)
and KSWIN (a KS test per update, ~150-400 us; even at stride 32 it costs ~30-60 us per
event, so it suits a few tenants or an audit, not the fleet). The price is delay: at
most `stride` events of it, and a coarser index for the signal (the last event of the
group that alarmed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import groupby
from operator import itemgetter, length_hint
from typing import Any, Final, Literal, Protocol

import numpy as np
from river import drift

from consumer.cusum import Cusum
from consumer.strides import stride_means
from schemas.telemetry import FEATURES

#: A detector kind: a key of `DETECTORS` (settings and configs check it against them).
DetectorKind = str


class Detector(Protocol):
    """What a monitor needs of a detector: River's `update(x)` then `drift_detected`."""

    @property
    def drift_detected(self) -> bool: ...

    def update(self, x: float) -> Any: ...


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """Everything slaops knows about one detector kind: adding a kind is one `DETECTORS` entry.

    `data_params` and `data_stride` are tuned for the data monitor (means of `data_stride`
    z-scores); `performance_params` for the performance monitor (means of a block of
    per-event log-loss excess, in nats; see consumer/performance.py).
    """

    factory: Callable[..., Detector]
    data_params: Mapping[str, float]
    data_stride: int
    performance_params: Mapping[str, float]
    #: Constructor arguments that must be whole numbers (params arrive as floats).
    int_params: frozenset[str] = frozenset()
    #: Compares the stream with a fixed target (0), not with the stream's own past.
    absolute: bool = False

    def params(self, purpose: Purpose, overrides: Mapping[str, float]) -> dict[str, float | int]:
        """The constructor kwargs: the tuned defaults for `purpose`, then `overrides`."""
        defaults = self.data_params if purpose == "data" else self.performance_params
        if not isinstance(overrides, Mapping):
            raise ValueError(f"params must be a mapping, got {type(overrides).__name__}")
        merged: dict[str, float | int] = {}
        for name, value in {**defaults, **overrides}.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"params[{name!r}] must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"params[{name!r}] must be finite, got {value!r}")
            if name in self.int_params:
                if value != int(value):
                    raise ValueError(f"params[{name!r}] must be a whole number, got {value!r}")
                value = int(value)
            merged[name] = value
        return merged


Purpose = Literal["data", "performance"]

#: THE registry of detector kinds. Tuning (bench/bench_detectors.py measures the data side):
#: ADWIN: River's delta; clock=4 updates (= 32 events at stride 8, River's default pace).
#: PageHinkley on stride-8 means (noise sd ~0.35 when events are independent): delta=0.25
#: drains the random walk of noise, even autocorrelated noise; threshold=20 still catches
#: a 1-sigma shift within ~250 events.
#: KSWIN: alpha=1e-4 because it tests on every update and its windows overlap; 60 updates
#: of stride 32 cover ~1,900 events, of which the last 20 updates (~640 events) are
#: compared with the rest; seed fixed so alarms are reproducible.
#: CUSUM on stride-8 means (sd ~0.7 under AR(1) phi=0.7): slack 1 sigma-of-events, so
#: stationary noise drains; threshold 10 catches a 2-sigma shift in ~10 updates. For
#: performance (means of `performance_stride` = 64 events' log-loss excess over the
#: card's out-of-fold record, in nats), slack 0.2 and threshold 1: no false alarm on 4
#: simulated tenants whose forecasters trained on two days, nor on 21 stable River
#: streams (3 seeds); at stride 16 the daily swing of "within" outcomes read as one.
DETECTORS: Final[Mapping[str, DetectorSpec]] = {
    "adwin": DetectorSpec(
        drift.ADWIN,
        data_params={"delta": 0.002, "clock": 4},
        data_stride=8,
        performance_params={"delta": 0.002, "clock": 4},
        int_params=frozenset({"clock", "max_buckets", "min_window_length", "grace_period"}),
    ),
    "page_hinkley": DetectorSpec(
        drift.PageHinkley,
        data_params={"delta": 0.25, "threshold": 20.0, "min_instances": 30},
        data_stride=8,
        performance_params={"delta": 0.1, "threshold": 3.0, "min_instances": 10},
        int_params=frozenset({"min_instances"}),
    ),
    "kswin": DetectorSpec(
        drift.KSWIN,
        data_params={"alpha": 1e-4, "window_size": 60, "stat_size": 20, "seed": 0},
        data_stride=32,
        performance_params={"alpha": 1e-4, "window_size": 60, "stat_size": 20, "seed": 0},
        int_params=frozenset({"window_size", "stat_size", "seed"}),
    ),
    "cusum": DetectorSpec(
        Cusum,
        data_params={"slack": 1.0, "threshold": 10.0},
        data_stride=8,
        # Against its out-of-fold record a stable forecaster's excess is about 0; against
        # persistence (older cards) it is its negative skill: 0.2 nats of slack suits both
        # (bench_quality, tests/test_concept_switch.py).
        performance_params={"slack": 0.2, "threshold": 1.0},
        absolute=True,
    ),
}


def detector_spec(kind: str) -> DetectorSpec:
    """The registry entry of `kind`; ValueError naming the known kinds otherwise."""
    spec = DETECTORS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ValueError(f"detector must be one of {sorted(DETECTORS)}, got {kind!r}")
    return spec


def make_detector(kind: str, purpose: Purpose, params: Mapping[str, float]) -> Detector:
    """A fresh detector of `kind` tuned for `purpose`; ValueError on bad params."""
    spec = detector_spec(kind)
    try:
        return spec.factory(**spec.params(purpose, params))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"params rejected by {kind}: {exc}") from exc


#: The seasonal profile: hours of the day (UTC) and the cycle they cover.
SEASON_BINS: Final = 24
SEASON_S: Final = 86_400.0
#: z-scores are clipped to this, so one outlier moves a detector's mean only a little.
Z_CLIP: Final = 10.0
#: Floors for the reference std: a constant feature (error_rate 0.0) must not divide by 0.
_STD_FLOOR_REL: Final = 1e-3
_STD_FLOOR_ABS: Final = 1e-9


def _whole(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """How one tenant's data-drift monitor is built; validated on construction.

    Each field but `features` is the `slaops consume` setting of the same name.
    """

    detector: DetectorKind = "adwin"
    #: Detector constructor kwargs, over `DETECTORS[detector].data_params`.
    detector_params: Mapping[str, float] = field(default_factory=dict)
    #: Events averaged per detector update; None means `DETECTORS[detector].data_stride`.
    detector_stride: int | None = None
    #: How many watched features must alarm ...
    min_agreeing_features: int = 2
    #: ... within this many events of each other for a confirmed drift.
    agreement_window: int = 200
    #: Events that estimate the reference mean/std; detectors see z-scores after them.
    drift_warmup_events: int = 200
    #: Compare each event with the same time of day (`consumer.detectors` docstring):
    #: the reference is a profile of `SEASON_BINS` hourly means learnt over a full day,
    #: and detection waits for one (events given with their times only).
    drift_seasonal: bool = True
    #: Watched columns, as indices into `FEATURES`.
    features: tuple[int, ...] = tuple(range(len(FEATURES)))

    def __post_init__(self) -> None:
        detector_spec(self.detector)
        if not isinstance(self.detector_params, Mapping):
            raise ValueError(
                f"detector_params must be a mapping, got {type(self.detector_params).__name__}"
            )
        object.__setattr__(self, "detector_params", dict(self.detector_params))
        if isinstance(self.features, str | bytes) or not isinstance(self.features, Sequence):
            raise ValueError(f"features must be a tuple of column indices, got {self.features!r}")
        object.__setattr__(self, "features", tuple(self.features))
        for index in self.features:
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(f"features must hold ints, got {index!r}")
            if not 0 <= index < len(FEATURES):
                raise ValueError(f"features index {index} is outside 0..{len(FEATURES) - 1}")
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"features must be non-empty and unique, got {self.features!r}")
        _whole("min_agreeing_features", self.min_agreeing_features, 1)
        if self.min_agreeing_features > len(self.features):
            raise ValueError(
                f"min_agreeing_features={self.min_agreeing_features} exceeds the "
                f"{len(self.features)} watched features"
            )
        _whole("agreement_window", self.agreement_window, 1)
        _whole("drift_warmup_events", self.drift_warmup_events, 2)
        if self.detector_stride is not None:
            _whole("detector_stride", self.detector_stride, 1)
        self.make_detector()  # River itself judges the params, once, here

    @property
    def effective_stride(self) -> int:
        """`detector_stride`, or the default for this detector kind."""
        if self.detector_stride is None:
            return detector_spec(self.detector).data_stride
        return self.detector_stride

    def river_params(self) -> dict[str, float | int]:
        """The detector's kwargs: the registry's tuned defaults, then `detector_params`."""
        return detector_spec(self.detector).params("data", self.detector_params)

    def make_detector(self) -> Detector:
        """A fresh detector for one feature."""
        return make_detector(self.detector, "data", self.detector_params)


@dataclass(frozen=True, slots=True)
class DriftSignal:
    """A confirmed drift: where in the block, which features, and by how much."""

    #: Index, within the block given to `update`, of the confirming event.
    index: int
    #: Names of the agreeing features, in `FEATURES` order.
    features: tuple[str, ...]
    #: Per agreeing feature: `<name>.reference_mean`, `.reference_std`, `.recent_mean`
    #: (over the last `agreement_window` events) and `.shift_sigma`; plain floats.
    statistic: dict[str, float]


class DriftMonitor(Protocol):
    """THE monitor interface, of the data monitor and the performance monitor alike.

    `update` consumes one tenant's block, oldest first, and returns every confirmed
    drift in it, in event order, each `index` relative to the block. After a signal a
    monitor restarts on the rest of the block, so the signals never depend on where
    blocks are cut. Raises ValueError on a malformed block; never touches Kafka.
    """

    def update(self, block: np.ndarray) -> list[DriftSignal]: ...

    def reset(self) -> None: ...


@cache
def _adwin_helper_reports_drift() -> bool:
    """Whether River's ADWIN exposes its Rust helper whose `update` returns the drift flag.

    Calling it directly skips ADWIN's Python wrapper: ~0.06 us instead of ~0.25 us per
    update. tests/consumer/test_detectors.py pins that both paths alarm on the same events.
    """
    helper = getattr(drift.ADWIN(), "_helper", None)
    return helper is not None and isinstance(helper.update(0.0), bool)


class DataDriftMonitor:
    """Per tenant: one detector per watched feature; a `DriftMonitor` over (n, 6) blocks."""

    __slots__ = (
        "config",
        "_cols",
        "_all_cols",
        "_stride",
        "_make",
        "_fast_adwin",
        "_warm",
        "_warm_n",
        "_mean",
        "_std",
        "_detectors",
        "_last_alarm",
        "_pending",
        "_tail",
        "_seen",
        "_season",
    )

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self._cols = np.asarray(config.features, dtype=np.intp)
        self._all_cols = config.features == tuple(range(len(FEATURES)))
        self._stride = config.effective_stride
        self._make: Callable[[], Any] = partial(
            make_detector, config.detector, "data", config.detector_params
        )
        self._fast_adwin = config.detector == "adwin" and _adwin_helper_reports_drift()
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new warmup, a new reference, fresh detectors."""
        width = len(self._cols)
        self._stride = self.config.effective_stride
        self._make = partial(
            make_detector, self.config.detector, "data", self.config.detector_params
        )
        self._warm: np.ndarray | None = np.empty((self.config.drift_warmup_events, width))
        self._warm_n = 0
        self._mean = np.zeros(width)
        self._std = np.ones(width)
        self._detectors: list[Any] = []
        #: Per watched feature, the detection-clock time of its latest alarm.
        self._last_alarm: list[int | None] = [None] * width
        #: z-scores not yet averaged into a full stride group.
        self._pending = np.empty((0, width))
        #: The latest raw rows fed to detectors, for a signal's recent means.
        self._tail = np.empty((0, width), dtype=np.float32)
        #: Events fed to detectors since the reference was set.
        self._seen = 0
        #: The seasonal reference being learnt, then learnt (seasonal mode only).
        self._season: SeasonalProfile | None = None

    def update(self, features: np.ndarray, ts: np.ndarray | None = None) -> list[DriftSignal]:
        """Consume events (n, 6), oldest first; every confirmed drift, in event order.

        After a confirmed drift the monitor resets and the rest of the block starts the
        new warmup, so one shift yields one signal, and the signals do not depend on
        where blocks are cut. With `ts` (the events' epoch seconds) and
        `drift_seasonal`, events are compared with the same time of day.
        """
        block = np.asarray(features)
        if block.ndim != 2 or block.shape[1] != len(FEATURES):
            raise ValueError(f"features must have shape (n, {len(FEATURES)}), got {block.shape}")
        if block.dtype.kind != "f":
            raise ValueError(f"features must be a float array, got {block.dtype}")
        if not np.isfinite(block).all():
            raise ValueError("features must be finite")
        rows = block if self._all_cols else block[:, self._cols]
        seasonal = ts is not None and self.config.drift_seasonal
        if seasonal and len(ts) != len(rows):  # type: ignore[arg-type]
            raise ValueError("ts must hold one time per row of features")
        signals: list[DriftSignal] = []
        start = 0
        while start < len(rows):
            if seasonal and ts is not None:
                if self._season is None or not self._season.ready:
                    start = self._learn_season(rows, ts, start)
                    continue
                found = self._detect(rows, start, ts)
            elif self._warm is not None:
                start = self._fill_warmup(self._warm, rows, start)
                continue
            else:
                found = self._detect(rows, start)
            if found is None:
                break
            signals.append(found)
            self.reset()
            start = found.index + 1
        return signals

    def _fill_warmup(self, warm: np.ndarray, rows: np.ndarray, start: int) -> int:
        take = min(len(warm) - self._warm_n, len(rows) - start)
        warm[self._warm_n : self._warm_n + take] = rows[start : start + take]
        self._warm_n += take
        if self._warm_n == len(warm):
            self._mean = warm.mean(axis=0)
            floor = np.maximum(np.abs(self._mean) * _STD_FLOOR_REL, _STD_FLOOR_ABS)
            self._std = np.maximum(warm.std(axis=0), floor)
            self._detectors = [self._make() for _ in self._cols]
            self._warm = None
        return start + take

    def _learn_season(self, rows: np.ndarray, ts: np.ndarray, start: int) -> int:
        """Learn the profile from rows[start:] until it covers a day; where it stopped."""
        if self._season is None:
            self._season = SeasonalProfile(len(self._cols))
            self._warm = None  # the profile replaces the warmup buffer
        taken = self._season.learn(rows[start:], ts[start:], self.config.drift_warmup_events)
        if self._season.ready:
            self._std = self._season.spread
            # One update per half hour of events at least: residuals from a daily profile
            # keep the slow part of the load's disturbance (simulated: AR(1) at 0.9-0.97
            # a minute), and detectors assume independent inputs. At 1-minute telemetry:
            # no false drift in 8 tenants x 3 days x 2 seeds, a 1.6x latency rise found
            # in 4 hours; at stride 15, false drifts; at 60, 11 hours.
            self._stride = max(self._stride, self._season.events_per_hour // 2)
            self._make = self._seasonal_make
            self._detectors = [self._make() for _ in self._cols]
        return start + taken

    def _seasonal_make(self) -> Any:
        """A detector for hourly updates: ADWIN checks at each (its clock is in updates)."""
        params = dict(self.config.detector_params)
        if self.config.detector == "adwin":
            params.setdefault("clock", 1)
        return make_detector(self.config.detector, "data", params)

    def _detect(
        self, rows: np.ndarray, start: int, ts: np.ndarray | None = None
    ) -> DriftSignal | None:
        """Feed rows[start:] to the detectors; the first confirmed drift, if any."""
        raw = rows[start:]
        if ts is not None and self._season is not None:
            expected = self._season.expected(ts[start:])
            z = raw - expected
            self._mean = expected.mean(axis=0)  # a signal's reference: the profile here
        else:
            z = raw - self._mean
        z /= self._std
        np.maximum(z, -Z_CLIP, out=z)  # np.clip costs ~5 us more per call
        np.minimum(z, Z_CLIP, out=z)
        stride = self._stride
        # Block row of update u's (last) event: offset + (u + 1) * stride - 1.
        offset = start
        if stride > 1:
            offset = start - len(self._pending)
            z, self._pending = stride_means(self._pending, z, stride)
        feed = self._feed_adwin if self._fast_adwin else self._feed
        alarms = [
            (offset + (u + 1) * stride - 1, slot)
            for slot, values in enumerate(z.T.tolist())
            for u in feed(slot, values)
        ]
        if alarms:
            alarms.sort()
            # Alarms an update or two apart agree, however long an update is.
            window = max(self.config.agreement_window, 3 * self._stride)
            for row, group in groupby(alarms, key=itemgetter(0)):
                now = self._seen + row - start
                for _, slot in group:
                    self._last_alarm[slot] = now
                agreeing = [
                    s
                    for s, seen in enumerate(self._last_alarm)
                    if seen is not None and now - seen < window
                ]
                if len(agreeing) >= self.config.min_agreeing_features:
                    return self._signal(raw[: row - start + 1], row, agreeing)
        self._seen += len(raw)
        # A copy, not a view: a view would keep the whole concatenated block alive.
        tail = np.concatenate((self._tail, raw.astype(np.float32, copy=False)))
        self._tail = tail[-self.config.agreement_window :].copy()
        return None

    def _feed(self, slot: int, values: list[float]) -> list[int]:
        """Update one feature's detector; the positions in `values` where it alarmed."""
        detector = self._detectors[slot]
        update = detector.update
        alarms = []
        for position, value in enumerate(values):
            update(value)
            if detector.drift_detected:
                alarms.append(position)
        return alarms

    def _feed_adwin(self, slot: int, values: list[float]) -> list[int]:
        """`_feed` for ADWIN through its Rust helper; replacing the detector after an
        alarm is exactly what River's wrapper does on its next update."""
        update = self._detectors[slot]._helper.update
        remaining = iter(values)
        alarms = []
        while any(map(update, remaining)):  # stops right after an alarming update
            alarms.append(len(values) - length_hint(remaining) - 1)
            detector = self._detectors[slot] = self._make()
            update = detector._helper.update
        return alarms

    def _signal(self, raw: np.ndarray, row: int, slots: list[int]) -> DriftSignal:
        recent = np.concatenate((self._tail, raw))[-self.config.agreement_window :]
        recent_mean = recent.mean(axis=0)
        statistic: dict[str, float] = {}
        names = []
        for slot in sorted(slots, key=lambda s: self.config.features[s]):
            name = FEATURES[self.config.features[slot]]
            names.append(name)
            mean, std = float(self._mean[slot]), float(self._std[slot])
            statistic[f"{name}.reference_mean"] = mean
            statistic[f"{name}.reference_std"] = std
            statistic[f"{name}.recent_mean"] = float(recent_mean[slot])
            statistic[f"{name}.shift_sigma"] = (float(recent_mean[slot]) - mean) / std
        return DriftSignal(index=row, features=tuple(names), statistic=statistic)


class SeasonalProfile:
    """Each feature's daily cycle (`HARMONICS` harmonics fitted to its hourly means, UTC)
    and its spread around it.

    Learnt from accumulators (sums, not rows) over a tenant's first full day: ready
    once its events span `SEASON_S` with every hour seen and `min_events` in all.

    >>> profile = SeasonalProfile(1)
    >>> hours = np.arange(0.0, 2 * 86_400, 600.0)
    >>> cycle = 100 + 50 * np.sin(2 * np.pi * hours / 86_400)
    >>> profile.learn(cycle[:, None], hours, 10) < len(hours), profile.ready
    (True, True)
    >>> bool(np.abs(profile.expected(hours[-6:])[:, 0] - cycle[-6:]).max() < 2.0)
    True
    """

    __slots__ = ("_sum", "_sumsq", "_count", "_first", "_n", "coef", "spread", "ready")

    def __init__(self, width: int) -> None:
        self._sum = np.zeros((SEASON_BINS, width))
        self._sumsq = np.zeros((SEASON_BINS, width))
        self._count = np.zeros(SEASON_BINS)
        self._first: float | None = None
        self._n = 0
        self.coef = np.zeros((2 * HARMONICS + 1, width))
        self.spread = np.ones(width)
        self.ready = False

    def learn(self, rows: np.ndarray, ts: np.ndarray, min_events: int) -> int:
        """Take events until the profile is ready; how many were taken.

        A day passed with an hour never seen (a gap in the telemetry) keeps learning
        until every hour has been.
        """
        if self._first is None:
            self._first = float(ts[0])
        # The first event at which a full cycle has passed since the first one.
        passed = int(np.searchsorted(ts, self._first + SEASON_S, side="left"))
        if passed >= len(rows):
            self._add(rows, ts)
            return len(rows)
        self._add(rows[:passed], ts[:passed])
        if self._covered(min_events):
            self._finish()
            return passed
        self._add(rows[passed:], ts[passed:])
        if self._covered(min_events):
            self._finish()
        return len(rows)

    def _add(self, rows: np.ndarray, ts: np.ndarray) -> None:
        # Unbuffered adds in event order into the flat views of the (C-contiguous)
        # accumulators: each (hour, feature) cell sums what 2-D indices sum, bit for bit,
        # in a third of the time.
        bins = _hour_bins(ts)
        width = self._sum.shape[1]
        cells = (bins[:, None] * width + np.arange(width)).reshape(-1)
        values = rows.astype(np.float64)
        np.add.at(self._sum.reshape(-1), cells, values.reshape(-1))
        np.add.at(self._sumsq.reshape(-1), cells, np.square(values).reshape(-1))
        self._count += np.bincount(bins, minlength=SEASON_BINS)
        self._n += len(rows)

    @property
    def events_per_hour(self) -> int:
        """Events an hour, as the learnt day held them."""
        return max(1, round(self._n / SEASON_BINS))

    def _covered(self, min_events: int) -> bool:
        return bool(self._count.min() > 0) and self._n >= min_events

    def _finish(self) -> None:
        """Fit `HARMONICS` daily harmonics to the hourly means (weighted by their counts):
        the cycle is smooth, and one day's hourly means also hold that day's noise."""
        count = self._count[:, None]
        means = self._sum / count
        design = _harmonics((np.arange(SEASON_BINS) + 0.5) * (SEASON_S / SEASON_BINS))
        weight = np.sqrt(count)
        self.coef = np.linalg.lstsq(design * weight, means * weight, rcond=None)[0]
        fitted = design @ self.coef
        within = np.maximum(self._sumsq - count * np.square(means), 0.0).sum(axis=0)
        between = (count * np.square(means - fitted)).sum(axis=0)
        spread = np.sqrt((within + between) / max(1.0, self._n - design.shape[1]))
        floor = np.maximum(np.abs(means).mean(axis=0) * _STD_FLOOR_REL, _STD_FLOOR_ABS)
        self.spread = np.maximum(spread, floor)
        self.ready = True
        # Learnt: the accumulators go (the coefficients and spreads are 330 bytes).
        self._sum = self._sumsq = np.empty((0, means.shape[1]))

    def expected(self, ts: np.ndarray) -> np.ndarray:
        """Each feature's profile value at each time (n, width)."""
        out: np.ndarray = _harmonics(np.asarray(ts, dtype=np.float64)) @ self.coef
        return out


#: Daily harmonics of the seasonal profile: enough for a peak and a trough a day.
HARMONICS: Final = 3


def _harmonics(ts: np.ndarray) -> np.ndarray:
    """The profile's design matrix at times `ts`: 1, then cos and sin of each harmonic."""
    phase = (2 * np.pi / SEASON_S) * np.mod(ts, SEASON_S)
    columns = [np.ones_like(phase)]
    for k in range(1, HARMONICS + 1):
        columns += [np.cos(k * phase), np.sin(k * phase)]
    return np.stack(columns, axis=1)


def _hour_bins(ts: np.ndarray) -> np.ndarray:
    return (np.mod(ts, SEASON_S) // (SEASON_S / SEASON_BINS)).astype(np.intp) % SEASON_BINS
