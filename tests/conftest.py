from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.broker import kafka_bootstrap


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    with kafka_bootstrap() as servers:
        yield servers


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Topic and group names no other test shares."""

    def make(prefix: str) -> str:
        return f"{prefix}.{uuid.uuid4().hex[:10]}"

    return make
