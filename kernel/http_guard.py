"""The hardening every slaops HTTP server shares: the metrics port and `report --serve`.

`GuardedHTTPServer` (a `ThreadingHTTPServer`) with `GuardedHandler` (a
`BaseHTTPRequestHandler`) promise:

* **Allowed hosts.** A request is answered only when its one `Host` header names an
  allowed host (any port): the loopback names (``localhost``, ``127.0.0.1``, ``::1``),
  the address the server is bound to (unless a wildcard such as ``0.0.0.0``), and the
  names given (`allowed_hosts`; ``*`` allows every host). Anything else, a missing
  `Host` or two of them, gets ``421 Misdirected Request`` with a short body. A web page
  that rebinds its own DNS name to this machine (DNS rebinding) sends its own name,
  so a browser can never read these answers for another site.
* **Bounded connections.** At most `max_connections` requests are served at once, one
  thread each; a connection beyond the cap gets ``503`` at once and is closed, without
  a thread. Each connection has `timeout_s` in all, from accept to the last byte of its
  answer (and no single read or write waits longer): a client that sends half a
  request, or one byte at a time, is hung up on, and its thread ends.
* **Logs.** Request lines, protocol errors and a failing handler's traceback go to
  this module's logger (never straight to stderr), so JSON logs stay JSON and the
  text format escapes what a client sent. Requests and protocol errors log at DEBUG
  (a client must not be able to flood the service's log); a handler's exception at
  ERROR.
* **IPv6.** An IPv6 literal (``::1``, ``::``) binds an IPv6 socket; anything else binds
  IPv4 (a host name resolves to its IPv4 address).

Each connection answers one request (HTTP/1.0), so the cap counts requests in flight.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

log = logging.getLogger(__name__)

#: The names of this machine's loopback interface a local client sends as `Host`.
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")
#: Seconds one connection may take in all, from accept to the end of its answer.
DEFAULT_TIMEOUT_S: Final = 10.0
#: Requests served at once; beyond it a connection is answered 503 and closed.
DEFAULT_MAX_CONNECTIONS: Final = 32
#: What a refused `Host` gets (no part of the request is echoed).
MISDIRECTED_BODY: Final = b"misdirected request: this server does not answer for that host\n"
_BUSY: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 5\r\nConnection: close\r\nRetry-After: 1\r\n\r\nbusy\n"
)
_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names, not a bind
#: One label of a host name (underscores too: container and service names have them).
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for an IPv6 literal (``::1``, ``[::1]``), IPv4 for anything else.

    >>> address_family("::1").name, address_family("127.0.0.1").name
    ('AF_INET6', 'AF_INET')
    """
    try:
        version = ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return socket.AF_INET
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 literal in brackets.

    >>> url_host("::1"), url_host("127.0.0.1")
    ('[::1]', '127.0.0.1')
    """
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def normal_host(name: str) -> str | None:
    """A host name or address in one spelling (lower case, no trailing dot, IP literals
    compressed), or None when it is not one.

    >>> normal_host("LocalHost."), normal_host("[0:0::1]"), normal_host("a b")
    ('localhost', '::1', None)
    """
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    name = name.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


def host_of(header: str) -> str | None:
    """The host a `Host` header names, without its port, in `normal_host`'s spelling.

    >>> host_of("LOCALHOST:9464"), host_of("[::1]:8765"), host_of("::1"), host_of("x:y")
    ('localhost', '::1', '::1', None)
    """
    header = header.strip()
    if header.startswith("["):
        close = header.find("]")
        rest = header[close + 1 :]
        if close < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return normal_host(header[: close + 1])
    if header.count(":") == 1:
        header, port = header.split(":")
        if not port.isdigit():
            return None
    elif header.count(":") > 1:  # a bare IPv6 address, as some clients send it
        try:
            return str(ipaddress.IPv6Address(header))
        except ValueError:
            return None
    return normal_host(header) if header else None


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The hosts a server bound to `bound` answers for; None when ``*`` allows any.

    Raises `ValueError` naming an entry of `extra` that is not a host name or address.

    >>> sorted(allowed_hosts("0.0.0.0", ["Consumer"]))
    ['127.0.0.1', '::1', 'consumer', 'localhost']
    """
    names = set(LOOPBACK_NAMES)
    for entry in extra:
        if entry.strip() == "*":
            return None
        name = normal_host(entry)
        if name is None:
            raise ValueError(f"not a host name or address: {entry!r}")
        names.add(name)
    name = normal_host(bound) if bound else None
    if name is not None and name not in _WILDCARDS:
        names.add(name)
    return frozenset(names)


