"""The fleet report as ONE self-contained HTML page: inline CSS, images as data: URIs.

No script, no font, no stylesheet or image from anywhere else, so the page opens the
same from a file, an e-mail or an air-gapped laptop. Every value that came from a topic
or the store is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import math
from datetime import UTC, datetime
from html import escape

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

from kernel.model_report import PLOT_KINDS, PLOT_TITLES
from slaops.fleet_data import TenantReport, TopicRead, downsample

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
header{background:#24292f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#d0d7de;font-size:12px}main{padding:16px 24px}
table{border-collapse:collapse;background:#fff;margin:8px 0 16px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;font-size:13px}
th{background:#eaeef2}td.num{text-align:right;font-variant-numeric:tabular-nums}
section.tenant{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 16px;
margin:16px 0}.plots{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0}figcaption{font-size:12px;color:#57606a}img{max-width:100%;height:auto}
.bad{color:#cf222e}.ok{color:#1a7f37}.muted{color:#57606a}code{font-size:12px}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, kind: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{escape(alt)}" data-plot="{escape(kind)}">'


def _num(value: float | None, spec: str = ".3f") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return format(value, spec)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def timeline_png(report: TenantReport, points: int) -> bytes:
    """Telemetry (downsampled p99 latency and breach rate) with alarms, requests, versions.

    All on event time: a version is drawn at its request's `detected_at` (the newest
    event it could have learnt from), its label naming version and out-of-fold F1.
    """
    events = report.events
    t, p99, rate = downsample(events.ts, events.p99, events.breached, points)
    fig = Figure(figsize=(9.0, 2.6), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
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
    ax.set_ylabel("p99 ms", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(
        "telemetry (event time); red: drift alarm, amber dashed: other request, green: version",
        fontsize=8,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _status(report: TenantReport) -> str:
    pending = report.open_request
    if pending is not None:
        return f"in flight: {escape(pending.reason)} since {_when(pending.detected_at)}"
    if report.events.failed:
        failed = report.events.failed[-1]
        if not report.events.requests or (
            failed.request_event_id == report.events.requests[-1].event_id
        ):
            return f'<span class="bad">failed: {escape(failed.reason)}</span>'
    return '<span class="muted">none</span>'


def _fleet_row(n: int, report: TenantReport) -> str:
    live = report.live
    card = live.card if live is not None else None
    skill = card.skill if card is not None else {}
    alarm = report.last_alarm
    cells = [
        f'<td><a href="#tenant-{n}">{escape(report.label)}</a></td>',
        "<td>-</td>"
        if live is None
        else f"<td>v{live.version} <code>{escape(live.revision[:12])}</code></td>",
        f"<td>{_when(report.trained_at)}</td>",
        "<td>-</td>"
        if card is None
        else f"<td>{escape(str(card.lineage.get('reason', '?')))}</td>",
        f'<td class="num">{_num(card.metrics.get("f1") if card else None)}</td>',
        *(
            f'<td class="num">{_num(skill.get(f"log_loss_skill_vs_{b}"), "+.3f")}</td>'
            for b in ("prior", "persistence", "logistic")
        ),
        "<td>-</td>"
        if alarm is None
        else f"<td>{escape(alarm.reason)} {_when(alarm.detected_at)}</td>",
        f"<td>{_status(report)}</td>",
    ]
    row_class = ' class="bad"' if report.problem or (live and live.problem) else ""
    return f"<tr{row_class}>{''.join(cells)}</tr>"


def _tenant_section(n: int, report: TenantReport, points: int) -> str:
    parts = [f'<section class="tenant" id="tenant-{n}" data-tenant="{escape(report.label)}">']
    parts.append(f"<h2>{escape(report.label)}</h2>")
    if report.problem:
        parts.append(f'<p class="bad">{escape(report.problem)}</p>')
    parts.append(_img(timeline_png(report, points), f"timeline of {report.label}", "timeline"))
    rows = []
    for model in report.events.models:
        is_live = report.live is not None and model.revision == report.live.revision
        rows.append(
            f"<tr data-version><td>v{model.model_version}{' (live)' if is_live else ''}</td>"
            f"<td><code>{escape(model.revision[:12])}</code></td>"
            f"<td>{escape(model.reason)}</td><td>{_when(model.published_at)}</td>"
            f'<td class="num">{_num(model.metrics.get("f1"))}</td>'
            f'<td class="num">{_num(model.metrics.get("log_loss"), ".4f")}</td></tr>'
        )
    for kept in report.events.kept:
        rows.append(
            f"<tr><td>kept</td><td>-</td><td>{escape(kept.reason)}</td>"
            f"<td>{_when(kept.decided_at)}</td>"
            f'<td class="num">{_num(kept.challenger_metrics.get("f1"))}</td>'
            f"<td>{escape(kept.decision.verdict)}</td></tr>"
        )
    parts.append(
        "<table><tr><th>version</th><th>revision</th><th>why</th><th>when</th>"
        "<th>out-of-fold F1</th><th>log loss</th></tr>" + "".join(rows) + "</table>"
        if rows
        else '<p class="muted">no version announced</p>'
    )
    live = report.live
    if live is not None and live.card is not None:
        source = "published with it" if live.plots_from_store else "re-rendered from its card"
        parts.append(f"<h3>Model report of v{live.version} <small>({source})</small></h3>")
        parts.append('<div class="plots">')
        for kind in PLOT_KINDS:
            if kind in live.plots:
                title = PLOT_TITLES[kind]
                parts.append(
                    f"<figure>{_img(live.plots[kind], title, kind)}"
                    f"<figcaption>{escape(title)}</figcaption></figure>"
                )
        parts.append("</div>")
    elif live is not None and live.problem:
        parts.append(f'<p class="bad">{escape(live.problem)}</p>')
    parts.append("</section>")
    return "".join(parts)


def render_page(
    reports: list[TenantReport],
    read: TopicRead,
    *,
    source: dict[str, str],
    generated_at: datetime,
    points: int = 300,
    refresh_s: float | None = None,
) -> str:
    """The whole page; `source` names where it came from (never a secret)."""
    refresh = "" if refresh_s is None else f'<meta http-equiv="refresh" content="{refresh_s:g}">'
    origin = " · ".join(f"{escape(k)}: <code>{escape(v)}</code>" for k, v in source.items())
    records = sum(read.records.values())
    dropped = (
        f", {read.tenants_dropped:,} records of tenants over the limit"
        if read.tenants_dropped
        else ""
    )
    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>slaops fleet report</title>{refresh}<style>{_CSS}</style></head><body>"
        f"<header><h1>slaops fleet report</h1><p>generated {_when(generated_at)} from "
        f"{origin}</p><p>{records:,} records read ({read.unreadable:,} unreadable, "
        f"{read.out_of_time:,} telemetry events skipped for their time, "
        f"stopped: {escape(read.stopped_by)}){dropped}</p></header><main>"
    )
    fleet = (
        "<h2>Fleet</h2><table><tr><th>tenant</th><th>live version</th><th>trained</th>"
        "<th>why</th><th>out-of-fold F1</th><th>log-loss skill vs prior</th><th>vs persistence</th>"
        "<th>vs logistic</th><th>last drift alarm</th><th>request</th></tr>"
        + "".join(_fleet_row(n, r) for n, r in enumerate(reports))
        + "</table>"
    )
    if not reports:
        fleet += '<p class="muted">no tenant seen on the topics</p>'
    sections = "".join(_tenant_section(n, r, points) for n, r in enumerate(reports))
    return head + fleet + sections + "</main></body></html>\n"
