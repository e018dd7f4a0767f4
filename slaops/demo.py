"""`slaops demo`: the whole loop on one machine, watched live, ending with a summary.

Embedded broker (unless `KAFKA_BOOTSTRAP_SERVERS` is set), a `file://` store and a
generated tenant key in the data directory; the simulator, the consumer, the retrainer
and a watcher run together in this process. The story: every tenant gets a cold-start
model; then one tenant's SLA rule changes (concept drift), its live model's errors
rise, the consumer asks for a retrain, and the new model is compared with the old one
on post-drift telemetry that was never sent.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import Field, model_validator
from rich.console import Console, ConsoleRenderable
from rich.live import Live

from consumer.main import build_service as build_consumer
from consumer.main import topic_specs as consumer_topics
from consumer.settings import ConsumerSettings
from kernel.embedded import embedded_broker
from kernel.kafka import DeliveryTracker, ensure_topics, make_producer
from kernel.settings import ServiceSettings
from kernel.store import ModelStore
from retrainer.main import build_service as build_retrainer
from retrainer.main import topic_specs as retrainer_topics
from retrainer.settings import RetrainerSettings
from simulator.model import DriftPlan, EventMeta, TelemetrySimulator
from slaops.demo_view import DemoState, dashboard, summary_rows, summary_table
from slaops.fleet_report import ReportSettings, generate, write_page
from slaops.watch import WatchSettings, watch

log = logging.getLogger(__name__)
QUICK_GRID = {"lr": [0.01, 0.001], "module__hidden_layers": [0, 1], "module__width": [32]}


class DemoSettings(ServiceSettings):
    quick: bool = Field(default=False, description="A short run (under 2 minutes here).")
    tenants: int = Field(default=3, ge=2, le=50, description="Simulated tenants.")
    drifted_tenant: int = Field(default=1, ge=0, description="Index of the tenant that drifts.")
    seed: int = Field(default=7, ge=0, description="Seed of the simulator and the searches.")
    data_dir: Path = Field(default=Path(".slaops"), description="Local state directory.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Give up after this long (default 240 s quick, 900 s full)."
    )
    plain: bool = Field(default=False, description="Progress lines instead of a live table.")
    summary_json: Path | None = Field(
        default=None, description="Also write the summary rows to this JSON file."
    )

    @model_validator(mode="after")
    def _drifted_tenant_exists(self) -> DemoSettings:
        if self.drifted_tenant >= self.tenants:
            raise ValueError(
                f"drifted_tenant is {self.drifted_tenant}, but the tenants are "
                f"0..{self.tenants - 1}: pick one of them or raise tenants"
            )
        return self


@dataclass(frozen=True)
class Plan:
    """Events per tenant in each phase, at one event per `INTERVAL_S` of event time.

    Ten-minute intervals put a whole day in 144 events, so a window of days sees every
    hour of the daily cycle: the cold-start models know what a normal day looks like,
    and a normal afternoon does not read as a degraded model.
    """

    warmup: int  # phase 1: the history every cold-start model is trained on
    live: int  # phase 2: normal traffic forecast by the live models
    drifted: int  # phase 2 goes on with the drift from here
    evaluation: int  # never sent: post-drift rows on which old and new model are compared

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        return cls(1_008, 300, 600, 400) if quick else cls(1_440, 432, 864, 600)

    @property
    def drift_at(self) -> int:
        return self.warmup + self.live

    @property
    def sent(self) -> int:
        return self.warmup + self.live + self.drifted


INTERVAL_S = 600.0


@contextmanager
def broker(settings: DemoSettings) -> Iterator[str]:
    if settings.bootstrap_servers is not None:
        yield settings.bootstrap_servers
        return
    with embedded_broker() as (bootstrap, _pid):
        yield bootstrap


class DemoRun:
    def __init__(self, settings: DemoSettings, bootstrap: str, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.plan = Plan.for_run(settings.quick)
        suffix = "" if settings.bootstrap_servers is None else f".demo-{uuid.uuid4().hex[:6]}"
        workdir = settings.data_dir / "demo"
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        common: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "session_timeout_ms": 6_000,
            "store": f"file://{(workdir / 'models').resolve()}",
            "local_mode": True,
            "data_dir": settings.data_dir,
            "log_level": settings.log_level,
        }
        topics = {
            name: value + suffix
            for name, value in ConsumerSettings()
            .model_dump(
                include={
                    "telemetry_topic",
                    "dlq_topic",
                    "retrain_topic",
                    "checkpoint_topic",
                    "models_topic",
                    "failures_topic",
                    "decisions_topic",
                    "forecasts_topic",
                    "warnings_topic",
                }
            )
            .items()
        }
        self.consumer_settings = ConsumerSettings(
            **common,
            **topics,
            group_id=f"slaops-demo-consumer{suffix}",
            telemetry_partitions=3,
            batch_size=5_000,
            poll_timeout_s=0.2,
            window_max_events=self.plan.warmup,
            window_span_s=30 * 86_400.0,
            # Some records are malformed on purpose: a little short of the whole warmup.
            cold_start_min_events=self.plan.warmup * 9 // 10,
            cooldown_s=6 * 3_600.0,
            # ... of event time alone: simulated days pass in minutes here.
            wall_cooldown=False,
            # Event time here runs ~10,000x faster than the searches: never give up on
            # an unanswered request by event time.
            request_timeout_s=365 * 86_400.0,
            # Half the drifted phase after the alarm: the retrain sees the new regime.
            performance_settle_events=self.plan.drifted // 2,
            # The live phase is short: the calibration watch measures its go-live offset
            # on the normal traffic before the drift (of `plan.live` events).
            performance_calibration_warmup=self.plan.live * 2 // 3,
            publish_forecasts=True,
            # The demo's drift is a concept drift: the live model's errors show it (the
            # data monitor, which compares like hours, waits a simulated day first).
            data_drift=False,
            # Simulated history, stamped from the simulator's start, not the wall clock:
            # no backlog to wait out.
            catch_up_lag_s=0.0,
        )
        self.retrainer_settings = RetrainerSettings(
            **common,
            **{k: v for k, v in topics.items() if k in RetrainerSettings.model_fields},
            group_id=f"slaops-demo-retrainer{suffix}",
            grid=QUICK_GRID if settings.quick else None,
            n_splits=3 if settings.quick else 5,
            # A window of days holds a handful of new incidents (about one a day): the
            # gate's evidence rule is scaled to it.
            min_fresh_onsets=3,
            seed=settings.seed,
            # The consumer's window span: the replay's time rule judges by the same one.
            window_span_s=self.consumer_settings.window_span_s,
        )
        self.watch_settings = WatchSettings(
            bootstrap_servers=bootstrap,
            models_topic=topics["models_topic"],
            retrain_topic=topics["retrain_topic"],
            failures_topic=topics["failures_topic"],
            decisions_topic=topics["decisions_topic"],
            requests=True,
        )
        self.simulator = TelemetrySimulator(
            n_tenants=settings.tenants,
            seed=settings.seed,
            interval_s=INTERVAL_S,
            drifts=[DriftPlan(settings.drifted_tenant, self.plan.drift_at, "concept")],
            malformed_rate=0.01,
        )
        self.state = DemoState(list(self.simulator.tenants))
        self.report_settings = ReportSettings(
            bootstrap_servers=bootstrap,
            store=common["store"],
            local_mode=True,
            data_dir=settings.data_dir,
            output=workdir / "report.html",
            **{k: v for k, v in topics.items() if k in ReportSettings.model_fields},
        )

    def _story(
        self, stop: threading.Event
    ) -> tuple[bool, list[tuple[bytes, bytes, EventMeta]], ModelStore]:
        """Run the services through both phases; whether the story completed."""
        ensure_topics(self.consumer_settings, consumer_topics(self.consumer_settings))
        ensure_topics(self.retrainer_settings, retrainer_topics(self.retrainer_settings))
        consumer = build_consumer(self.consumer_settings)
        retrainer = build_retrainer(self.retrainer_settings)
        services = threading.Event()
        threads = [
            threading.Thread(target=consumer.run, args=(services,), daemon=True),
            threading.Thread(target=retrainer.run, args=(services,), daemon=True),
            threading.Thread(
                target=watch,
                args=(self.watch_settings, services, io.StringIO(), self.state.on_event),
                daemon=True,
            ),
        ]
        for thread in threads:
            thread.start()
        timeout_s = self.settings.timeout_s or (240.0 if self.settings.quick else 900.0)
        deadline = time.monotonic() + timeout_s
        events = list(self.simulator.events(self.plan.sent + self.plan.evaluation))
        drifted = self.simulator.tenants[self.settings.drifted_tenant]

        def stats() -> dict[str, object]:
            s = consumer.stats
            return {
                "valid": s.valid,
                "dead-lettered": s.dead_letters,
                "requests": s.requests,
                "forecasts": s.forecasts,
                "models loaded": s.models,
                "retrains": retrainer.stats.published + retrainer.stats.kept,
            }

        plan = self.plan
        valid_sent = [0]

        def caught_up() -> bool:
            """Every valid event sent was windowed and every request seen was answered."""
            return consumer.stats.valid >= valid_sent[0] and self.state.all_answered()

        ok = True
        try:
            with self._display(lambda phase: dashboard(self.state, stats(), phase)) as show:
                valid_sent[0] += self._send([e for e in events if e[2].index < plan.warmup])
                ok = self._wait(
                    lambda: all(self.state.models_of(t) for t in self.simulator.tenants),
                    stop,
                    deadline,
                    show,
                    "phase 1: cold-start models",
                )
                if ok:
                    phase2 = [e for e in events if plan.warmup <= e[2].index < plan.sent]
                    valid_sent[0] += self._send(phase2)
                    ok = self._wait(
                        lambda: len(self.state.models_of(drifted)) >= 2 and caught_up(),
                        stop,
                        deadline,
                        show,
                        f"phase 2: live forecasts; concept drift on {drifted} "
                        f"from event {plan.drift_at}",
                    )
                show("done" if ok else "stopped")
        finally:
            services.set()
            for thread in threads:
                thread.join(timeout=60)
        evaluation = [e for e in events if e[2].index >= plan.sent]
        return ok, evaluation, retrainer.handler.store

    def execute(self, stop: threading.Event) -> int:
        ok, evaluation, store = self._story(stop)
        # The services' Kafka clients go with `_story`'s frame, while the broker still
        # runs: a client that outlives it prints reconnect errors under the summary.
        gc.collect()
        rows = summary_rows(self.state, self.simulator, evaluation, store)
        self.console.print(summary_table(rows))
        if self.settings.summary_json is not None:
            self.settings.summary_json.write_text(json.dumps(rows, indent=2) + "\n")
        self._report()
        if not ok:
            self.console.print("[red]the demo did not complete its story in time[/red]")
        return 0 if ok else 1

    def _report(self) -> None:
        """The story ends with the fleet report (`slaops report`), written and named."""
        try:
            path = write_page(self.report_settings, generate(self.report_settings))
        except Exception:  # a picture must not hide the summary above it
            log.exception("the fleet report could not be written")
            return
        self.console.print(f"fleet report: {path.resolve()}", soft_wrap=True)

    def _send(self, events: list[tuple[bytes, bytes, EventMeta]]) -> int:
        """Produce and wait for the broker's acks; the number of valid events sent."""
        tracker = DeliveryTracker(make_producer(self.consumer_settings))
        valid = 0
        for key, value, meta in events:
            tracker.produce(self.consumer_settings.telemetry_topic, key=key, value=value)
            if meta.malformed is None:
                self.state.ingested(meta.tenant)
                valid += 1
        tracker.wait()
        return valid

    def _wait(
        self,
        done: Callable[[], bool],
        stop: threading.Event,
        deadline: float,
        show: Callable[[str], None],
        phase: str,
    ) -> bool:
        while not done():
            if stop.is_set() or time.monotonic() > deadline:
                return False
            show(phase)
            time.sleep(0.25)
        return True

    @contextmanager
    def _display(
        self, render: Callable[[str], ConsoleRenderable]
    ) -> Iterator[Callable[[str], None]]:
        if self.settings.plain or not self.console.is_terminal:
            last = [0.0]

            def log_line(phase: str) -> None:
                if time.monotonic() - last[0] > 5:
                    last[0] = time.monotonic()
                    self.console.print(render(phase))

            yield log_line
            return
        with Live(render("starting"), console=self.console, refresh_per_second=4) as live:
            yield lambda phase: live.update(render(phase))


def run_demo(settings: DemoSettings, stop: threading.Event | None = None) -> int:
    if stop is None:
        stop = threading.Event()

        def interrupt(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the tables to 80
        console = Console(width=120)
    with broker(settings) as bootstrap:
        return DemoRun(settings, bootstrap, console).execute(stop)