def parse_host_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of host names (or ``*``) in `normal_host`'s spelling.

    Raises `ValueError` naming the first entry that is not a host.

    >>> parse_host_list(" consumer, Metrics.Example.org ,")
    ('consumer', 'metrics.example.org')
    """
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if "*" in entries:
        if len(entries) > 1:
            raise ValueError("'*' allows every host: give it alone")
        return ("*",)
    names = []
    for entry in entries:
        name = normal_host(entry)
        if name is None:
            raise ValueError(f"not a host name or address: {entry[:80]!r}")
        names.append(name)
    return tuple(names)


class GuardedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with allowed hosts, a connection cap and timeouts.

    Binds in `__init__` (an `OSError` when it cannot). `refused_busy` counts the
    connections turned away at the cap, `refused_host` the requests for a host that
    is not allowed. `server_close` also hangs up on every open connection.
    """

    daemon_threads = True
    block_on_close = False
    #: The listen backlog: connections wait there (no thread) until accepted or refused.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[GuardedHandler],
        *,
        allowed: Iterable[str] = (),
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if timeout_s <= 0 or max_connections < 1:
            raise ValueError("timeout_s must be > 0 and max_connections >= 1")
        self.address_family = address_family(address[0])
        self.hosts = allowed_hosts(address[0], allowed)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.refused_busy = 0
        self.refused_host = 0
        self._slots = threading.Semaphore(max_connections)
        self._open: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        super().__init__((address[0].strip("[]"), address[1]), handler)

    def host_allowed(self, values: list[str] | None) -> bool:
        """Whether the request's `Host` headers (all of them) name one allowed host."""
        if not values or len(values) != 1:
            return False
        if self.hosts is None:
            return True
        return host_of(values[0]) in self.hosts

    # -- the cap and the deadline ---------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_busy += 1
            log.debug("connection refused: %d requests in flight", self.max_connections)
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._lock:
            self._open[request] = time.monotonic() + self.timeout_s
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._forget(request)
            self.shutdown_request(request)

    def _forget(self, request: socket.socket) -> None:
        with self._lock:
            known = self._open.pop(request, None) is not None
        if known:
            self._slots.release()

    def service_actions(self) -> None:
        """Hang up on connections past their deadline (the serve loop calls this)."""
        now = time.monotonic()
        with self._lock:
            late = [request for request, deadline in self._open.items() if deadline <= now]
        for request in late:
            _hang_up(request)

    def server_close(self) -> None:
        super().server_close()
        with self._lock:
            still_open = list(self._open)
        for request in still_open:
            _hang_up(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler's exception: to the logger (a client that went away at DEBUG)."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("connection ended early: %s", type(error).__name__)
            return
        log.error("error answering a request on port %d", self.server_port, exc_info=True)


def _hang_up(request: socket.socket) -> None:
    """Shut a connection down from another thread: the reads and writes it blocks in end."""
    try:
        request.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its thread


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler of a `GuardedHTTPServer`: checks `Host` before any `do_*`."""

    server: GuardedHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_s)  # each read and write

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if not self.server.host_allowed(self.headers.get_all("Host")):
            self.server.refused_host += 1
            self.close_connection = True
            self.send_plain(421, MISDIRECTED_BODY)
            return False
        return True

    def send_plain(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """One whole answer: status, headers, body."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's
        log.debug("%s %s", self.address_string(), format % args)
