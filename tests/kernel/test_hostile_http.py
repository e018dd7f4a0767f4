"""Hostile HTTP clients of the metrics port and `report --serve` (`kernel.http_guard`).

DNS rebinding (a `Host` that is not this server's), half-sent and dribbled requests
that would hold a thread each for ever, an IPv6 loopback bind, and a failing handler
whose traceback must reach the logger, not stderr. Every client is a raw socket on
loopback, so the test sends exactly the bytes an attacker would.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.registry import Collector

from consumer.settings import ConsumerSettings
from kernel.errors import ConfigError
from kernel.observability import Health, ObservabilityServer
from kernel.settings import load_settings
from slaops.fleet_report import ReportSettings, _Page, page_server

PAGE = "<!doctype html><title>fleet</title><p>tenant acme</p>"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


def request(
    port: int,
    hosts: list[str],
    *,
    path: str = "/healthz",
    address: str = "127.0.0.1",
) -> tuple[int, bytes]:
    """One GET with exactly the `Host` headers given (none when empty); status, body."""
    lines = [f"GET {path} HTTP/1.1", *(f"Host: {host}" for host in hosts), "Connection: close"]
    with socket.create_connection((address, port), timeout=5) as client:
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        for _ in range(10_000):  # bounded: the server closes after one answer
            chunk = client.recv(65_536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture
def metrics() -> Iterator[ObservabilityServer]:
    registry = CollectorRegistry()
    Counter("slaops_test_things", "Things.", registry=registry).inc()
    health = Health(60.0)
    health.beat("poll_loop")
    server = ObservabilityServer(
        registry,
        health,
        host="127.0.0.1",
        port=0,
        allowed_hosts=["consumer"],
        timeout_s=1.0,
        max_connections=4,
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def report() -> Iterator[int]:
    server = page_server(ReportSettings(host="127.0.0.1", port=0), _Page(PAGE), timeout_s=1.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- DNS rebinding ---------------------------------------------------------------------
REFUSED_HOSTS = [
    ["evil.example"],
    ["evil.example:{port}"],
    ["127.0.0.1.nip.io:{port}"],
    ["localhost.evil.example"],
    ["localhost:{port}@evil.example"],
    [],  # no Host at all
    ["localhost", "evil.example"],  # two of them
]
ALLOWED_HOSTS = [
    ["localhost"],
    ["localhost:{port}"],
    ["LocalHost.:{port}"],
    ["127.0.0.1:{port}"],
    ["[::1]:{port}"],
    ["[::1]"],
]


@pytest.mark.parametrize("hosts", REFUSED_HOSTS)
def test_the_metrics_port_refuses_a_host_that_is_not_its_own(
    metrics: ObservabilityServer, hosts: list[str]
) -> None:
    named = [h.format(port=metrics.port) for h in hosts]
    status, body = request(metrics.port, named, path="/metrics")
    assert status == 421, (named, status)
    assert b"slaops_test_things" not in body and b"evil" not in body
    assert len(body) < 200


@pytest.mark.parametrize("hosts", [*ALLOWED_HOSTS, ["consumer:9464"], ["Consumer"]])
def test_the_metrics_port_answers_loopback_names_and_the_configured_ones(
    metrics: ObservabilityServer, hosts: list[str]
) -> None:
    named = [h.format(port=metrics.port) for h in hosts]
    status, body = request(metrics.port, named, path="/metrics")
    assert status == 200 and b"slaops_test_things_total 1.0" in body


@pytest.mark.parametrize("hosts", REFUSED_HOSTS)
def test_the_served_report_refuses_a_host_that_is_not_its_own(
    report: int, hosts: list[str]
) -> None:
    status, body = request(report, [h.format(port=report) for h in hosts], path="/")
    assert status == 421 and b"acme" not in body


@pytest.mark.parametrize("hosts", ALLOWED_HOSTS)
def test_the_served_report_answers_loopback_names(report: int, hosts: list[str]) -> None:
    status, body = request(report, [h.format(port=report) for h in hosts], path="/")
    assert status == 200 and body.decode() == PAGE


def test_the_allowed_hosts_setting_reaches_the_server_and_refuses_junk() -> None:
    settings = load_settings(
        ConsumerSettings, {"metrics_allowed_hosts": " consumer , Metrics.Example.org "}
    )
    assert settings.allowed_metrics_hosts() == ("consumer", "metrics.example.org")
    assert ConsumerSettings().allowed_metrics_hosts() == ()
    with pytest.raises(ConfigError, match=r"metrics_allowed_hosts \(SLAOPS_METRICS_ALLOWED_HOSTS"):
        load_settings(ConsumerSettings, {"metrics_allowed_hosts": "consumer, evil host"})
    with pytest.raises(ConfigError, match="metrics_allowed_hosts"):
        load_settings(ConsumerSettings, {"metrics_allowed_hosts": "*,consumer"})


def test_a_star_answers_every_host_when_the_operator_asks_for_it() -> None:
    server = ObservabilityServer(
        CollectorRegistry(), Health(60.0), host="127.0.0.1", port=0, allowed_hosts=["*"]
    )
    try:
        assert request(server.port, ["anything.example"])[0] == 200
        assert request(server.port, [])[0] == 421  # still exactly one Host
    finally:
        server.close()


# -- half-sent and dribbled requests ----------------------------------------------------
def _closed_by_server(client: socket.socket) -> bool:
    """Whether the server answered (a 503) or hung up before the client's timeout."""
    try:
        client.recv(4096)
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: hung up on
    return True


