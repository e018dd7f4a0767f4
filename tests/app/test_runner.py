"""The one start-up of every service (`slaops.runner`), without a broker.

Bad settings fail before any connection; the configs and the store are built once and
handed to the service; the topics a service creates come from the one table, so the
consumer and the retrainer agree on every topic both create.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from consumer import main as consumer_main
from consumer.settings import ConsumerSettings
from kernel.errors import ConfigError
from kernel.kafka import TopicSpec
from kernel.settings import StoreSettings
from retrainer import main as retrainer_main
from retrainer.settings import RetrainerSettings
from slaops.runner import run_consumer, run_retrainer

NOWHERE = "127.0.0.1:1"  # nothing listens: any connection attempt would fail or hang


def test_bad_detector_params_fail_as_a_config_error_before_any_connection() -> None:
    settings = ConsumerSettings(bootstrap_servers=NOWHERE, detector_params={"no_such_param": 1})
    with pytest.raises(ConfigError, match="no_such_param"):
        run_consumer(settings, threading.Event())


def test_a_missing_tenant_key_fails_before_any_connection(tmp_path: Path) -> None:
    settings = RetrainerSettings(bootstrap_servers=NOWHERE, store=f"file://{tmp_path}")
    with pytest.raises(ConfigError, match="no tenant key"):
        run_retrainer(settings, threading.Event())


@pytest.mark.parametrize("service", ["consume", "retrain"])
def test_start_up_opens_the_store_once_and_hands_it_to_the_service(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []
    real_open = StoreSettings.open_model_store

    def counting_open(self: StoreSettings, **kwargs: Any) -> Any:
        store = real_open(self, **kwargs)
        opened.append(store)
        return store

    monkeypatch.setattr(StoreSettings, "open_model_store", counting_open)
    created: list[TopicSpec] = []
    monkeypatch.setattr("slaops.runner.ensure_topics", lambda _s, specs: created.extend(specs))
    monkeypatch.setattr("slaops.runner.wait_for_broker", lambda s: s.bootstrap_servers)
    handed: list[Any] = []
    main: Any = consumer_main if service == "consume" else retrainer_main
    real_build = main.build_service

    class Stopped:
        def run(self, stop: threading.Event) -> str:
            return "nothing to do"

    def build(settings: Any, parts: Any) -> Stopped:
        handed.append(parts)
        real_build(settings, parts)  # the real clients are built (no connection yet)
        return Stopped()

    monkeypatch.setattr(main, "build_service", build)
    common: dict[str, Any] = {
        "bootstrap_servers": NOWHERE,
        "store": f"file://{tmp_path}",
        "tenant_key": "k7Q2x9Lm" * 4,
    }
    if service == "consume":
        assert run_consumer(ConsumerSettings(**common), threading.Event()) == 0
    else:
        assert run_retrainer(RetrainerSettings(**common), threading.Event()) == 0
    assert len(opened) == 1, "the store was opened more than once"
    (parts,) = handed
    store = parts.store if service == "retrain" else parts.models.store
    assert store is opened[0]
    assert created, "no topics were created"


def test_the_consumer_and_the_retrainer_create_shared_topics_alike() -> None:
    consumer = {s.name: s for s in consumer_main.topic_specs(ConsumerSettings())}
    retrainer = {s.name: s for s in retrainer_main.topic_specs(RetrainerSettings())}
    shared = consumer.keys() & retrainer.keys()
    assert shared, "the two services create no topic in common"
    for name in shared:
        assert consumer[name] == retrainer[name], name
    partitions = ConsumerSettings().telemetry_partitions
    checkpoints = consumer[ConsumerSettings().checkpoint_topic]
    assert checkpoints.partitions == 1 and checkpoints.config == {"cleanup.policy": "compact"}
    assert {s.partitions for n, s in consumer.items() if s is not checkpoints} == {partitions}
    assert {s.partitions for s in retrainer.values()} == {partitions}
