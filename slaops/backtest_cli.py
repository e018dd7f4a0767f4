"""`slaops backtest`: its own settings, the services' settings it takes, and the run.

It takes the settings of `slaops consume` and `slaops retrain` too (environment and
flags, as those commands do), but for those that mean nothing without a broker (the
broker, groups, polls, ports, retries' pauses, output topics): `COMPANIONS` names them.
A name both services have (the store, the tenant key, the telemetry topic) is one
flag that sets both; `--batch-size` is the retrainer's minibatch (the consumer's poll
size means nothing here: the core takes the input in `chunk_events` slices).
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, ClassVar, Final, Literal

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from consumer.settings import ConsumerSettings
from kernel.errors import ConfigError
from kernel.logs import LogFormat
from retrainer.settings import RetrainerSettings
from schemas import FEATURES
from slaops.backtest import (
    DEFAULT_CHUNK_EVENTS,
    Backtest,
    BacktestResult,
    BacktestSetup,
    offline_setup,
)
from slaops.backtest_records import read_telemetry
from slaops.backtest_table import as_json, render, score_backtest

#: Settings of both services that mean nothing without a broker and a running service.
_KAFKA_ONLY: Final = frozenset(
    {
        "bootstrap_servers",
        "connect_timeout_s",
        "kafka_properties",
        "embedded_broker",
        "session_timeout_ms",
        "group_id",
        "max_poll_interval_ms",
        "metrics_port",
        "metrics_host",
        "metrics_allowed_hosts",
        "liveness_timeout_s",
        "telemetry_partitions",
        "retrain_topic",
        "models_topic",
        "failures_topic",
        "decisions_topic",
    }
)
#: (settings class, the names of it the backtest does not take), flags in this order.
COMPANIONS: Final[tuple[tuple[type[BaseSettings], frozenset[str]], ...]] = (
    (
        ConsumerSettings,
        _KAFKA_ONLY
        | {
            "batch_size",
            "poll_timeout_s",
            "delivery_timeout_s",
            "lag_interval_s",
            "dlq_topic",
            "checkpoint_topic",
            "forecasts_topic",
            "follow_models",
            "publish_forecasts",
            "max_future_s",  # the clock is the newest event: nothing is in the future
        },
    ),
    (
        RetrainerSettings,
        _KAFKA_ONLY
        | {
            "replay_timeout_s",
            "retry_backoff_s",
            "retry_max_backoff_s",
        },
    ),
)


def _metric(name: str | None) -> str | None:
    if name is not None and name not in FEATURES:
        raise ValueError(f"not a telemetry metric; one of {', '.join(FEATURES)}")
    return name


class BacktestSettings(BaseSettings):
    """The backtest's own settings (env `SLAOPS_*`, each a flag)."""

    model_config = SettingsConfigDict(
        env_prefix="SLAOPS_", frozen=True, extra="forbid", populate_by_name=True
    )
    #: Other settings classes this command takes (see the module doc).
    companions: ClassVar[tuple[tuple[type[BaseSettings], frozenset[str]], ...]] = COMPANIONS

    input: Path = Field(description="Telemetry in: TelemetryEvent JSON lines, in time order.")
    output: Path = Field(description="Forecasts out: the sla.forecasts JSON lines, in order.")
    warnings_output: Path | None = Field(
        default=None, description="Warning edges out (sla.warnings JSON lines)."
    )
    slo_metric: Annotated[str | None, AfterValidator(_metric)] = Field(
        default=None,
        description="The metric that defines a breach (e.g. latency_p99_ms), given to the "
        "SRE rules with its SLO at the training part's 90th percentile; none: "
        "persistence only.",
    )
    json_output: bool = Field(
        default=False,
        description="Print the table's figures as one JSON object (also --json).",
        json_schema_extra={"flags": ["--json"]},
    )
    chunk_events: int = Field(
        default=DEFAULT_CHUNK_EVENTS,
        ge=1,
        le=1_000_000,
        description="Events per core call; a request mid-chunk re-runs it up to the "
        "request (the output does not depend on it).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="ERROR", description="Log level (the table and the progress bar report)."
    )
    log_format: LogFormat = Field(default="text", description="Log lines as text or json.")


def run_backtest(
    settings: BacktestSettings, consumer: ConsumerSettings, retrainer: RetrainerSettings
) -> int:
    """Run it, write the outputs, print the table (or its JSON). 0 when done."""
    if not settings.input.is_file():
        raise ConfigError(f"input (SLAOPS_INPUT or --input): no file {settings.input}")
    setup = BacktestSetup(consumer, retrainer, settings.chunk_events)
    with offline_setup(setup) as ready:
        result = _run(settings, ready)
    scores = score_backtest(
        result, settings.slo_metric, retrainer.warning_budget_per_day, retrainer.horizon
    )
    if settings.json_output:
        sys.stdout.write(json.dumps(as_json(scores, result)) + "\n")
    else:
        render(Console(), scores, result)
    return 0


def _run(settings: BacktestSettings, setup: BacktestSetup) -> BacktestResult:
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[retrains]} retrains"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=settings.json_output) as bar:
        reading = bar.add_task("reading", total=None, retrains=0)
        telemetry = read_telemetry(
            settings.input,
            setup.consumer.telemetry_topic,
            max_bytes=setup.consumer.max_message_bytes,
            progress=lambda done: bar.update(reading, completed=done),
        )
        bar.update(reading, total=len(telemetry), completed=len(telemetry))
        task = bar.add_task("replaying", total=len(telemetry), retrains=0)
        with ExitStack() as files:
            forecasts = files.enter_context(settings.output.open("wb"))
            path = settings.warnings_output
            warnings = None if path is None else files.enter_context(path.open("wb"))
            engine = Backtest(setup, telemetry, forecasts, warnings)
            return engine.run(
                lambda done, retrains: bar.update(task, completed=done, retrains=retrains)
            )
