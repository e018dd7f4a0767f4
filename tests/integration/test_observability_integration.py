"""The metrics endpoints of `slaops consume` and `slaops retrain`, scraped during real runs.

Each service runs the way `slaops` runs it (`slaops.runner`), against the session's
broker, with its metrics port on loopback. The exposition is parsed with
prometheus_client's own parser, and every counter is compared with what the run did,
read back from the topics it wrote.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from consumer.main import topic_specs as consumer_topics
from consumer.settings import ConsumerSettings
from kernel.kafka import TopicSpec, ensure_topics
from retrainer.dataset import build_pairs
from retrainer.forecasters import CandidateRows, blocked_folds
from retrainer.main import topic_specs as retrainer_topics
from retrainer.settings import RetrainerSettings
from schemas import DeadLetter, RetrainFailed, RetrainRequested
from slaops.runner import run_consumer, run_retrainer
from testkit.consumer_runs import BAD_RECORDS, telemetry
from testkit.kafka_helpers import message_headers, produce_all, read_topic, wait_for
from testkit.ports import free_port
from testkit.retrain_data import tenant_rows
from testkit.retrainer_runs import KEY, request, shared_partition_telemetry
from testkit.scrape import get, samples, value

pytestmark = pytest.mark.integration
PARTITIONS = 2


@contextmanager
def serving(run: Callable[..., int], settings: Any) -> Iterator[str]:
    """Run a service as `slaops` does, in a thread; yields its metrics base URL."""
    stop = threading.Event()
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            run(settings, stop)
        except BaseException as exc:  # reported by the test, not lost in the thread
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{settings.metrics_port}"
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the service did not stop"
        assert not outcome, outcome


def scrape(base: str) -> dict[Any, float]:
    status, body = get(base + "/metrics")
    assert status == 200
    return samples(body)


def reachable(base: str) -> int | None:
    """The /readyz status, or None while nothing listens yet."""
    try:
        return get(base + "/readyz")[0]
    except OSError:
        return None


def test_consumer_metrics_equal_what_the_run_did(
    consumer_settings: Callable[..., ConsumerSettings],
) -> None:
    settings = consumer_settings(
        telemetry_partitions=PARTITIONS,
        session_timeout_ms=6_000,
        poll_timeout_s=0.1,
        batch_size=700,
        window_max_events=1_000,
        cold_start=False,
        follow_models=False,
        metrics_port=free_port(),
        lag_interval_s=0.5,
        liveness_timeout_s=60,
    )
    ensure_topics(settings, consumer_topics(settings))
    bootstrap = settings.bootstrap_servers or ""
    good = telemetry(2_000)
    stream: list[tuple[bytes | None, bytes | None]] = list(good)
    for i, (key, raw, _reason) in enumerate(BAD_RECORDS):
        stream.insert(500 + i * 700, (key, raw))
    total = produce_all(bootstrap, settings.telemetry_topic, stream)
    seen_ready: list[int | None] = []
    with serving(run_consumer, settings) as base:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen_ready or seen_ready[-1] != 200):
            seen_ready.append(reachable(base))
            time.sleep(0.05)
        wait_for(
            lambda: (
                reachable(base) is not None
                and value(scrape(base), "slaops_consumer_records_consumed_total") >= total
            ),
            timeout_s=90,
            what="the whole stream consumed",
        )

        def lag_is_zero() -> bool:
            found = scrape(base)
            lags = [value(found, "slaops_consumer_lag_records", partition=str(p)) for p in (0, 1)]
            present = all(
                ("slaops_consumer_lag_records", (("partition", str(p)),)) in found for p in (0, 1)
            )
            return present and lags == [0, 0]

        wait_for(lag_is_zero, timeout_s=30, what="lag 0 on every partition")
        found = scrape(base)
        assert get(base + "/healthz")[0] == 200
    # Readiness flipped: not ready before the group was joined, then ready.
    answers = [s for s in seen_ready if s is not None]
    assert answers[0] == 503 and answers[-1] == 200, seen_ready

    assert value(found, "slaops_consumer_records_consumed_total") == total
    assert value(found, "slaops_consumer_records_valid_total") == len(good)
    letters = read_topic(bootstrap, settings.dlq_topic, expect=len(BAD_RECORDS), partitions=2)
    sent = [reason.value for _k, _v, reason in BAD_RECORDS]
    written = [DeadLetter.from_headers(message_headers(m)).reason.value for m in letters]
    assert sorted(written) == sorted(sent)
    for reason in set(sent):
        counted = value(found, "slaops_consumer_dead_letters_total", reason=reason)
        assert counted == sent.count(reason), reason
    dead_total = sum(v for (n, _l), v in found.items() if n == "slaops_consumer_dead_letters_total")
    assert dead_total == len(BAD_RECORDS)

    requests = [
        RetrainRequested.model_validate_json(m.value() or b"")
        for m in read_topic(bootstrap, settings.retrain_topic, expect=1, partitions=2)
    ]
    assert requests, "the drifting tenant asks for a retrain"
    counted_requests = {
        dict(labels)["reason"] + "/" + dict(labels)["detector"]: v
        for (name, labels), v in found.items()
        if name == "slaops_consumer_retrain_requests_total"
    }
    expected = [f"{r.reason}/{r.detector}" for r in requests]
    assert counted_requests == {key: expected.count(key) for key in set(expected)}
    alarms = sum(v for (n, _l), v in found.items() if n == "slaops_consumer_drift_alarms_total")
    assert alarms >= len(requests)
    assert value(found, "slaops_consumer_tenants") == 3
    assert value(found, "slaops_consumer_batch_duration_seconds_count") >= total / 700
    assert value(found, "slaops_consumer_poll_to_commit_seconds_count") >= 1
    assert value(found, "slaops_consumer_ready") == 1


def test_retrainer_metrics_equal_what_the_run_did(
    retrainer_settings: Callable[..., RetrainerSettings], tmp_path: Path
) -> None:
    settings = retrainer_settings(
        session_timeout_ms=6_000,
        max_poll_interval_ms=7_000,
        store=f"file://{tmp_path / 'models'}",
        tenant_key=SecretStr(KEY),
        grid={"lr": [0.01], "module__hidden_layers": [1], "module__width": [16]},
        n_jobs=1,
        n_splits=3,
        max_epochs=10,
        min_rows=100,
        # Little evidence suffices, so the network is searched and its fits are counted.
        min_positives=1,
        min_fresh_onsets=1,
        metrics_port=free_port(),
    )
    ensure_topics(settings, [*retrainer_topics(settings), TopicSpec(settings.telemetry_topic, 1)])
    bootstrap = settings.bootstrap_servers or ""
    total = shared_partition_telemetry(settings)
    foreign = json.loads(request(settings, 10, 9))
    foreign["tenant"], foreign["source"][0]["topic"] = "other", "not-telemetry"
    sent = [
        (b"acme", request(settings, total - 4, total - 5)),
        (b"acme", request(settings, total - 2, total - 3)),
        (b"acme", request(settings, total, total - 1)),
        (b"acme", b"{not a request"),
        (b"other", json.dumps(foreign).encode()),
    ]
    produce_all(bootstrap, settings.retrain_topic, sent)
    with serving(run_retrainer, settings) as base:

        def answered() -> bool:
            if reachable(base) is None:
                return False
            found = scrape(base)
            counted = sum(
                v for (n, _l), v in found.items() if n == "slaops_retrainer_requests_total"
            )
            return counted >= len(sent)

        wait_for(answered, timeout_s=180, what="every request answered")
        found = scrape(base)
        assert get(base + "/readyz")[0] == 200 and get(base + "/healthz")[0] == 200

    models = read_topic(bootstrap, settings.models_topic, expect=1, partitions=6, timeout_s=2)
    kept = read_topic(bootstrap, settings.decisions_topic, expect=1, partitions=6, timeout_s=2)
    failures = [
        RetrainFailed.model_validate_json(m.value() or b"")
        for m in read_topic(bootstrap, settings.failures_topic, expect=2, partitions=6)
    ]
    assert len(models) + len(kept) == 1  # acme's three requests: one run
    outcomes = {
        dict(labels)["outcome"]: v
        for (name, labels), v in found.items()
        if name == "slaops_retrainer_requests_total"
    }
    assert outcomes == {
        "published": len(models),
        "champion_kept": len(kept),
        "failed": len(failures),
        "deduplicated": 0,
        "coalesced": 2,
    }
    assert value(found, "slaops_retrainer_requests_received_total") == len(sent)
    reasons = [f.reason for f in failures]
    assert reasons == ["invalid_request", "invalid_request"]
    assert value(found, "slaops_retrainer_requests_failed_total", reason="invalid_request") == 2
    assert value(found, "slaops_retrainer_search_duration_seconds_count") == 1
    # 1 candidate x the folds whose training part holds enough quiet rows and breaches.
    acme = tenant_rows(600, seed=1)
    data = build_pairs(acme.ts, acme.features, acme.labels, horizon=settings.horizon, min_rows=100)
    folds = blocked_folds(CandidateRows.of(data), 3, data.spec.history + settings.horizon)
    assert value(found, "slaops_retrainer_fits_total") == len(folds.splits) >= 2
    assert value(found, "slaops_retrainer_replay_duration_seconds_count") == 2
    assert value(found, "slaops_retrainer_publish_duration_seconds_count") == len(models)
    announced = value(found, "slaops_retrainer_request_to_announcement_seconds_count")
    assert announced == len(models)
