"""A real Kafka-protocol broker for tests: `KAFKA_BOOTSTRAP_SERVERS`, or tansu on loopback.

Each pytest-xdist worker starts its own tansu broker (the session fixture runs once
per worker) on a port of the worker's own block (`testkit.ports`), so workers never
share a broker, and a broker that cannot start on its port is tried on another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from kernel.embedded import embedded_broker, wait_until_ready
from kernel.errors import BrokerError
from testkit.ports import free_port

#: Ports a broker is tried on before the start-up error is raised.
ATTEMPTS = 3


@contextmanager
def dedicated_broker() -> Iterator[tuple[str, int]]:
    """`(bootstrap, pid)` of a tansu broker of the caller's own, stopped on the way out."""
    for attempt in range(1, ATTEMPTS + 1):
        stack = ExitStack()
        try:
            bootstrap, pid = stack.enter_context(embedded_broker(free_port()))
        except BrokerError:
            if attempt == ATTEMPTS:
                raise
            continue
        with stack:
            yield bootstrap, pid
        return


@contextmanager
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_until_ready(external)
        yield external
        return
    with dedicated_broker() as (bootstrap, _pid):
        yield bootstrap
