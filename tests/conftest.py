"""Fixtures every test folder may use: the session's broker, settings on it, stores, the Hub.

The factories live in `testkit/` (plain functions, shared with `bench/`); the fixtures
here only bind them to the broker and to the test's temporary directory. Under
pytest-xdist each worker is a session of its own, so each starts its own broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from consumer.settings import ConsumerSettings
from kernel.store import ModelStore, open_store
from retrainer.settings import RetrainerSettings
from testkit import factories
from testkit.broker import kafka_bootstrap
from testkit.hub_server import HubServer, running_hub_server
from testkit.live_models import Published, published_model


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: under `-n 4` on two cores, torch's default of a
    thread per core had the workers' threads contend for the same cores."""
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first: under pytest-xdist the longest start at once, on separate workers,
    instead of ending the run on one (the scheduler below keeps this order)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `-n N`: a unit-test module goes to one worker whole, so its module-scoped
    fixtures (a trained model, a fleet, a cluster) are built once, while each test of
    `tests/integration/` (which holds no module-scoped state) is scheduled on its own.

    Units go out in collection order, slow tests first. An explicit `--dist` other than
    the default `load` keeps pytest-xdist's own scheduler.
    """
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrIntegrationTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module.startswith("tests/integration/") else module

    config.option.loadscopereorder = False  # keep the collection's order
    return ModuleOrIntegrationTest(config, log)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    with kafka_bootstrap() as servers:
        yield servers


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Topic and group names no other test shares."""
    return factories.unique_name


@pytest.fixture
def consumer_settings(bootstrap: str) -> Callable[..., ConsumerSettings]:
    """`consumer_settings(names=None, **tuning)`: on the session broker, uniquely named."""

    def make(names: dict[str, str] | None = None, **tuning: Any) -> ConsumerSettings:
        return factories.consumer_settings(bootstrap, names, **tuning)

    return make


@pytest.fixture
def retrainer_settings(bootstrap: str) -> Callable[..., RetrainerSettings]:
    """`retrainer_settings(names=None, **tuning)`: on the session broker, uniquely named."""

    def make(names: dict[str, str] | None = None, **tuning: Any) -> RetrainerSettings:
        return factories.retrainer_settings(bootstrap, names, **tuning)

    return make


@pytest.fixture
def file_store(tmp_path: Path) -> tuple[str, ModelStore]:
    """`(uri, store)`: an empty file store in the test's temporary directory."""
    uri = f"file://{tmp_path / 'models'}"
    return uri, open_store(uri)


@pytest.fixture
def hub() -> Iterator[HubServer]:
    """A fresh in-memory Hub per test on loopback (`.endpoint`, `.token`, fault injection)."""
    with running_hub_server() as server:
        yield server


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """acme's model, trained and published once per module into a file store."""
    return published_model(tmp_path_factory.mktemp("store"))
