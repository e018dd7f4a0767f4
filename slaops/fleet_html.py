"""The fleet report's pages, from the Jinja2 templates in `slaops/templates` (autoescaped).

Up to `per_page` tenants make ONE self-contained page: inline CSS, images as data:
URIs, no script, font, stylesheet or image from anywhere else, so it opens the same
from a file, an e-mail or an air-gapped laptop. Past that, the page named `output` is
an index (every tenant's row, linked to its page, and a search box: one inline script
filtering the rows by name) and each `per_page` tenants get a page of their own beside
it, in the same folder, linked by relative names. Every value that came from a topic or
the store is HTML-escaped by the templates' autoescaping (`Environment(autoescape=True)`);
nothing here builds markup by hand.

Times carry their base: event time (the telemetry's own stamps: timelines, alarms and
requests) or wall clock (when the retrainer acted), both UTC.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

from kernel.artifacts import ModelCard
from kernel.model_report import PLOT_KINDS, PLOT_TITLES
from slaops.fleet_data import LiveScore, TenantReport, TopicRead, downsample, holdout_error_rate

log = logging.getLogger(__name__)

#: Tenants on one page; past this many, an index and one page per this many.
PER_PAGE = 100
#: The fields of a card's warning record the page shows (`ModelCard.warning_record`).
WARNING_FIELDS = (
    "fresh_onsets",
    "recall_lead_1",
    "recall_lead_3",
    "median_lead",
    "notifications",
    "false_warnings",
    "false_per_day",
    "days",
)
#: What draws a tenant's timeline: (report, points) -> PNG bytes.
TimelineDrawer = Callable[[TenantReport, int], bytes]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _num(value: Any, spec: str = ".3f") -> str:
    number = _finite(value)
    return "-" if number is None else format(number, spec)


def _thousands(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


_ENV = Environment(
    loader=PackageLoader("slaops", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters.update(data_uri=_data_uri, num=_num, thousands=_thousands, when=_when)


def timeline_figure(report: TenantReport, points: int) -> Figure:
    """Telemetry (downsampled p99 latency and breach rate) with alarms, requests, versions.

    All on event time (the x axis says so): a version is drawn at its request's
    `detected_at` (the newest event it could have learnt from), its label naming version
    and out-of-fold F1.
    """
    events = report.events
    t, p99, rate = downsample(events.ts, events.p99, events.breached, points)
    # Fixed margins, not a layout engine: the engine's measuring was half of each draw.
    fig = Figure(figsize=(9.0, 2.6), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.08, right=0.93, bottom=0.2, top=0.89)
    if t.size:
        when = date2num([datetime.fromtimestamp(x, UTC) for x in t])
        ax.plot(when, p99, color="#1f6feb", linewidth=1, label="p99 latency (ms)")
        share = ax.twinx()
        share.fill_between(when, rate, step="mid", color="#cf222e", alpha=0.15)
        share.set_ylim(0, 1)
        share.set_ylabel("breach rate", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no telemetry read", ha="center", transform=ax.transAxes)
    requests = {r.event_id: r for r in events.requests}
    for request in events.requests:
        drift = request.reason in ("data_drift", "performance_drift")
        ax.axvline(
            float(date2num(request.detected_at)),
            color="#cf222e" if drift else "#bf8700",
            linestyle="-" if drift else "--",
            linewidth=1.2,
        )
    for model in events.models:
        origin = requests.get(model.request_event_id)
        if origin is None:
            continue
        at = float(date2num(origin.detected_at))
        ax.axvline(at, color="#1a7f37", linewidth=2, alpha=0.6)
        ax.annotate(
            f"v{model.model_version} F1 {_num(model.metrics.get('f1'), '.2f')}",
            (at, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="#1a7f37",
            va="top",
            ha="left",
        )
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("event time (UTC)", fontsize=8)
    ax.set_ylabel("p99 ms", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.get_offset_text().set_fontsize(7)
    ax.set_title(
        "telemetry (event time); red: drift alarm, amber dashed: other request, green: version",
        fontsize=8,
    )
    return fig


def timeline_png(report: TenantReport, points: int) -> bytes:
    """`timeline_figure` as PNG bytes."""
    buffer = io.BytesIO()
    timeline_figure(report, points).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plain_summary(card: ModelCard) -> str | None:
    """The one-sentence summary of `kernel.model_report.summary` when that module is
    there (None otherwise, or when it fails: a sentence never costs the page)."""
    try:
        from kernel.model_report.summary import (  # type: ignore[import-not-found,unused-ignore]
            plain_summary as summarise,
        )
    except ImportError:
        return None
    try:
        sentence = summarise(card)
    except Exception:
        log.exception("no plain summary for this card")
        return None
    return sentence if isinstance(sentence, str) and sentence else None


@dataclass(frozen=True)
class Status:
    """The tenant's newest request: in flight, failed, or none."""

    kind: str
    reason: str = ""
    at: datetime | None = None


def _status(report: TenantReport) -> Status:
    pending = report.open_request
    if pending is not None:
        return Status("in_flight", pending.reason, pending.detected_at)
    if report.events.failed:
        failed = report.events.failed[-1]
        if not report.events.requests or (
            failed.request_event_id == report.events.requests[-1].event_id
        ):
            return Status("failed", failed.reason, failed.failed_at)
    return Status("none")


