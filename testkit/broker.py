"""A real Kafka-protocol broker for tests: `KAFKA_BOOTSTRAP_SERVERS`, or tansu on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from kernel.embedded import embedded_broker, wait_until_ready


@contextmanager
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_until_ready(external)
        yield external
        return
    with embedded_broker() as (bootstrap, _pid):
        yield bootstrap
