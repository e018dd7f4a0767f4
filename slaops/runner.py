"""The one start-up of `slaops consume`, `slaops retrain` and `slaops simulate`.

Each service's `main` module keeps what is its own: `prepare` (its configs and store,
built once, with every check that needs no network), `topic_specs`, `build_service`
(its Kafka clients around what `prepare` built) and `describe` (the start line). The
order they run in, and what every service shares, is here:

1. the bootstrap check (unless the embedded broker will supply one);
2. `prepare`: bad settings fail here, before any broker starts or any connection;
3. the embedded broker, when asked for and no bootstrap servers are set;
4. the service's topics, created if missing (existing ones are left as they are);
5. `build_service`, handed what `prepare` built (the store is opened once);
6. SIGTERM/SIGINT as a stop request (unless the caller passes its own `stop`);
7. the metrics and health port (`metrics_port`, unless 0), before the loop starts;
8. the loop, until stopped, and one closing log line with what it returns.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol, TypeVar

from kernel.embedded import embedded_broker
from kernel.errors import ConfigError, SlaopsError
from kernel.kafka import TopicSpec, ensure_topics
from kernel.observability import ObservabilityServer, Observable
from kernel.settings import ObservabilitySettings, ServiceSettings
from kernel.signals import stop_on_signals

if TYPE_CHECKING:
    from consumer.settings import ConsumerSettings
    from retrainer.settings import RetrainerSettings
    from simulator.settings import SimulatorSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings, contravariant=True)
P = TypeVar("P")


class Service(Protocol):
    """A service loop: runs until `stop` is set (or its work is done), then returns stats."""

    def run(self, stop: threading.Event) -> object: ...


class ServiceMain(Protocol[S, P]):
    """What the runner needs of a service's `main` module (a module satisfies it)."""

    def prepare(self, settings: S, /) -> P: ...
    def topic_specs(self, settings: S, /) -> list[TopicSpec]: ...
    def build_service(self, settings: S, parts: P, /) -> Service: ...
    def describe(self, settings: S, /) -> str: ...


def run_service(main: ServiceMain[S, P], settings: S, stop: threading.Event | None = None) -> int:
    """Start one service the way every slaops service starts (see the module doc).

    Raises `ConfigError` (and other `SlaopsError`s of `prepare`; a `ValueError` of a
    config object becomes a `ConfigError`) for bad settings before any connection, and
    `BrokerError` when the broker cannot be reached.
    """
    embedded = settings.bootstrap_servers is None and settings.embedded_broker
    if not embedded:
        settings.require_bootstrap()
    try:
        parts = main.prepare(settings)
    except SlaopsError:
        raise
    except ValueError as exc:  # a config object refused a value that passed the settings
        raise ConfigError(f"invalid settings: {exc}") from exc
    if embedded:
        with embedded_broker() as (bootstrap, _pid):
            log.info("no KAFKA_BOOTSTRAP_SERVERS: using the embedded broker at %s", bootstrap)
            return _serve(
                main, settings.model_copy(update={"bootstrap_servers": bootstrap}), parts, stop
            )
    return _serve(main, settings, parts, stop)


def _serve(main: ServiceMain[S, P], settings: S, parts: P, stop: threading.Event | None) -> int:
    ensure_topics(settings, main.topic_specs(settings))
    service = main.build_service(settings, parts)
    if stop is None:
        stop = threading.Event()
        stop_on_signals(stop)
    server = _observability_server(settings, service)
    log.info("%s", main.describe(settings))
    try:
        outcome = service.run(stop)
    finally:
        if server is not None:
            server.close()
    log.info("stopped: %s", outcome)
    return 0


def _observability_server(
    settings: ServiceSettings, service: Service
) -> ObservabilityServer | None:
    """The service's `/metrics`, `/healthz` and `/readyz`, when it has them and a port."""
    hooks = getattr(service, "hooks", None)
    if not isinstance(settings, ObservabilitySettings) or not settings.metrics_port:
        return None
    if not isinstance(hooks, Observable):
        return None
    return ObservabilityServer(
        hooks.registry,
        hooks.health,
        host=settings.metrics_host,
        port=settings.metrics_port,
        allowed_hosts=settings.allowed_metrics_hosts(),
    )


# A service's modules are imported when it runs, so one command loads only its own.
def run_consumer(settings: ConsumerSettings, stop: threading.Event | None = None) -> int:
    from consumer import main

    return run_service(main, settings, stop)


def run_retrainer(settings: RetrainerSettings, stop: threading.Event | None = None) -> int:
    from retrainer import main

    return run_service(main, settings, stop)


def run_simulator(settings: SimulatorSettings, stop: threading.Event | None = None) -> int:
    from simulator import main

    return run_service(main, settings, stop)