@dataclass
class TenantView:
    """What the templates show of one tenant (`n`: its place in the whole fleet)."""

    n: int
    report: TenantReport
    href: str
    status: Status
    flags: list[str]
    score: LiveScore | None
    holdout_error: float | None
    warning: dict[str, float | None]
    summary: str | None = None
    timeline: bytes = b""
    plots: list[tuple[str, str, bytes]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.report.label

    @property
    def bad(self) -> bool:
        live = self.report.live
        return bool(self.report.problem or (live and live.problem))


def _view(n: int, report: TenantReport, href: str) -> TenantView:
    card = report.card
    record = card.warning_record if card is not None else {}
    return TenantView(
        n=n,
        report=report,
        href=href,
        status=_status(report),
        flags=report.flags,
        score=report.live_score,
        holdout_error=holdout_error_rate(card) if card is not None else None,
        warning={name: _finite(record.get(name)) for name in WARNING_FIELDS},
    )


def _drawn(view: TenantView, points: int, draw: TimelineDrawer) -> TenantView:
    """The view with its pictures and summary: done only for the page that shows it."""
    report = view.report
    view.timeline = draw(report, points)
    live = report.live
    if live is not None and live.card is not None:
        view.summary = plain_summary(live.card)
        view.plots = [(k, PLOT_TITLES[k], live.plots[k]) for k in PLOT_KINDS if k in live.plots]
    return view


@dataclass(frozen=True)
class Pages:
    """The report's files: `index` is written at `output`; `pages` (file name -> page)
    beside it, empty when one page holds every tenant."""

    index: str
    pages: dict[str, str] = field(default_factory=dict)


def page_name(stem: str, number: int) -> str:
    """The file name of tenant page `number` (from 1) beside the index `stem`.html."""
    return f"{stem}-{number:03d}.html"


def render_report(
    reports: list[TenantReport],
    read: TopicRead,
    *,
    source: dict[str, str],
    generated_at: datetime,
    stem: str = "slaops-report",
    points: int = 300,
    refresh_s: float | None = None,
    per_page: int = PER_PAGE,
    draw_timeline: TimelineDrawer = timeline_png,
) -> Pages:
    """Every file of the report; `source` names where it came from (never a secret).

    `draw_timeline` draws each tenant's timeline (matplotlib: a tenant costs about
    0.1 s, most of a large report's time).
    """
    common = {
        "source": source,
        "generated_at": generated_at,
        "read": read,
        "refresh_s": refresh_s,
    }
    if len(reports) <= per_page:
        views = [
            _drawn(_view(n, r, f"#tenant-{n}"), points, draw_timeline)
            for n, r in enumerate(reports)
        ]
        page = _ENV.get_template("report_page.html.j2").render(
            title="slaops fleet report", tenants=views, nav=None, **common
        )
        return Pages(page)
    chunks = [reports[i : i + per_page] for i in range(0, len(reports), per_page)]
    names = [page_name(stem, k + 1) for k in range(len(chunks))]
    index_name = f"{stem}.html"
    everyone: list[TenantView] = []
    pages: dict[str, str] = {}
    template = _ENV.get_template("report_page.html.j2")
    first = 0
    for k, chunk in enumerate(chunks):
        views = [_view(first + i, r, f"#tenant-{first + i}") for i, r in enumerate(chunk)]
        nav = {
            "index": index_name,
            "number": k + 1,
            "total": len(chunks),
            "previous": names[k - 1] if k > 0 else None,
            "next": names[k + 1] if k + 1 < len(chunks) else None,
            "first": first + 1,
            "last": first + len(chunk),
            "tenants": len(reports),
        }
        pages[names[k]] = template.render(
            title=f"slaops fleet report, page {k + 1} of {len(chunks)}",
            tenants=[_drawn(v, points, draw_timeline) for v in views],
            nav=nav,
            **common,
        )
        for view in views:  # the index's rows link into this page; no pictures kept
            everyone.append(
                replace(view, href=f"{names[k]}#tenant-{view.n}", timeline=b"", plots=[])
            )
        first += len(chunk)
    listing = [
        {
            "number": k + 1,
            "href": names[k],
            "first_label": chunk[0].label,
            "last_label": chunk[-1].label,
        }
        for k, chunk in enumerate(chunks)
    ]
    index = _ENV.get_template("report_index.html.j2").render(
        title="slaops fleet report",
        tenants=everyone,
        pages=listing,
        flagged=sum(1 for v in everyone if v.flags),
        **common,
    )
    return Pages(index, pages)


def render_page(
    reports: list[TenantReport],
    read: TopicRead,
    *,
    source: dict[str, str],
    generated_at: datetime,
    points: int = 300,
    refresh_s: float | None = None,
) -> str:
    """All tenants on ONE page, however many (`render_report` pages them)."""
    return render_report(
        reports,
        read,
        source=source,
        generated_at=generated_at,
        points=points,
        refresh_s=refresh_s,
        per_page=max(1, len(reports)),
    ).index
