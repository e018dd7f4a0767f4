"""Groups under churn: 3 `slaops consume` members over 6 partitions and 2 `slaops
retrain` members, on a shared file store and then on the loopback Hub. One consumer is
SIGKILLed mid-stream and a new one joins later; one retrainer is SIGKILLed mid-search.

The oracle is one uninterrupted pass of the consumer's core over the records as the
broker stored them: the dead letters and the requests (by `event_id`) of the churned
group must be exactly its. The consumers do not follow models, so their requests do
not depend on when answers arrive (a request stays in flight until answered; none is
answered to them). Every request must be answered once by the retrainers and leave at
most one model version in the store, exactly one when it was published.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from consumer.core import IngestCore
from consumer.main import core_config
from consumer.main import topic_specs as consumer_topics
from consumer.settings import ConsumerSettings
from kernel.kafka import ensure_topics
from kernel.store import StoreOptions, open_store
from kernel.tenant_hash import request_ref, tenant_hash
from retrainer.main import topic_specs as retrainer_topics
from retrainer.settings import RetrainerSettings
from schemas import ChampionKept, DeadLetter, ModelPublished, RetrainFailed, RetrainRequested
from simulator.model import DriftPlan, TelemetrySimulator
from testkit.hub_server import HubServer
from testkit.kafka_helpers import (
    answers_by_request,
    committed,
    end_offsets,
    message_headers,
    produce_all,
    read_all,
    read_to_end,
    read_topic,
    wait_for,
)
from testkit.processes import ServiceProcess, env_for, services

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

KEY = "churn-tenant-key-0123456789abcdef0123"
REPO = "acme-org/churn-models"
PARTITIONS = 6
TENANTS = 8
EVENTS_PER_TENANT = 900
SEED = 20261129
#: Four candidates: a search of a second or two, long enough to be killed in.
GRID = {"lr": [0.01, 0.003], "module__hidden_layers": [1], "module__width": [16, 32]}
SEARCH_STARTED = r"search strategy=grid"


def answers_to_end(bootstrap: str, topics: dict[str, str]) -> dict[str, list[str]]:
    """`answers_by_request`, from the answer topics read to their ends (`read_to_end`)."""
    out: dict[str, list[str]] = {}
    for topic, kind in (
        ("models_topic", ModelPublished),
        ("decisions_topic", ChampionKept),
        ("failures_topic", RetrainFailed),
    ):
        for m in read_to_end(bootstrap, topics[topic], PARTITIONS):
            event = kind.model_validate_json(m.value() or b"")
            if event.request_event_id is not None:
                out.setdefault(event.request_event_id, []).append(kind.__name__)
    return out


# The Hub store only: churn is the groups' story, and the file store's publish path is
# the same handler (tests/retrainer cover both stores); one run is two minutes here.
@pytest.mark.parametrize("store_kind", ["hub"])
def test_groups_under_churn_answer_every_request_once_and_match_one_member(
    store_kind: str,
    bootstrap: str,
    unique_name: Callable[[str], str],
    hub: HubServer,
    tmp_path: Path,
) -> None:
    names = {
        "telemetry_topic": unique_name("telemetry"),
        "dlq_topic": unique_name("dlq"),
        "retrain_topic": unique_name("retrain"),
        "checkpoint_topic": unique_name("checkpoints"),
        "models_topic": unique_name("models"),
        "failures_topic": unique_name("failures"),
        "decisions_topic": unique_name("decisions"),
        "forecasts_topic": unique_name("forecasts"),
    }
    consumer_group, retrainer_group = unique_name("consumers"), unique_name("retrainers")
    store_env: dict[str, object] = {"store": f"file://{tmp_path / 'models'}"}
    if store_kind == "hub":
        store_env = {"store": f"hf://{REPO}", "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    consumer_tuning: dict[str, object] = {
        "group_id": consumer_group,
        "telemetry_partitions": PARTITIONS,
        "session_timeout_ms": 6_000,
        "poll_timeout_s": 0.05,
        "batch_size": 40,  # many small commits: the kill lands between and inside them
        "follow_models": False,  # requests must not depend on when answers arrive
        "window_max_events": 1_000,  # the whole stream: a takeover replays all it saw
        "window_span_s": 60 * 86_400.0,
        "catch_up_lag_s": 0.0,  # simulated history: its old stamps are no backlog
        # 72 events of history and 6 ahead per row: 483 rows, enough for two time folds
        # (each fold's training part needs 60 quiet rows), within the first two thirds.
        "cold_start_min_events": 560,
        "request_timeout_s": 1e9,
        "metrics_port": 0,  # four members on one host: no shared metrics port
    }
    retrainer_tuning: dict[str, object] = {
        "group_id": retrainer_group,
        "session_timeout_ms": 6_000,
        "max_poll_interval_ms": 10_000,
        "grid": json.dumps(GRID),
        "n_jobs": 1,
        "n_splits": 4,  # two or more folds keep 60 quiet training rows: the network is searched
        "max_epochs": 30,
        "min_rows": 100,
        # Little evidence suffices, so every request searches (a kill can land mid-search).
        "min_positives": 1,
        "min_fresh_onsets": 1,
        "metrics_port": 0,
    }
    consumer_settings = ConsumerSettings.model_validate(
        {"bootstrap_servers": bootstrap, **names, **consumer_tuning}
    )
    ensure_topics(consumer_settings, consumer_topics(consumer_settings))
    retrainer_settings = RetrainerSettings.model_validate(
        {
            "bootstrap_servers": bootstrap,
            **{k: v for k, v in names.items() if k in RetrainerSettings.model_fields},
        }
    )
    ensure_topics(retrainer_settings, retrainer_topics(retrainer_settings))

    simulator = TelemetrySimulator(
        TENANTS,
        SEED,
        interval_s=240.0,  # under two days: no seasonal lag, 72 events of history
        drifts=[DriftPlan(2, 620, "data", 2.0), DriftPlan(5, 660, "concept", 2.0)],
        malformed_rate=0.02,
    )
    stream = list(simulator.events(EVENTS_PER_TENANT))
    records = [(k, v) for k, v, _m in stream]
    malformed = sum(m.malformed is not None for _k, _v, m in stream)
    assert malformed > 20

    base = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **names, "tenant_key": KEY, **store_env}
    consumer_env = env_for({**base, **consumer_tuning})
    retrainer_env = env_for({**base, **retrainer_tuning})
    consumers = [ServiceProcess("consume", consumer_env, tmp_path / f"c{i}") for i in range(4)]
    retrainers = [ServiceProcess("retrain", retrainer_env, tmp_path / f"r{i}") for i in range(2)]
    for proc in [*consumers, *retrainers]:
        proc.log_dir.mkdir()

    def consumer_offsets() -> dict[int, int]:
        return committed(bootstrap, consumer_group, names["telemetry_topic"], PARTITIONS)

    third = len(records) // 3
    with services(*consumers, *retrainers):
        for proc in [*consumers[:3], *retrainers]:
            proc.start()
        for proc in consumers[:3]:
            proc.wait_log(r"assigned partition", timeout_s=90)
        produce_all(bootstrap, names["telemetry_topic"], records[:third])
        wait_for(
            lambda: sum(consumer_offsets().values()) >= third // 2,
            timeout_s=90,
            what="the group to commit part of the first third",
        )
        # Mid-stream: the victim holds partitions with work in flight.
        produce_all(bootstrap, names["telemetry_topic"], records[third : 2 * third])
        consumers[1].kill()

        # One retrainer dies mid-search; the other takes its partitions over.
        def searching() -> ServiceProcess | None:
            # A request ends whether or not it searched (a rule can win without one): a
            # search is in flight when the log's last start-or-end line is a search start.
            marks = f"({SEARCH_STARTED})|published version=|not published \\(|failed: "
            for proc in retrainers:
                matches = list(re.finditer(marks, proc.log()))
                if matches and matches[-1].group(1) is not None:
                    return proc
            return None

        wait_for(lambda: searching() is not None, timeout_s=120, what="a search in flight")
        killed_retrainer = searching()
        assert killed_retrainer is not None
        killed_retrainer.kill()

        produce_all(bootstrap, names["telemetry_topic"], records[2 * third :])
        time.sleep(1.0)  # a later member joins while the rest is being consumed
        consumers[3].start()
        consumers[3].wait_log(r"assigned partition", timeout_s=90)

        stored = read_topic(
            bootstrap, names["telemetry_topic"], expect=len(records), partitions=PARTITIONS
        )
        assert len(stored) == len(records)
        ends = end_offsets(stored, PARTITIONS)
        wait_for(
            lambda: consumer_offsets() == ends,
            timeout_s=120,
            what="the group to commit every event",
        )

        oracle = IngestCore(core_config(consumer_settings))
        expected = oracle.process(sorted(stored, key=lambda m: (m.partition(), m.offset())))
        expected_requests = {r.event_id: r for r in expected.requests}
        assert expected.invalid == malformed
        assert len({r.tenant for r in expected_requests.values()}) == TENANTS

        def answers() -> dict[str, list[str]]:
            return answers_by_request(bootstrap, names, PARTITIONS)

        wait_for(
            lambda: set(expected_requests) <= set(answers()),
            timeout_s=180,
            what="every request to be answered",
        )
        # Every request is on the topic (each was acknowledged before the consumers'
        # commits), but one `read_all` may see only part of it, so its ends are read again
        # each time, keeping the furthest seen (an end mark, as `read_to_end` appends,
        # would be one more request to the retrainers). Checked exactly once they stop.
        retrain_ends = dict.fromkeys(range(PARTITIONS), 0)

        def retrainers_done() -> bool:
            read = end_offsets(read_all(bootstrap, names["retrain_topic"], PARTITIONS), PARTITIONS)
            retrain_ends.update({p: max(end, retrain_ends[p]) for p, end in read.items()})
            return (
                committed(bootstrap, retrainer_group, names["retrain_topic"], PARTITIONS)
                == retrain_ends
            )

        wait_for(retrainers_done, timeout_s=60, what="the retrainers to commit every request")
        for proc in [*consumers, *retrainers]:
            if proc.alive():
                assert proc.stop() == 0, proc.log()[-3000:]

    # The dead letters and the requests are exactly the single member's. Every service
    # has stopped: the topics are read to their ends, not for a second (`read_to_end`).
    letters = read_to_end(bootstrap, names["dlq_topic"], PARTITIONS)
    lettered = {
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(message_headers(m)) for m in letters)
    }
    assert lettered == {
        (d.source_partition, d.source_offset)
        for d in (DeadLetter.from_headers(x.headers) for x in expected.dead_letters)
    }
    request_messages = read_to_end(bootstrap, names["retrain_topic"], PARTITIONS)
    requests = [RetrainRequested.model_validate_json(m.value() or b"") for m in request_messages]
    assert {r.event_id for r in requests} == set(expected_requests)
    assert committed(bootstrap, retrainer_group, names["retrain_topic"], PARTITIONS) == end_offsets(
        request_messages, PARTITIONS
    )

    # Each request answered, one version in the store for each one published.
    answered = answers_to_end(bootstrap, names)
    assert set(answered) == set(expected_requests)
    published = Counter(
        event_id for event_id, kinds in answered.items() if "ModelPublished" in kinds
    )
    assert all("RetrainFailed" not in kinds for kinds in answered.values()), answered
    store = open_store(
        str(store_env["store"]),
        StoreOptions(
            token=SecretStr(hub.token) if store_kind == "hub" else None,
            endpoint=hub.endpoint if store_kind == "hub" else None,
        ),
    )
    for event_id, request in expected_requests.items():
        ref = request_ref(event_id, SecretStr(KEY))
        messages = store.revision_messages(tenant_hash(request.tenant, SecretStr(KEY)))
        versions = [m for m in messages if ref in m]
        assert len(versions) == (1 if event_id in published else 0), (event_id, messages)
    assert published, "no request was published at all"
    print(
        f"churn[{store_kind}]: {len(records)} events, {len(letters)} dead letters "
        f"({len(expected.dead_letters)} expected), {len(requests)} request messages "
        f"({len(expected_requests)} distinct), {len(published)} published, "
        f"{sum('ChampionKept' in k for k in answered.values())} kept"
    )
