"""Consumer throughput and memory, beside the floors they are measured against.

    python bench/bench_consumer.py            # full run (about 2 minutes)
    python bench/bench_consumer.py --quick    # smaller, for a smoke check
    python bench/bench_consumer.py --memory-only   # only the RSS children (about 1 minute)

Figures: the parse floor (`pydantic_core.from_json` on the same bytes), the consumer
core (validate + window + detect, raw bytes in, 1,000 tenants) on one core with its
ratio to the floor, the core again with a live model for every tenant (forecast and
score each event; then also publish every forecast) and its cost against ingest only,
raw confluent-kafka consume rate from the broker, end to end through the broker
(produce N, time until all are processed and committed; again with live models and
forecasts published), and RSS for 10,000 tenants with full default windows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace

import numpy as np
import pydantic_core
import torch
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from consumer.core import CoreConfig, IngestCore
from consumer.live_model import LiveModel
from consumer.main import build_service, topic_specs
from consumer.observability import ConsumerHooks, ConsumerMetrics
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from schemas import TelemetryEvent
from testkit.broker import kafka_bootstrap
from testkit.kafka_helpers import produce_all
from testkit.streams import telemetry_bytes
from testkit.tiny_models import tiny_live_model


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_floor(data: list[tuple[bytes, bytes]]) -> dict[str, float]:
    values = [v for _k, v in data]
    start = time.perf_counter()
    for value in values:
        pydantic_core.from_json(value)
    floor = rate(len(values), time.perf_counter() - start)
    start = time.perf_counter()
    for value in values:
        TelemetryEvent.model_validate_json(value)
    validate = rate(len(values), time.perf_counter() - start)
    return {"parse_floor_per_s": floor, "model_validate_json_per_s": validate}


def bench_core(data: list[tuple[bytes, bytes]], batch: int) -> dict[str, float]:
    # Real confluent-kafka messages, as the service hands them to the core.
    records = [
        Message(topic="sla.telemetry", partition=0, offset=i, key=k, value=v)
        for i, (k, v) in enumerate(data)
    ]
    core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry"))
    before = rss_mib()
    start = time.perf_counter()
    requests = 0
    for i in range(0, len(records), batch):
        requests += len(core.process(records[i : i + batch]).requests)
    seconds = time.perf_counter() - start
    return {
        "core_per_s": rate(len(records), seconds),
        "core_tenants": float(len(core)),
        "core_requests": float(requests),
        "core_peak_rss_mib": rss_mib(),
        "core_rss_growth_mib": rss_mib() - before,
    }


def live_models(data: list[tuple[bytes, bytes]]) -> list[LiveModel]:
    """One live model per tenant: 2 x 64 hidden, the largest of the default grid, in the
    shape the retrainer publishes (`served`: gated, with OOD scores, a "within" card of
    horizon 6 and an out-of-fold calibration table), so the consumer serves it on the
    production path.

    The weights are untrained: forecasting costs the same whatever they are.
    """
    tenants = sorted({k.decode() for k, _v in data})
    model = tiny_live_model("x", hidden_layers=2, width=64, served=True)
    return [replace(model, tenant=tenant) for tenant in tenants]


def bench_metrics_overhead(
    data: list[tuple[bytes, bytes]], batch: int, repeats: int = 3
) -> dict[str, float]:
    """The core with the consumer's metrics hook after every batch, and without.

    After one discarded warm-up run, runs alternate (off, on, on, off, ...) and the
    best of each counts, so that other load on the machine hits both alike; CPU time of
    this process, not wall time. With and without live models (the forecast counts
    are the core's either way); with live models on a fifth of the events (forecasting
    is slow).
    """
    records = [
        Message(topic="sla.telemetry", partition=0, offset=i, key=k, value=v)
        for i, (k, v) in enumerate(data)
    ]
    models = live_models(data)
    figures: dict[str, float] = {}
    for name, forecasting in (("ingest", False), ("forecast", True)):
        chunks = records[: len(records) // 5] if forecasting else records
        best = {False: float("inf"), True: float("inf")}
        hook_share = float("inf")
        order = [False] + [
            on for r in range(repeats) for on in ((False, True), (True, False))[r % 2]
        ]
        for run, metrics_on in enumerate(order):
            core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry"))
            if forecasting:
                for model in models:
                    core.apply_model(model)
            hooks = ConsumerMetrics(core=core) if metrics_on else ConsumerHooks()
            gc.collect()
            start = time.process_time()
            in_core = in_hooks = 0.0
            for i in range(0, len(chunks), batch):
                chunk = chunks[i : i + batch]
                began = time.perf_counter()
                result = core.process(chunk)
                processed = time.perf_counter()
                hooks.batch(chunk, result, processed - began)
                in_core += processed - began
                in_hooks += time.perf_counter() - processed
            if run > 0:  # the first run only warms up
                best[metrics_on] = min(best[metrics_on], time.process_time() - start)
                if metrics_on:
                    hook_share = min(hook_share, in_hooks / in_core)
        off, on = rate(len(chunks), best[False]), rate(len(chunks), best[True])
        # The hook's own time against the core's in the same runs: what the metrics cost,
        # free of the noise between two runs on a shared machine.
        figures[f"metrics_{name}_hook_share"] = hook_share
        figures[f"metrics_{name}_off_per_s"] = off
        figures[f"metrics_{name}_on_per_s"] = on
        figures[f"metrics_{name}_overhead"] = 1.0 - on / off
    return figures


def bench_forecasting(data: list[tuple[bytes, bytes]], batch: int) -> dict[str, float]:
    """The core with a live model for every tenant: forecasts scored, then also published."""
    records = [
        Message(topic="sla.telemetry", partition=0, offset=i, key=k, value=v)
        for i, (k, v) in enumerate(data)
    ]
    models = live_models(data)
    figures = {}
    runs = (("forecast", False, False), ("forecast_publish", True, False), ("replay", True, True))
    for name, publish, replay in runs:
        core = IngestCore(CoreConfig(telemetry_topic="sla.telemetry", publish_forecasts=publish))
        for model in models:
            core.apply_model(model)
        # A replay after a restart: every record was processed before, so the batch only
        # rebuilds windows, monitors and warnings, and publishes nothing.
        below = {0: len(records)} if replay else None
        forecasts = 0
        start = time.perf_counter()
        for i in range(0, len(records), batch):
            forecasts += len(core.process(records[i : i + batch], below).forecasts)
        per_s = rate(len(records), time.perf_counter() - start)
        if replay:
            figures["replay_live_per_s"] = per_s
            figures["replay_live_forecasts"] = float(forecasts)
        else:
            figures[f"core_{name}_per_s"] = per_s
            figures[f"core_{name}_forecasts"] = float(forecasts)
    return figures


def bench_raw_consume(bootstrap: str, data: list[tuple[bytes, bytes]]) -> float:
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    settings = ConsumerSettings(
        bootstrap_servers=bootstrap, telemetry_topic=topic, telemetry_partitions=1
    )
    ensure_topics(settings, topic_specs(settings)[:1])
    produce_all(bootstrap, topic, data)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-raw"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got, first = 0, None
    deadline = time.monotonic() + 120
    while got < len(data) and time.monotonic() < deadline:
        batch = consumer.consume(20_000, 0.5)
        if batch and first is None:
            first = time.perf_counter()
        got += sum(1 for m in batch if m.error() is None)
    seconds = time.perf_counter() - (first or time.perf_counter())
    consumer.close()
    return rate(got, seconds)


def bench_end_to_end(
    bootstrap: str,
    data: list[tuple[bytes, bytes]],
    batch: int,
    *,
    forecasting: bool = False,
    publish: bool = False,
) -> dict:
    """Produce `data`, then time the consumer from its first batch until the batch that
    completes `data` is processed, its records acknowledged and its offsets committed.

    With `forecasting`, every tenant has a live model; with `publish` too, every forecast
    is published to its topic (and acknowledged before the commit), as the demo runs it.
    """
    suffix = uuid.uuid4().hex[:8]
    settings = ConsumerSettings(
        bootstrap_servers=bootstrap,
        telemetry_topic=f"bench.telemetry.{suffix}",
        dlq_topic=f"bench.dlq.{suffix}",
        retrain_topic=f"bench.retrain.{suffix}",
        checkpoint_topic=f"bench.checkpoints.{suffix}",
        group_id=f"bench.{suffix}",
        telemetry_partitions=2,
        session_timeout_ms=6_000,
        batch_size=batch,
        poll_timeout_s=0.2,
        follow_models=False,
        publish_forecasts=publish,
        forecasts_topic=f"bench.forecasts.{suffix}",
    )
    ensure_topics(settings, topic_specs(settings))
    produce_start = time.perf_counter()
    produce_all(bootstrap, settings.telemetry_topic, data)
    produce_s = time.perf_counter() - produce_start
    service = build_service(settings)
    if forecasting:
        for model in live_models(data):
            service.core.apply_model(model)
    first: list[float] = []
    #: When the batch that took the count to every event returned: its records were
    #: produced and acknowledged, and its offsets committed, by then.
    last: list[float] = []
    original, counted = service.handle_batch, service.stats

    def timed(records):  # type: ignore[no-untyped-def]
        if not first:
            first.append(time.perf_counter())
        result = original(records)
        if not last and counted.valid >= len(data):
            last.append(time.perf_counter())
        return result

    service.handle_batch = timed  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not last and time.monotonic() < deadline:
        time.sleep(0.01)
    done = last[0] if last else time.perf_counter()
    stop.set()
    thread.join(timeout=60)
    stats = service.stats
    del service, thread, timed
    gc.collect()  # release the clients before the broker stops
    return {
        "produce_per_s": rate(len(data), produce_s),
        "e2e_per_s": rate(stats.valid, done - first[0]) if first else 0.0,
        "e2e_processed": stats.valid,
        "e2e_commits": stats.commits,
    }


MEMORY_CHILD = """
import resource, time
import numpy as np
from consumer.core import CoreConfig, IngestCore
from consumer.settings import ConsumerSettings
from consumer.main import core_config
settings = ConsumerSettings()
core = IngestCore(core_config(settings))
n, tenants = settings.window_max_events, {tenants}
rng = np.random.default_rng(0)
ts = np.arange(n, dtype=np.float64) * 30.0
labels = rng.random(n) < 0.1
offsets = np.arange(n, dtype=np.int64)
base = rng.normal(1.0, 0.1, size=(n, 6)).astype(np.float32)
start = time.perf_counter()
for i in range(tenants):
    state = core.registry.admit(f"tenant-{{i:05d}}", i % 6)
    features = base * np.float32(1 + (i % 7) / 10)
    state.drift.update(features, ts)
    state.window.extend(ts, features, labels, offsets)
