"""`slaops watch`: one readable line per model event (or JSON with `--json`)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition
from pydantic import BaseModel, Field, ValidationError

from kernel.kafka import base_config, is_record, make_reader
from kernel.logs import json_visible, visible
from kernel.settings import ServiceSettings, TopicName
from schemas import ChampionKept, ModelPublished, RetrainFailed, RetrainRequested, topics
from schemas.retrain import MAX_REQUEST_BYTES

log = logging.getLogger(__name__)


class WatchSettings(ServiceSettings):
    models_topic: TopicName = Field(default=topics.MODELS, description="ModelPublished.")
    retrain_topic: TopicName = Field(default=topics.RETRAIN, description="RetrainRequested.")
    failures_topic: TopicName = Field(default=topics.RETRAIN_FAILURES, description="Failures.")
    decisions_topic: TopicName = Field(
        default=topics.RETRAIN_DECISIONS, description="Kept champions."
    )
    requests: bool = Field(
        default=False, description="Also show retrain requests, failures and kept champions."
    )
    json_output: bool = Field(
        default=False,
        description="Print each event as one JSON line (also --json).",
        json_schema_extra={"flags": ["--json"]},
    )
    from_beginning: bool = Field(
        default=True, description="Start at the beginning of the topics (else only new events)."
    )
    max_events: int | None = Field(
        default=None, ge=1, description="Stop after this many events (default: run until Ctrl-C)."
    )


def printable(line: str) -> str:
    """`line` with every hidden character written as an escape (``\\n``, ``\\x1b``,
    ``\\u200b``): C0 and C1 controls, zero-width and bidi marks, line separators
    (`kernel.logs.visible`), so a forged event's text reaches the operator's terminal as
    text.

    >>> printable("a\\nb\\x1b[2J")
    'a\\\\nb\\\\x1b[2J'
    >>> printable("acme\\u200b\\u061c") == "acme\\\\u200b\\\\u061c"
    True
    """
    return visible(line)


def _f(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def describe(event: BaseModel) -> str:
    """The one-line form of a model or request event."""
    if isinstance(event, ModelPublished):
        d = event.decision
        champion = "no champion" if d.champion_score is None else f"champion {d.champion_score:.4f}"
        return (
            f"MODEL    {event.tenant:<20} v{event.model_version:<3} {event.reason:<17} "
            f"f1={_f(event.metrics.get('f1'))} log_loss={_f(event.metrics.get('log_loss'), '.4f')} "
            f"published (challenger {d.challenger_score:.4f} vs {champion}) "
            f"revision={event.revision[:12]}"
        )
    if isinstance(event, ChampionKept):
        d = event.decision
        head = (
            f"KEPT     {event.tenant:<20}      {event.reason:<17} "
            f"f1={_f(event.challenger_metrics.get('f1'))} challenger {d.challenger_score:.4f} "
        )
        if d.verdict == "baseline_better":
            keeps = "keeps no model" if event.champion_revision is None else "keeps its model"
            return f"{head}lost to the {d.baseline} baseline ({d.detail}); tenant {keeps}"
        return f"{head}did not beat champion {_f(d.champion_score, '.4f')}"
    if isinstance(event, RetrainFailed):
        return f"FAILED   {event.tenant or '?':<20}      {event.reason:<17} {event.detail[:80]}"
    if isinstance(event, RetrainRequested):
        features = ",".join(event.details.features) or "-"
        return (
            f"REQUEST  {event.tenant:<20}      {event.reason:<17} detector={event.detector} "
            f"features={features} events={event.n_events} event_id={event.event_id[:12]}"
        )
    return str(event)


def watch(
    settings: WatchSettings,
    stop: threading.Event | None = None,
    out: TextIO = sys.stdout,
    on_event: Callable[[BaseModel], None] | None = None,
) -> int:
    kinds: dict[str, type[BaseModel]] = {settings.models_topic: ModelPublished}
    if settings.requests:
        kinds |= {
            settings.retrain_topic: RetrainRequested,
            settings.failures_topic: RetrainFailed,
            settings.decisions_topic: ChampionKept,
        }
    stop = stop or threading.Event()
    consumer = make_reader(base_config(settings), "slaops-watch")
    start = OFFSET_BEGINNING if settings.from_beginning else OFFSET_END
    shown = 0
    assigned: set[str] = set()
    checked = 0.0

    def assign_new_topics() -> None:
        """Topics created after the watcher started (no model yet) are picked up later."""
        metadata = consumer.list_topics(timeout=30)
        new = [
            TopicPartition(topic, partition, start)
            for topic in kinds
            if topic not in assigned and topic in metadata.topics
            for partition in metadata.topics[topic].partitions
        ]
        if new:
            consumer.incremental_assign(new)
            assigned.update(tp.topic for tp in new)

    try:
        while not stop.is_set():
            if len(assigned) < len(kinds) and time.monotonic() - checked > 2.0:
                assign_new_topics()
                checked = time.monotonic()
            for message in consumer.consume(100, 0.2):
                if not is_record(message):
                    continue
                value = message.value() or b""
                try:
                    if len(value) > MAX_REQUEST_BYTES:  # no event the services write is larger
                        raise ValueError("oversize record")
                    event = kinds[message.topic() or ""].model_validate_json(value)
                except (ValidationError, KeyError, ValueError):
                    log.warning("unreadable record on %s", message.topic())
                    continue
                if settings.json_output:
                    line = json_visible(event.model_dump_json())
                else:
                    line = printable(describe(event))
                print(line, file=out, flush=True)
                if on_event is not None:
                    on_event(event)
                shown += 1
                if settings.max_events is not None and shown >= settings.max_events:
                    return 0
    finally:
        consumer.close()
    return 0


def run_watch(settings: WatchSettings) -> int:
    settings.require_bootstrap()
    try:
        return watch(settings)
    except KeyboardInterrupt:
        return 0
