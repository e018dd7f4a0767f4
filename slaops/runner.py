"""The one start-up of `slaops consume`, `slaops retrain` and `slaops simulate`.

Each service's `main` module keeps what is its own: `prepare` (its configs and store,
built once, with every check that needs no network), `topic_specs`, `build_service`
(its Kafka clients around what `prepare` built) and `describe` (the start line). The
order they run in, and what every service shares, is here:

1. the bootstrap check (unless the embedded broker will supply one);
2. `prepare`: bad settings fail here, before any broker starts or any connection;
3. the embedded broker, when asked for and no bootstrap servers are set; otherwise
   `wait_for_broker`: the broker answers within `connect_timeout_s`, or the start
   fails naming the address it tried;
4. the service's topics, created if missing (existing ones are left as they are);
5. `build_service`, handed what `prepare` built (the store is opened once);
6. SIGTERM/SIGINT as a stop request (unless the caller passes its own `stop`): the
   loop finishes its batch and the service exits 0 after SIGTERM, 130 after SIGINT
   (Ctrl-C); a second SIGINT stops at once (`KeyboardInterrupt`);
7. the metrics and health port (`metrics_port`, unless 0), before the loop starts;
8. the loop, until stopped, and one closing log line with what it returns.

Only the start-up waits are bounded by `connect_timeout_s`: once running, a service
keeps waiting through a broker outage (librdkafka reconnects).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from confluent_kafka import KafkaError, KafkaException

from kernel.embedded import embedded_broker
from kernel.errors import BrokerError, ConfigError, SlaopsError
from kernel.kafka import TopicSpec, base_config, ensure_topics, make_reader
from kernel.observability import ObservabilityServer, Observable
from kernel.settings import ObservabilitySettings, ServiceSettings
from kernel.signals import stop_on_signals
from slaops.cli import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from consumer.settings import ConsumerSettings
    from retrainer.settings import RetrainerSettings
    from simulator.settings import SimulatorSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings, contravariant=True)
P = TypeVar("P")

#: Longest single metadata request of `wait_for_broker`: Ctrl-C is seen between two.
_PROBE_S = 0.25


def wait_for_broker(settings: ServiceSettings, *, probe_s: float = _PROBE_S) -> str:
    """Wait until the broker answers a metadata request; returns its bootstrap servers.

    Tries for `settings.connect_timeout_s`, in requests of at most `probe_s` each, so
    that Ctrl-C (`KeyboardInterrupt`) is seen between them. librdkafka's own log lines
    are kept quiet meanwhile (one connection failure a try would repeat for the whole
    wait); the last error it reported goes into the `BrokerError` instead, with the
    address tried. Raises `ConfigError` without bootstrap servers.
    """
    bootstrap = settings.require_bootstrap()
    errors: list[str] = []

    def on_error(error: KafkaError) -> None:
        if error.code() != KafkaError._ALL_BROKERS_DOWN:  # says less than the one before
            errors[:] = [error.str()]

    overrides: dict[str, Any] = {"log_level": 0, "error_cb": on_error}
    reader = make_reader(base_config(settings), "slaops-connect-check", **overrides)
    deadline = time.monotonic() + settings.connect_timeout_s
    waiting = False
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                reader.list_topics(timeout=max(0.05, min(probe_s, left)))
                log.info("the broker at %s answered", bootstrap)
                return bootstrap
            except KafkaException as exc:
                reader.poll(0)  # serves the error callback
                if not errors:
                    errors.append(str(exc))
                if not waiting:
                    waiting = True
                    log.info(
                        "waiting up to %g s for the broker at %s (connect_timeout_s)",
                        settings.connect_timeout_s,
                        bootstrap,
                    )
            if deadline - time.monotonic() <= 0:
                break
    finally:
        reader.close()
    raise BrokerError(
        f"no Kafka broker answered at {bootstrap} within {settings.connect_timeout_s:g} s "
        f"({errors[-1] if errors else 'no answer'}); check that it is up and that "
        "KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers) names it, or wait longer with "
        "SLAOPS_CONNECT_TIMEOUT_S (or --connect-timeout-s)"
    )


def stop_on_signals_noting_interrupt(stop: threading.Event) -> threading.Event:
    """`kernel.signals.stop_on_signals`, and the event it returns is set by SIGINT.

    A second SIGINT, while the loop is still finishing, raises `KeyboardInterrupt`.
    """
    stop_on_signals(stop)
    interrupted = threading.Event()
    graceful = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        if callable(graceful):
            graceful(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    return interrupted


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
            local = settings.model_copy(update={"bootstrap_servers": bootstrap})
            return _serve(main, local, parts, stop, embedded=True)
    return _serve(main, settings, parts, stop)


def _serve(
    main: ServiceMain[S, P],
    settings: S,
    parts: P,
    stop: threading.Event | None,
    *,
    embedded: bool = False,
) -> int:
    if not embedded:
        wait_for_broker(settings)
    ensure_topics(settings, main.topic_specs(settings))
    service = main.build_service(settings, parts)
    interrupted = threading.Event()
    if stop is None:
        stop = threading.Event()
        interrupted = stop_on_signals_noting_interrupt(stop)
    server = _observability_server(settings, service)
    log.info("%s", main.describe(settings))
    try:
        outcome = service.run(stop)
    finally:
        if server is not None:
            server.close()
    log.info("stopped: %s", outcome)
    return EXIT_INTERRUPTED if interrupted.is_set() else 0


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
