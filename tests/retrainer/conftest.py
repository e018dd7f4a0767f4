"""Fixtures of the retrainer's tests: a store of each kind, and one small search's data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from kernel.store import StoreOptions, open_store
from retrainer.dataset import SupervisedSet, build_pairs
from retrainer.search import SearchConfig
from testkit.hub_server import running_hub_server
from testkit.request_handlers import StoreFixture
from testkit.retrain_data import TINY_GRID, synthetic


@pytest.fixture(params=["file", "hf"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFixture]:
    """`(uri, store)`: an empty file store, then the real Hub client on a loopback Hub."""
    if request.param == "file":
        uri = f"file://{tmp_path / 'models'}"
        yield uri, open_store(uri)
        return
    with running_hub_server() as hub:
        uri = "hf://slaops-test/models"
        yield (
            uri,
            open_store(
                uri, StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint, backoff_s=0.01)
            ),
        )


@pytest.fixture(scope="module")
def data() -> SupervisedSet:
    """Supervised pairs of the synthetic daily-cycle window (seed 1)."""
    return build_pairs(*synthetic(seed=1))


@pytest.fixture(scope="module")
def tiny_config() -> SearchConfig:
    """Two candidates, three folds, eight epochs: a search of a second or two."""
    return SearchConfig(grid=TINY_GRID, n_splits=3, n_jobs=1, max_epochs=8, batch_size=64)
