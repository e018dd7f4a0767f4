"""What an operator sees of a running service: Prometheus metrics and a health answer.

One HTTP port per service (`metrics_port`; 0 turns it off) serves:

* ``/metrics``: the service's own `CollectorRegistry` in the Prometheus text format
  (never the process-global registry, so two services in one process, as in tests
  and the demo, never mix their series);
* ``/healthz``: 200 while the service is live, 503 once a loop it watches has made
  no progress for `liveness_timeout_s` (the poll loop, the consumer's model follower)
  or the service has stopped;
* ``/readyz``: 200 once every readiness check passes (the group is joined, the state
  is rebuilt), else 503.

Each answer's body is a small JSON object saying which check failed; nothing in it is
secret. The port answers only requests for an allowed host (loopback names, the bound
address, `metrics_allowed_hosts`), a bounded number at once, each within a timeout
(`kernel.http_guard`). The metric definitions themselves live with each service
(`consumer.observability`, `retrainer.observability`); this module is the shared
machinery: the server, `Health`, and reading librdkafka's statistics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)

from kernel.errors import ConfigError
from kernel.http_guard import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_S,
    GuardedHandler,
    GuardedHTTPServer,
    url_host,
)

log = logging.getLogger(__name__)

#: Buckets (seconds) of short operations: a batch, a poll-to-commit, a replay.
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets (seconds) of long operations: a search, a request until its model is out.
SLOW_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Health:
    """Liveness and readiness of one service, as `/healthz` and `/readyz` answer them.

    Live: the service has not stopped, and every watched loop made progress within
    `liveness_timeout_s` (a loop reports with `beat(name)`, or is read through
    `watch(name, last_progress)`, a monotonic time or None when not watched now).
    Ready: live, and every check given to `require` passes. Thread-safe enough for
    its use: loops write floats, the server thread reads them. Never raises from a
    check: a failing one counts as not ready.
    """

    def __init__(
        self, liveness_timeout_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if liveness_timeout_s <= 0:
            raise ValueError("liveness_timeout_s must be > 0")
        self.liveness_timeout_s = liveness_timeout_s
        self._clock = clock
        self._beats: dict[str, float] = {}
        self._watched: dict[str, Callable[[], float | None]] = {}
        self._checks: dict[str, Callable[[], bool]] = {}
        self.stopped = False

    def beat(self, name: str) -> None:
        """Loop `name` made progress now."""
        self._beats[name] = self._clock()

    def watch(self, name: str, last_progress: Callable[[], float | None]) -> None:
        """Watch a loop that keeps its own last-progress time (monotonic seconds)."""
        self._watched[name] = last_progress

    def require(self, name: str, check: Callable[[], bool]) -> None:
        """A condition of readiness."""
        self._checks[name] = check

    def stop(self) -> None:
        """The service has stopped: not live, not ready."""
        self.stopped = True

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = self._clock()
        progress = dict(self._beats)
        for name, read in list(self._watched.items()):
            try:
                last = read()
            except Exception:  # a broken probe is a dead loop
                last = float("-inf")
            if last is not None:
                progress[name] = last
        ages = {name: now - last for name, last in progress.items()}
        stalled = sorted(name for name, age in ages.items() if age > self.liveness_timeout_s)
        live = not self.stopped and not stalled
        detail: dict[str, Any] = {
            "live": live,
            "stopped": self.stopped,
            "stalled": stalled,
            "seconds_since_progress": {
                name: round(age, 3) if age != float("inf") else None for name, age in ages.items()
            },
        }
        return live, detail

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        live, _detail = self.liveness()
        results: dict[str, bool] = {}
        for name, check in list(self._checks.items()):
            try:
                results[name] = bool(check())
            except Exception:
                results[name] = False
        ready = live and all(results.values())
        return ready, {"ready": ready, "live": live, "checks": results}


@runtime_checkable
class Observable(Protocol):
    """What the metrics server serves: a registry and a health answer."""

    registry: CollectorRegistry
    health: Health


# Every counter's `_created` series doubles the series count and no panel or rule reads
# it: the services' registries (all built after this import) export none.
disable_created_metrics()


class ObservabilityServer:
    """`/metrics`, `/healthz` and `/readyz` of one registry and one `Health`, in a thread.

    Binds in `__init__` (so a taken port fails at start-up, as a `ConfigError` naming
    the setting); `close()` stops the thread and frees the port. Serves GET only, to
    requests whose `Host` names an allowed host (`allowed_hosts`: loopback names and the
    bound address, and the names given, e.g. the service's name in compose), with at
    most `max_connections` at once and `timeout_s` each (`kernel.http_guard`). An IPv6
    `host` (``::1``, ``::``) listens on IPv6.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Health,
        *,
        host: str,
        port: int,
        allowed_hosts: Iterable[str] = (),
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        handler = _handler(registry, health)
        try:
            self._server = GuardedHTTPServer(
                (host, port),
                handler,
                allowed=allowed_hosts,
                timeout_s=timeout_s,
                max_connections=max_connections,
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics_port (SLAOPS_METRICS_PORT or --metrics-port): cannot listen on "
                f"{url_host(host)}:{port}: {exc.strerror or exc}"
            ) from exc
        self.host, self.port = str(self._server.server_address[0]), self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-server", daemon=True
        )
        self._thread.start()
        log.info(
            "metrics and health on http://%s:%d (/metrics, /healthz, /readyz)",
            url_host(host),
            self.port,
        )

    @property
    def server(self) -> GuardedHTTPServer:
        return self._server

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _handler(registry: CollectorRegistry, health: Health) -> type[GuardedHandler]:
    class Handler(GuardedHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self.send_plain(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                self._answer(*health.liveness())
            elif path == "/readyz":
                self._answer(*health.readiness())
            else:
                self.send_plain(404, b"not found\n")

        def _answer(self, ok: bool, detail: Mapping[str, Any]) -> None:
            body = (json.dumps(detail, sort_keys=True) + "\n").encode()
            self.send_plain(200 if ok else 503, body, "application/json")

    return Handler


def consumer_lags(stats_json: str | bytes, topic: str) -> dict[int, int]:
    """Per partition of `topic`: records not yet committed, from librdkafka's statistics.

    `stats_json` is what `stats_cb` receives every `statistics.interval.ms`.
    librdkafka's `consumer_lag` is the high watermark minus the committed offset (-1
    while either is unknown); a partition with nothing committed yet counts everything
    between the low and high watermarks (an empty one, 0). The internal partition -1
    and partitions without a known high watermark are left out.

    >>> stats = {"topics": {"t": {"partitions": {
    ...     "0": {"consumer_lag": 3, "hi_offset": 10, "lo_offset": 0, "committed_offset": 7},
    ...     "1": {"consumer_lag": -1, "hi_offset": 5, "lo_offset": 1, "committed_offset": -1001},
    ...     "-1": {"consumer_lag": -1, "hi_offset": -1001}}}}}
    >>> consumer_lags(json.dumps(stats), "t")
    {0: 3, 1: 4}
    """
    stats = json.loads(stats_json)
    partitions = stats.get("topics", {}).get(topic, {}).get("partitions", {})
    lags: dict[int, int] = {}
    for key, numbers in partitions.items():
        partition = int(key)
        high = int(numbers.get("hi_offset", -1))
        if partition < 0 or high < 0:
            continue
        lag = int(numbers.get("consumer_lag", -1))
        if lag < 0:
            if int(numbers.get("committed_offset", -1)) >= 0:
                continue  # committed but the watermark is not known yet
            lag = high - max(int(numbers.get("lo_offset", 0)), 0)
        lags[partition] = max(lag, 0)
    return lags


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name `registry` exposes or will expose once a label value is seen.

    A labelled metric exposes no sample before its first label value; its names follow
    from its type (`_total` of a counter, `_bucket`/`_sum`/`_count` of a histogram).
    """
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names
