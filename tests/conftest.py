"""Fixtures every test module may use: the session's broker and settings factories on it.

The factories live in `tests/factories.py` (plain functions, shared with `bench/`);
the fixtures here only bind them to the broker and to the test's temporary directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.settings import ConsumerSettings
from kernel.store import ModelStore, open_store
from retrainer.settings import RetrainerSettings
from tests import factories
from tests.broker import kafka_bootstrap


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