if {live}:
    # A live model each (its own weights, as loaded from the store), then one batch
    # with an event of every tenant, so the stacked weights exist too.
    # Each module built as the store's loader builds it (`kernel.artifacts`): its
    # architecture, then its state_dict loaded (a deepcopy holds 2.4 KB more).
    from dataclasses import replace
    from confluent_kafka import Message
    from kernel.mlp import build_module
    from testkit.streams import telemetry_bytes
    from testkit.tiny_models import tiny_live_model
    model = tiny_live_model("x", hidden_layers=2, width=64, served=True)
    weights = {{name: t.clone() for name, t in model.module.state_dict().items()}}
    for i in range(tenants):
        tenant = f"tenant-{{i:05d}}"
        module = build_module(model.card.architecture)
        module.load_state_dict(weights, strict=True)
        core.apply_model(replace(model, tenant=tenant, module=module.eval()))
    data = telemetry_bytes(tenants, tenants)
    records = [
        Message(topic="sla.telemetry", partition=i % 6, offset=n + i, key=k, value=v)
        for i, (k, v) in enumerate(data)
    ]
    core.process(records)
held = sum(len(s.window) for s in core.tenants())
def peak_mib():
    # This process's own peak: `ru_maxrss` survives exec, so a child spawned by a large
    # parent would report the parent's RSS. VmHWM is the peak of this process's memory.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(peak_mib(), held, time.perf_counter() - start)
