"""`slaops watch` as a user runs it: one line per model or request event, or JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kernel.store import open_store
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from schemas import ChampionKept, ModelPublished, RetrainRequested
from slaops.watch import WatchSettings, describe
from testkit.factories import answer_names
from testkit.kafka_helpers import produce_all
from testkit.live_models import KEY, SEARCH
from testkit.retrain_data import request_for, tenant_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> WatchSettings:
    """A request, an unreadable record and the model that answered the request."""
    settings = WatchSettings(
        bootstrap_servers=bootstrap,
        **answer_names(unique_name),
    )
    uri = f"file://{tmp_path / 'models'}"
    handler = RequestHandler(
        store=open_store(uri),
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SEARCH, min_rows=100),
        replay=lambda request: tenant_rows(1_000, seed=3),
        topics=OutcomeTopics(
            models=settings.models_topic,
            failures=settings.failures_topic,
            decisions=settings.decisions_topic,
        ),
    )
    request = request_for("acme")
    model = handler.handle(request).events[0][2]
    assert isinstance(model, ModelPublished)
    for topic in (settings.failures_topic, settings.decisions_topic):
        produce_all(bootstrap, topic, [])
    produce_all(bootstrap, settings.retrain_topic, [(b"acme", request.model_dump_json().encode())])
    produce_all(
        bootstrap,
        settings.models_topic,
        [(b"acme", b"{not an event"), (b"acme", model.model_dump_json().encode())],
    )
    return settings


def run_watch(settings: WatchSettings, *flags: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "slaops.cli", "watch", *flags]
    for name in ("models_topic", "retrain_topic", "failures_topic", "decisions_topic"):
        args += ["--" + name.replace("_", "-"), getattr(settings, name)]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers or ""}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def test_watch_prints_one_line_per_event_and_skips_unreadable_records(
    topics: WatchSettings,
) -> None:
    result = run_watch(topics, "--requests", "--max-events", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["MODEL", "REQUEST"]
    model = next(line for line in lines if line.startswith("MODEL"))
    assert "acme" in model and "v1" in model and "cold_start" in model
    assert "f1=" in model and "log_loss=" in model and "published (challenger" in model
    assert "unreadable record" in result.stderr


def test_watch_json_lines_are_the_events_themselves(topics: WatchSettings) -> None:
    result = run_watch(topics, "--requests", "--json", "--max-events", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted('"revision"' in line for line in lines) == [False, True]
    for line in lines:
        kind = ModelPublished if '"revision"' in line else RetrainRequested
        assert kind.model_validate_json(line).tenant == "acme"


def test_without_requests_only_models_are_shown(topics: WatchSettings) -> None:
    result = run_watch(topics, "--max-events", "1")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["MODEL"]


def test_topics_created_after_the_watcher_started_are_picked_up(
    bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = WatchSettings(
        bootstrap_servers=bootstrap,
        **answer_names(unique_name),
    )
    args = [sys.executable, "-m", "slaops.cli", "watch", "--requests", "--max-events", "1"]
    for name in ("models_topic", "retrain_topic", "failures_topic", "decisions_topic"):
        args += ["--" + name.replace("_", "-"), getattr(settings, name)]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    process = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(3)  # the watcher is up and has found none of its topics
        assert process.poll() is None
        request = request_for("late-tenant")
        produce_all(
            bootstrap,
            settings.retrain_topic,
            [(b"late-tenant", request.model_dump_json().encode())],
        )
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, err
    assert out.split()[:2] == ["REQUEST", "late-tenant"]


def _kept(verdict: str, baseline: str | None, champion: str | None) -> ChampionKept:
    return ChampionKept.model_validate_json(
        json.dumps(
            {
                "request_event_id": "a" * 32,
                "tenant": "acme",
                "reason": "cold_start",
                "decision": {
                    "published": False,
                    "rule": "holdout_log_loss",
                    "challenger_score": 0.5,
                    "champion_score": None if champion is None else 0.4,
                    "verdict": verdict,
                    "baseline": baseline,
                    "detail": "log_loss skill vs persistence is -0.0100 (must be > 0)",
                },
                "challenger_metrics": {"f1": 0.4},
                "champion_revision": champion,
                "decided_at": "2026-11-29T00:00:00+00:00",
            }
        )
    )


def test_a_baseline_win_says_which_baseline_and_what_the_tenant_keeps() -> None:
    line = describe(_kept("baseline_better", "persistence", None))
    assert line.startswith("KEPT     acme")
    assert "lost to the persistence baseline" in line and "skill vs persistence" in line
    assert line.endswith("tenant keeps no model")
    assert describe(_kept("baseline_better", "prior", "c" * 40)).endswith("keeps its model")
    assert "did not beat champion 0.4000" in describe(_kept("champion_better", None, "c" * 40))
