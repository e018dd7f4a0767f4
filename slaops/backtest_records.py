"""Recorded telemetry as the topic would hold it: `slaops backtest`'s input, indexed.

A JSONL file of `TelemetryEvent`s becomes the records of one partition (partition 0
of the telemetry topic, offset = line number from 0), keyed by tenant as producers key
them, so the consumer's core reads them as it reads the topic and a retrain request's
offset ranges name lines of the file. The retrainer's replay reads those lines back
through its own record-to-rows path (`retrainer.replay.tenant_rows`).

Each valid line is parsed once more here, for what the backtest needs beside the core:
the clock (event time, the newest so far), and each tenant's events as columns, to
score the warnings against.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrainer.errors import ReplayError
from retrainer.main import replay_limits
from retrainer.replay import TenantRows, plan_replay, tenant_rows
from retrainer.settings import RetrainerSettings
from schemas import FEATURES, InvalidTelemetry, RetrainRequested, parse_telemetry
from schemas.telemetry import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One line of the input as a consumed record (`kernel.kafka.KafkaRecord`)."""

    _topic: str
    _offset: int
    _key: bytes | None
    _value: bytes

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


@dataclass(eq=False)
class TenantEvents:
    """One tenant's valid events in input order, as columns (filled by `finish`)."""

    tenant: str
    offsets: list[int] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    rows: list[tuple[float, ...]] = field(default_factory=list)
    flags: list[bool] = field(default_factory=list)
    ts: np.ndarray = field(default_factory=lambda: np.empty(0))
    metrics: np.ndarray = field(default_factory=lambda: np.empty((0, len(FEATURES))))
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    #: The offsets as an array, and microsecond event time -> the indices of the
    #: tenant's events stamped so (in order).
    at: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    by_micros: dict[int, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets)

    def finish(self) -> None:
        self.ts = np.array(self.stamps, dtype=np.float64)
        self.metrics = np.array(self.rows, dtype=np.float32).reshape(-1, len(FEATURES))
        self.labels = np.array(self.flags, dtype=np.bool_)
        self.at = np.array(self.offsets, dtype=np.int64)
        for index, stamp in enumerate(self.stamps):
            self.by_micros.setdefault(round(stamp * 1e6), []).append(index)
        self.rows, self.flags = [], []

    @property
    def interval_s(self) -> float:
        """The tenant's typical interval (median step), 0 with fewer than two events."""
        return float(np.median(np.diff(self.ts))) if len(self.ts) > 1 else 0.0

    def column(self, metric: str) -> np.ndarray:
        return self.metrics[:, FEATURES.index(metric)].astype(np.float64)


@dataclass(eq=False)
class RecordedTelemetry:
    """The input's records, each valid tenant's events, and the event-time clock."""

    topic: str
    records: list[FileRecord]
    tenants: dict[str, TenantEvents]
    #: clock[j]: the newest event time among records [0, j) (NaN before any valid one).
    clock: np.ndarray
    invalid: int

    def __len__(self) -> int:
        return len(self.records)

    def span_of(self, tenant: str, lo: int, hi: int) -> bool:
        """Whether `tenant` has an event at an offset in [lo, hi)."""
        offsets = self.tenants[tenant].at
        at = int(np.searchsorted(offsets, lo))
        return at < len(offsets) and int(offsets[at]) < hi


def _key_of(line: bytes) -> bytes | None:
    """The key a producer would send the line with: its tenant (None if it has none)."""
    try:
        document: Any = json.loads(line)
    except ValueError:
        return None
    tenant = document.get("tenant") if isinstance(document, dict) else None
    return tenant.encode() if isinstance(tenant, str) else None


def read_telemetry(
    path: Path,
    topic: str,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    progress: Callable[[int], None] | None = None,
) -> RecordedTelemetry:
    """The input file as records of `topic`; invalid lines stay records (dead letters)."""
    records: list[FileRecord] = []
    tenants: dict[str, TenantEvents] = {}
    clock: list[float] = [np.nan]
    newest = -np.inf
    invalid = 0
    for offset, line in enumerate(_lines(path)):
        key = _key_of(line)
        records.append(FileRecord(topic, offset, key, line))
        try:
            event = parse_telemetry(key, line, max_bytes=max_bytes)
        except InvalidTelemetry:
            invalid += 1
        else:
            held = tenants.get(event.tenant)
            if held is None:
                held = tenants[event.tenant] = TenantEvents(event.tenant)
            stamp = event.ts.timestamp()
            held.offsets.append(offset)
            held.stamps.append(stamp)
            held.rows.append(tuple(getattr(event, name) for name in FEATURES))
            held.flags.append(event.sla_breached)
            newest = max(newest, stamp)
        clock.append(newest if np.isfinite(newest) else np.nan)
        if progress is not None and offset % 10_000 == 0:
            progress(offset)
    for held in tenants.values():
        held.finish()
    return RecordedTelemetry(topic, records, tenants, np.array(clock), invalid)


def _lines(path: Path) -> Iterator[bytes]:
    """The file's lines without their line ends; a blank one is a record too (invalid)."""
    with path.open("rb") as handle:
        for raw in handle:
            yield raw.rstrip(b"\r\n")


def file_replay(
    telemetry: RecordedTelemetry, settings: RetrainerSettings
) -> Callable[[RetrainRequested], TenantRows]:
    """The retrainer's replay of a request, reading the ranges from the input's records.

    The same checks as from the broker (`plan_replay`: the topic, the ranges' number and
    extent); a range beyond the file (or on another partition) is unavailable. Records
    under another key count as other tenants' (an invalid one among them too).
    """
    limits = replay_limits(settings)
    records = telemetry.records

    def replay(request: RetrainRequested) -> TenantRows:
        chosen: list[FileRecord] = []
        for span in plan_replay(request.source, limits):
            if span.partition != 0 or span.end_offset > len(records):
                raise ReplayError(
                    f"{span.topic}[{span.partition}] offsets {span.start_offset}.."
                    f"{span.end_offset} are not in the input ({len(records)} records, "
                    "partition 0)"
                )
            own = span.own_offsets()
            if own is None:
                chosen.extend(records[span.start_offset : span.end_offset])
            else:
                chosen.extend(records[offset] for offset in own)
        # Only the tenant's own key can hold its events (`parse_telemetry` refuses any
        # other): the rest are counted as other tenants' without parsing them.
        key = request.tenant.encode()
        mine = [record for record in chosen if record.key() == key]
        # Event time is the backtest's clock: the newest event time when the request's
        # last record was read (what the core's clock was), not its detection time: a
        # follow-up names the window as it is when it goes out, later than its drift.
        end = max((span.end_offset for span in request.source), default=0)
        clock = float(telemetry.clock[min(end, len(records))])
        rows = tenant_rows(
            mine,
            tenant=request.tenant,
            max_bytes=settings.max_message_bytes,
            rule=settings.time_rule(),
            now=None if np.isnan(clock) else clock,
        )
        return replace(rows, other_tenants=rows.other_tenants + len(chosen) - len(mine))

    return replay