"""


def bench_memory(tenants: int) -> dict[str, float]:
    """Peak RSS of a fresh process holding `tenants` full default windows; then also a
    live model each (`memory_live_rss_mib`). The child's own peak (VmHWM): its
    `ru_maxrss` would be at least this process's RSS when it was spawned."""
    figures = {"memory_tenants": float(tenants)}
    for prefix, live in (("memory", False), ("memory_live", True)):
        code = MEMORY_CHILD.format(tenants=tenants, live=live)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
        )
        rss, held, seconds = out.stdout.split()
        figures[f"{prefix}_rss_mib"] = float(rss)
        figures[f"{prefix}_events_held"] = float(held)
        figures[f"{prefix}_fill_s"] = float(seconds)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--e2e-events", type=int, default=300_000)
    parser.add_argument("--memory-tenants", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--metrics-only",
        action="store_true",
        help="only the metrics on/off comparison of the core (no broker, no memory child)",
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the RSS of `--memory-tenants` tenants"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `slaops consume` runs: one core per consumer
    if args.quick:
        args.events, args.e2e_events, args.memory_tenants = 100_000, 50_000, 1_000
    if args.memory_only:
        memory = bench_memory(args.memory_tenants)
        print(
            json.dumps(memory)
            if args.json
            else "\n".join(f"  {k:<26} {v:,.1f}" for k, v in memory.items())
        )
        return
    batch = args.batch or ConsumerSettings.model_fields["batch_size"].default
    data = telemetry_bytes(args.events, args.tenants)
    figures: dict[str, float] = {"events": args.events, "tenants": args.tenants, "batch": batch}
    if args.metrics_only:
        figures |= bench_metrics_overhead(data, batch)
        print(json.dumps(figures) if args.json else metrics_lines(figures))
        return
    figures |= bench_floor(data)
    figures |= bench_core(data, batch)
    figures["core_to_floor_ratio"] = figures["core_per_s"] / figures["parse_floor_per_s"]
    figures |= bench_forecasting(data, batch)
    figures |= bench_metrics_overhead(data, batch)
    for name in ("forecast", "forecast_publish"):
        figures[f"{name}_cost"] = 1.0 - figures[f"core_{name}_per_s"] / figures["core_per_s"]
    with kafka_bootstrap() as bootstrap:
        figures["raw_consume_per_s"] = bench_raw_consume(bootstrap, data[: args.e2e_events])
        figures |= bench_end_to_end(bootstrap, data[: args.e2e_events], batch)
        for name, publish in (("forecast", False), ("forecast_publish", True)):
            run = bench_end_to_end(
                bootstrap, data[: args.e2e_events], batch, forecasting=True, publish=publish
            )
            figures[f"e2e_{name}_per_s"] = run["e2e_per_s"]
            figures[f"e2e_{name}_cost"] = 1.0 - run["e2e_per_s"] / figures["e2e_per_s"]
    figures |= bench_memory(args.memory_tenants)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"consumer benchmark ({os.cpu_count()} cores, {args.tenants} tenants, batch {batch})")
    rows = [
        ("parse floor (pydantic_core.from_json)", f"{figures['parse_floor_per_s']:,.0f} ev/s"),
        ("TelemetryEvent.model_validate_json", f"{figures['model_validate_json_per_s']:,.0f} ev/s"),
        ("core: validate + window + detect", f"{figures['core_per_s']:,.0f} ev/s"),
        ("core / parse floor", f"{figures['core_to_floor_ratio']:.3f}  (target >= 0.18)"),
        ("core peak RSS", f"{figures['core_peak_rss_mib']:,.0f} MiB"),
        (
            "core + live models (forecast, score)",
            f"{figures['core_forecast_per_s']:,.0f} ev/s  (x{1 - figures['forecast_cost']:.2f}"
            " of the core, target >= 0.7)",
        ),
        (
            "core + live models + publish forecasts",
            f"{figures['core_forecast_publish_per_s']:,.0f} ev/s  "
            f"(cost {figures['forecast_publish_cost']:.0%})",
        ),
        ("replay, live models (publishes nothing)", f"{figures['replay_live_per_s']:,.0f} ev/s"),
        ("raw confluent-kafka consume", f"{figures['raw_consume_per_s']:,.0f} ev/s"),
        (
            "end to end (processed + committed)",
            f"{figures['e2e_per_s']:,.0f} ev/s  (target >= 50,000)",
        ),
        (
            "end to end, live models",
            f"{figures['e2e_forecast_per_s']:,.0f} ev/s  (cost {figures['e2e_forecast_cost']:.0%},"
            " target <= 30%)",
        ),
        (
            "end to end, live models + forecasts published",
            f"{figures['e2e_forecast_publish_per_s']:,.0f} ev/s  "
            f"(cost {figures['e2e_forecast_publish_cost']:.0%}, target >= 50,000 and <= 25%)",
        ),
        (
            f"RSS, {args.memory_tenants:,} tenants with full windows",
            f"{figures['memory_rss_mib']:,.0f} MiB  (target < 1024)",
        ),
        (
            "RSS, the same + a live model each",
            f"{figures['memory_live_rss_mib']:,.0f} MiB  (target < 1536)",
        ),
    ]
    for name, value in rows:
        print(f"  {name:<44} {value}")
    print(metrics_lines(figures))
    assert np.isfinite(figures["core_per_s"])


def metrics_lines(figures: dict[str, float]) -> str:
    lines = ["metrics on/off (core, CPU time, best of 3 alternating runs)"]
    for name, label in (("ingest", "core"), ("forecast", "core + live models")):
        lines.append(
            f"  {label + ', metrics off / on':<44} "
            f"{figures[f'metrics_{name}_off_per_s']:,.0f} / "
            f"{figures[f'metrics_{name}_on_per_s']:,.0f} ev/s  "
            f"(difference {figures[f'metrics_{name}_overhead']:.1%}; the hook's own time "
            f"{figures[f'metrics_{name}_hook_share']:.2%} of the core's, target <= 5%)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
