"""`slaops report`: the fleet as self-contained HTML, written or served.

Reads the topics (`slaops.fleet_data`, bounded and validated) and the store, then
renders the page (`slaops.fleet_html`): one page up to `tenants_per_page` tenants,
past that an index at `output` and one page per `tenants_per_page` tenants beside it.
`--serve` keeps it fresh on a loopback port:
a thread regenerates it every `refresh_s` and the page reloads itself as often. The
server answers only requests for a loopback name or the bound address (DNS rebinding),
a bounded number at once, each within a timeout (`kernel.http_guard`).
Tenants are named by slug only when the tenant key is configured; otherwise by hash.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pydantic import Field, SecretStr, field_validator

from kernel.errors import ConfigError
from kernel.http_guard import GuardedHandler, GuardedHTTPServer, url_host
from kernel.settings import EventTimeSettings, StoreSettings, TopicName
from kernel.tenant_hash import KEY_FILE_NAME, load_or_create_local_key
from schemas import topics
from schemas.telemetry import DEFAULT_MAX_MESSAGE_BYTES
from slaops.fleet_data import ReadLimits, build_reports, read_topics
from slaops.fleet_html import PER_PAGE, Pages, page_name, render_report

log = logging.getLogger(__name__)


#: How far behind a tenant's newest event the report still believes a stamp.
REPORT_SPAN_S: Final = 365 * 86_400.0


class ReportSettings(StoreSettings, EventTimeSettings):
    telemetry_topic: TopicName = Field(default=topics.TELEMETRY, description="Telemetry.")
    retrain_topic: TopicName = Field(default=topics.RETRAIN, description="RetrainRequested.")
    models_topic: TopicName = Field(default=topics.MODELS, description="ModelPublished.")
    failures_topic: TopicName = Field(default=topics.RETRAIN_FAILURES, description="Failures.")
    decisions_topic: TopicName = Field(
        default=topics.RETRAIN_DECISIONS, description="Kept champions."
    )
    forecasts_topic: TopicName = Field(
        default=topics.FORECASTS,
        description="Live forecasts, scored against the telemetry read (live error and skill).",
    )
    output: Path = Field(
        default=Path("slaops-report.html"),
        description="Where the page is written (past tenants_per_page tenants: the index, "
        "its pages beside it as NAME-001.html, ...).",
    )
    serve: bool = Field(default=False, description="Serve the page and keep it fresh.")
    host: str = Field(default="127.0.0.1", description="Loopback address to serve on.")
    port: int = Field(default=8765, ge=0, le=65_535, description="Port to serve on (0: any).")
    refresh_s: float = Field(
        default=60.0, ge=5.0, description="Regenerate (and reload) the served page this often."
    )
    read_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest time spent reading the topics per page."
    )
    idle_s: float = Field(
        default=2.0, gt=0, description="Reading stops when the topics are quiet this long."
    )
    max_records: int = Field(
        default=500_000, ge=1, description="Most records read from the topics per page."
    )
    max_tenants: int = Field(default=1_000, ge=1, le=10_000, description="Most tenants shown.")
    tenants_per_page: int = Field(
        default=PER_PAGE,
        ge=1,
        le=1_000,
        description="Tenants on one page; past this many, an index page with a search box "
        "links one page per this many.",
    )
    points: int = Field(
        default=300, ge=10, le=5_000, description="Telemetry points per tenant timeline."
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=1, description="Telemetry size limit."
    )

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        """The page names tenants: it is served to this machine only."""
        try:
            loopback = value == "localhost" or ipaddress.ip_address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError("serve on a loopback address (127.0.0.1, ::1 or localhost)")
        return value

    def display_key(self) -> SecretStr | None:
        """The tenant key if one is configured (or kept in local mode); never made here."""
        if self.tenant_key is not None:
            return self.tenant_secret()
        if self.local_mode and (self.data_dir / KEY_FILE_NAME).is_file():
            return load_or_create_local_key(self.data_dir)
        return None


def generate(settings: ReportSettings, *, refresh_s: float | None = None) -> Pages:
    """Read the topics and the store once; the pages."""
    started = time.perf_counter()
    store = settings.open_model_store()
    key = settings.display_key()
    read = read_topics(
        settings,
        {
            "telemetry": settings.telemetry_topic,
            "retrain": settings.retrain_topic,
            "models": settings.models_topic,
            "decisions": settings.decisions_topic,
            "failures": settings.failures_topic,
            "forecasts": settings.forecasts_topic,
        },
        ReadLimits(
            timeout_s=settings.read_timeout_s,
            idle_s=settings.idle_s,
            max_records=settings.max_records,
            max_tenants=settings.max_tenants,
            max_message_bytes=settings.max_message_bytes,
            # A topic's whole retention, not one window: a stamp is refused a year
            # behind the tenant's newest (or ahead of the clock), not a window span.
            time_rule=dataclasses.replace(
                settings.time_rule(), span_s=max(settings.window_span_s, REPORT_SPAN_S)
            ),
        ),
    )
    reports = build_reports(read, store, key)
    source = {
        "bootstrap": settings.require_bootstrap(),
        "store": store.uri,
        "tenants named by": "slug (tenant key configured)" if key else "hash (no tenant key)",
    }
    pages = render_report(
        reports,
        read,
        source=source,
        generated_at=datetime.now(UTC),
        stem=settings.output.stem,
        points=settings.points,
        refresh_s=refresh_s,
        per_page=settings.tenants_per_page,
    )
    log.info(
        "report tenants=%d pages=%d records=%d bytes=%d seconds=%.1f",
        len(reports),
        len(pages.pages) or 1,
        sum(read.records.values()),
        len(pages.index) + sum(len(p) for p in pages.pages.values()),
        time.perf_counter() - started,
    )
    return pages


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_page(settings: ReportSettings, pages: Pages | str) -> Path:
    """Write each file atomically (a reader, or the browser, never sees half a page):
    the tenant pages first, then the page at `output` that links them; a previous
    report's tenant pages past this one's are removed. The path of `output`."""
    if isinstance(pages, str):
        pages = Pages(pages)
    path = settings.output
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, page in pages.pages.items():
        _write_atomically(path.with_name(name), page)
    number = len(pages.pages) + 1
    while (stale := path.with_name(page_name(path.stem, number))).is_file():
        stale.unlink()
        number += 1
    _write_atomically(path, pages.index)
    return path


class _Page:
    """The files served: the index (or only page) at /, its tenant pages by name."""

    def __init__(self, pages: Pages | str) -> None:
        self.lock = threading.Lock()
        self.set(pages)

    def set(self, pages: Pages | str) -> None:
        if isinstance(pages, str):
            pages = Pages(pages)
        files = {"/" + name: page.encode("utf-8") for name, page in pages.pages.items()}
        files["/"] = files["/index.html"] = pages.index.encode("utf-8")
        with self.lock:
            self.files = files

    @property
    def body(self) -> bytes:
        return self.files["/"]


def _handler(current: _Page) -> type[GuardedHandler]:
    class Handler(GuardedHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            with current.lock:
                body = current.files.get(self.path)
            if body is None:
                self.send_plain(404, b"not found\n")
                return
            self.send_plain(200, body, "text/html; charset=utf-8", [("Cache-Control", "no-store")])

    return Handler


#: Seconds one connection to the served page may take: the page is up to a few MB.
SERVE_TIMEOUT_S = 30.0
#: Connections served at once; the page is for the operator's own browser.
SERVE_MAX_CONNECTIONS = 16


def page_server(
    settings: ReportSettings,
    current: _Page,
    *,
    timeout_s: float = SERVE_TIMEOUT_S,
    max_connections: int = SERVE_MAX_CONNECTIONS,
) -> GuardedHTTPServer:
    """The page's server, bound (not serving yet): answers only for loopback names and
    the bound address, a bounded number of connections at once, each within `timeout_s`
    (`kernel.http_guard`); ``--host ::1`` listens on IPv6."""
    return GuardedHTTPServer(
        (settings.host, settings.port),
        _handler(current),
        timeout_s=timeout_s,
        max_connections=max_connections,
    )


def serve(settings: ReportSettings, stop: threading.Event) -> int:
    """Serve the pages until `stop` (the index or only page at /, tenant pages by file
    name); regenerate them every `refresh_s` (a failure keeps the previous pages and is
    logged)."""
    first = generate(settings, refresh_s=settings.refresh_s)
    current = _Page(first)
    write_page(settings, first)
    server = page_server(settings, current)
    url = f"http://{url_host(settings.host)}:{server.server_port}/"
    print(f"serving the fleet report on {url}", flush=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5})
    thread.start()
    try:
        while not stop.wait(settings.refresh_s):
            try:
                page = generate(settings, refresh_s=settings.refresh_s)
            except Exception:
                log.exception("report not regenerated; serving the previous page")
                continue
            current.set(page)
            write_page(settings, page)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    return 0


def run_report(settings: ReportSettings, stop: threading.Event | None = None) -> int:
    settings.require_bootstrap()
    settings.store_uri()  # a missing store stops here, with the setting named
    if not settings.serve:
        path = write_page(settings, generate(settings))
        print(f"wrote the fleet report to {path.resolve()}", flush=True)
        return 0
    stop = stop or threading.Event()
    try:
        return serve(settings, stop)
    except KeyboardInterrupt:
        stop.set()
        return 0
    except OSError as exc:
        raise ConfigError(
            f"cannot serve on {url_host(settings.host)}:{settings.port}: {exc}; pick another "
            "--port (SLAOPS_PORT; 0 takes any free one) or stop what holds it"
        ) from exc