def test_half_sent_requests_hold_a_bounded_number_of_threads_and_time_out(
    metrics: ObservabilityServer,
) -> None:
    before = threading.active_count()
    clients = []
    try:
        for _ in range(60):
            client = socket.create_connection(("127.0.0.1", metrics.port), timeout=5)
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")  # never ends
            clients.append(client)
        time.sleep(0.3)
        held = threading.active_count() - before
        assert held <= 4, f"{held} threads for 60 half-sent requests (cap 4)"
        assert metrics.server.refused_busy > 0  # turned away, not queued on a thread
        # Within the 1 s timeout (and the serve loop's half-second tick) every one of
        # them is answered or hung up on, and the server answers again.
        deadline = time.monotonic() + 5.0
        for client in clients:
            client.settimeout(max(0.1, deadline - time.monotonic()))
            assert _closed_by_server(client), "a half-sent request was never hung up on"
        assert request(metrics.port, ["localhost"])[0] == 200
        assert threading.active_count() - before <= 1
    finally:
        for client in clients:
            client.close()


def test_a_connection_beyond_the_cap_gets_503_at_once(metrics: ObservabilityServer) -> None:
    holders = [socket.create_connection(("127.0.0.1", metrics.port), timeout=5) for _ in range(4)]
    try:
        for holder in holders:
            holder.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", metrics.port), timeout=2) as extra:
            assert extra.recv(4096).startswith(b"HTTP/1.0 503 ")
    finally:
        for holder in holders:
            holder.close()


def test_a_request_dribbled_a_byte_at_a_time_is_cut_at_the_deadline(
    metrics: ObservabilityServer,
) -> None:
    """Each byte comes well within the per-read timeout; the whole request does not."""
    with socket.create_connection(("127.0.0.1", metrics.port), timeout=5) as client:
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        started = time.monotonic()
        cut_after = None
        for _ in range(40):  # at most 40 bytes, 10 s
            try:
                client.sendall(b"a")
            except OSError:
                cut_after = time.monotonic() - started
                break
            client.settimeout(0.25)
            try:
                if client.recv(4096) == b"":
                    cut_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
            except OSError:
                cut_after = time.monotonic() - started
                break
        assert cut_after is not None and cut_after < 4.0, cut_after


# -- IPv6 loopback ------------------------------------------------------------------------
@needs_ipv6
def test_the_metrics_port_listens_on_ipv6_loopback() -> None:
    settings = load_settings(ConsumerSettings, {"metrics_host": "::1"})
    server = ObservabilityServer(
        CollectorRegistry(), Health(60.0), host=settings.metrics_host, port=0
    )
    try:
        status, _body = request(server.port, [f"[::1]:{server.port}"], address="::1")
        assert status == 200
    finally:
        server.close()


@needs_ipv6
def test_the_report_serves_on_ipv6_loopback() -> None:
    settings = load_settings(ReportSettings, {"host": "::1", "port": 0})
    server = page_server(settings, _Page(PAGE))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        port = server.server_port
        assert request(port, [f"[::1]:{port}"], path="/", address="::1") == (200, PAGE.encode())
        assert request(port, ["evil.example"], path="/", address="::1")[0] == 421
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_metrics_host_that_is_no_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"metrics_host \(SLAOPS_METRICS_HOST"):
        load_settings(ConsumerSettings, {"metrics_host": "::1::2"})


# -- errors reach the logger ----------------------------------------------------------------
class _Broken(Collector):
    def collect(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("collector exploded")


def test_a_failing_handler_logs_through_the_logger_not_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    registry.register(_Broken())
    server = ObservabilityServer(registry, Health(60.0), host="127.0.0.1", port=0)
    try:
        capfd.readouterr()
        with caplog.at_level(logging.DEBUG, logger="kernel.http_guard"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                for _ in range(100):  # bounded: ends when the server hangs up
                    if not client.recv(4096):
                        break
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(
                r.levelno == logging.ERROR for r in caplog.records
            ):
                time.sleep(0.05)
            request(server.port, ["localhost"], path="/\x1b[2Jnowhere")
    finally:
        server.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].name == "kernel.http_guard"
    assert errors[0].exc_info is not None and "collector exploded" in str(errors[0].exc_info[1])
    assert any("nowhere" in r.getMessage() for r in caplog.records)  # the access line
    err = capfd.readouterr().err
    assert "Traceback" not in err and "collector exploded" not in err and "nowhere" not in err
