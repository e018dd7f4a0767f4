"""The fleet report past one page: 1,000 tenants, an index with a search box, ten pages.

No broker: the reports are built here as `build_reports` builds them (a `TopicRead` of
telemetry and live forecasts per tenant, each with a live version whose card is a real
format-3 card), and rendered and written as `slaops report` does. What is judged: every
tenant is on exactly one page and on the index, which links it; a model that does not
beat a baseline or a rule, or whose live error rate is above its holdout's, is flagged;
live skill and the warning record are shown; the index's search box filters in
headless Chromium. Each tenant's timeline here is one fixed picture: matplotlib draws
a real one in about 0.1 s a tenant, too slow for 1,000 in a test (test_report_page.py
checks the real ones).
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kernel.artifacts import ModelCard
from kernel.model_report import PLOT_KINDS
from slaops.fleet_data import (
    MIN_SCORED,
    LiveVersion,
    TenantEvents,
    TenantReport,
    TopicRead,
    live_score,
    model_flags,
)
from slaops.fleet_html import Pages, page_name, render_report, timeline_figure
from slaops.fleet_report import ReportSettings, _Page, page_server, write_page
from testkit.warning_models import p99_artifacts
from tests.app.test_report_page import CHROMIUM, chromium, needs_chromium

TENANTS = 1_000
START = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
STEP_S = 60.0
EVENTS = 240
HORIZON = 6
#: tn, fp, fn, tp of every card's holdout: a 10 % error rate.
HOLDOUT = {"tn": 800.0, "fp": 50.0, "fn": 50.0, "tp": 100.0}


def _tiny_png() -> bytes:
    fig = Figure(figsize=(1.0, 0.5), dpi=20)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("#1f6feb")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


PNG = _tiny_png()


@pytest.fixture(scope="module")
def base_card() -> ModelCard:
    return p99_artifacts(horizon=HORIZON).card_model


def card_for(base: ModelCard, n: int) -> ModelCard:
    """Tenant n's card: every 7th does not beat persistence, every 13th loses to a rule."""
    skill = {
        "log_loss_skill_vs_prior": 0.30,
        "log_loss_skill_vs_persistence": -0.05 if n % 7 == 3 else 0.20,
        "log_loss_skill_vs_logistic": 0.05,
    }
    rules = {
        "level": {"input": "log1p_latency_p99_ms", "log_loss": 0.15 if n % 13 == 5 else 0.4},
        "prior": {"input": None, "log_loss": 0.5},
    }
    warning = {
        **base.warning,
        "out_of_fold": {
            "fresh_onsets": 40,
            "recall_lead_1": 0.625,
            "recall_lead_3": 0.4,
            "median_lead": 4.0,
            "notifications": 30,
            "false_warnings": 6,
            "false_per_day": 0.5,
            "days": 12.0,
        },
    }
    metrics = {"log_loss": 0.2, "f1": 0.7, "positive_rate": 0.2, **HOLDOUT}
    return base.model_copy(
        update={"metrics": metrics, "skill": skill, "rules": rules, "warning": warning}
    )


def events_for(n: int, revision: str) -> TenantEvents:
    """A breach every 10th interval; the live forecasts say so 6 intervals ahead (right),
    except every 11th tenant's, which say the opposite (wrong: live error above holdout)."""
    ts = [START + STEP_S * i for i in range(EVENTS)]
    breached = [i % 10 == 9 for i in range(EVENTS)]
    events = TenantEvents(ts=ts, p99=[100.0 + 50 * b for b in breached], breached=breached)
    for i in range(EVENTS):
        coming = any(breached[i + 1 : i + 1 + HORIZON])
        right = 0.9 if coming else 0.1
        events.forecast_ts.append(ts[i])
        events.forecast_p.append(1.0 - right if n % 11 == 4 else right)
        events.forecast_h.append(HORIZON)
        events.forecast_revision.append(revision)
    return events


def fleet(base: ModelCard, count: int = TENANTS) -> tuple[list[TenantReport], TopicRead]:
    read = TopicRead(records={"telemetry": count * EVENTS, "forecasts": count * EVENTS})
    reports = []
    for n in range(count):
        label = f"tenant-{n:04d}"
        revision = f"{n:040x}"
        read.tenants[label] = events = events_for(n, revision)
        plots = dict.fromkeys(PLOT_KINDS, PNG)
        live = LiveVersion(revision, 1, card_for(base, n), plots, plots_from_store=True)
        reports.append(TenantReport(label, f"{n:064x}", events, live))
    return reports, read


def fixed_timeline(report: TenantReport, points: int) -> bytes:
    return PNG


class _Doc(HTMLParser):
    """Tenant sections, index rows, links, scripts and flags of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.ids: set[str] = set()
        self.rows: list[dict[str, str]] = []
        self.links: list[str] = []
        self.sources: list[str] = []
        self.scripts = 0
        self.inputs: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section" and "data-tenant" in a:
            self.sections.append(a["data-tenant"])
        if tag == "tr" and "data-tenant" in a:
            self.rows.append(a)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if "src" in a:
            self.sources.append(a["src"])
        if tag == "script":
            self.scripts += 1
        if tag == "input":
            self.inputs.append(a)


def doc(html: str) -> _Doc:
    parsed = _Doc()
    parsed.feed(html)
    return parsed


@pytest.fixture(scope="module")
def report(base_card: ModelCard) -> tuple[list[TenantReport], Pages, float]:
    reports, read = fleet(base_card)
    started = time.perf_counter()
    pages = render_report(
        reports,
        read,
        source={"bootstrap": "127.0.0.1:9092", "store": "file:///x"},
        generated_at=datetime.now(UTC),
        stem="fleet",
        draw_timeline=fixed_timeline,
    )
    seconds = time.perf_counter() - started
    print(f"1,000 tenants rendered in {seconds:.1f} s")  # noqa: T201 - in the test log
    return reports, pages, seconds


def test_past_100_tenants_an_index_links_one_page_per_100_each_tenant_on_one(
    report: tuple[list[TenantReport], Pages, float],
) -> None:
    reports, pages, seconds = report
    assert list(pages.pages) == [page_name("fleet", k) for k in range(1, 11)]
    index = doc(pages.index)
    assert [row["data-tenant"] for row in index.rows] == [r.label for r in reports]
    assert index.sections == []  # the index holds rows, the pages hold the entries
    assert index.scripts == 1 and [i.get("id") for i in index.inputs] == ["search"]
    seen: list[str] = []
    targets: dict[str, set[str]] = {}
    for k, (name, html) in enumerate(pages.pages.items()):
        page = doc(html)
        targets[name] = page.ids
        assert page.scripts == 0
        assert page.sections == [r.label for r in reports[100 * k : 100 * (k + 1)]]
        seen += page.sections
        assert "fleet.html" in page.links  # back to the index
        for src in page.sources:
            assert src.startswith("data:image/png;base64,"), src
    assert seen == [r.label for r in reports]
    # every link on the index is to a page of this report and an entry on it
    for link in index.links:
        name, _hash, anchor = link.partition("#")
        assert name in targets, link
        assert not anchor or anchor in targets[name], link
    assert sum(1 for link in index.links if "#tenant-" in link) == len(reports)
    assert not re.search(r"https?://", pages.index + "".join(pages.pages.values()))
    assert seconds < 20


def test_a_model_that_loses_to_a_baseline_or_a_rule_or_errs_more_live_is_flagged(
    report: tuple[list[TenantReport], Pages, float],
) -> None:
    reports, pages, _seconds = report
    index = doc(pages.index)
    flagged = {r["data-tenant"] for r in index.rows if "flagged" in r.get("class", "").split()}
    expected = {r.label for n, r in enumerate(reports) if n % 7 == 3 or n % 13 == 5 or n % 11 == 4}
    assert flagged == expected
    page = pages.pages[page_name("fleet", 1)]
    entry = lambda n: page.split(f'id="tenant-{n}"')[1].split("</section>")[0]  # noqa: E731
    assert "does not beat the persistence baseline (log-loss skill -0.050)" in entry(3)
    assert "does not beat the level rule (log-loss skill -0.333)" in entry(5)
    assert "live error rate 100.0% is above the holdout&#39;s 10.0%" in entry(4)
    assert "<ul" not in entry(0) and "data-flags" not in entry(0)
    # live skill and the warning record, per tenant
    assert "live log-loss skill vs prior" in entry(0)
    assert "62% / 40%" in entry(0) and "0.50 (12.0)" in entry(0)


def test_live_score_counts_what_the_telemetry_shows_after_each_forecast(
    base_card: ModelCard,
) -> None:
    card = card_for(base_card, 0)
    live = LiveVersion("r" * 40, 1, card)
    right = live_score(events_for(0, live.revision), live)
    wrong = live_score(events_for(4, live.revision), live)
    assert right is not None and wrong is not None
    # the newest HORIZON forecasts are still open
    assert right.forecasts == EVENTS and right.scored == EVENTS - HORIZON
    assert right.errors == 0 and wrong.errors == wrong.scored
    assert right.skill_vs_prior is not None and right.skill_vs_prior > 0.5
    assert wrong.skill_vs_prior is not None and wrong.skill_vs_prior < 0
    # another revision's forecasts are not the live version's
    other = live_score(events_for(0, "o" * 40), live)
    assert other is not None and other.forecasts == 0 and other.error_rate is None
    assert model_flags(card, right) == []
    few = events_for(4, live.revision)
    keep = MIN_SCORED - 1
    few.forecast_ts, few.forecast_p = few.forecast_ts[:keep], few.forecast_p[:keep]
    few.forecast_h, few.forecast_revision = few.forecast_h[:keep], few.forecast_revision[:keep]
    assert model_flags(card, live_score(few, live)) == []  # too few scored to judge


def test_hostile_names_and_values_are_escaped(base_card: ModelCard) -> None:
    reports, read = fleet(base_card, 3)
    label = '<script>alert("x")</script>'
    hostile = reports[0]
    hostile.label = label
    hostile.problem = "<img src=x onerror=alert(1)>"
    pages = render_report(
        reports,
        read,
        source={"store": "<b>"},
        generated_at=datetime.now(UTC),
        draw_timeline=fixed_timeline,
    )
    assert "<script>" not in pages.index and "<img src=x" not in pages.index
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages.index
    assert "<code>&lt;b&gt;</code>" in pages.index


def test_the_timeline_s_time_axis_names_its_base(base_card: ModelCard) -> None:
    reports, _read = fleet(base_card, 1)
    figure = timeline_figure(reports[0], 100)
    assert figure.axes[0].get_xlabel() == "event time (UTC)"


def test_serve_answers_the_index_at_the_root_and_each_page_by_its_name(
    report: tuple[list[TenantReport], Pages, float],
) -> None:
    _reports, pages, _seconds = report
    server = page_server(ReportSettings(host="127.0.0.1", port=0), _Page(pages), timeout_s=5.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            assert response.read().decode() == pages.index
        name = page_name("fleet", 7)
        with urllib.request.urlopen(url + name, timeout=10) as response:  # noqa: S310
            assert response.read().decode() == pages.pages[name]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url + page_name("fleet", 11), timeout=10)  # noqa: S310
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


_SEARCH = """<script>
window.addEventListener("load", () => {
  const rows = () => document.querySelectorAll("#fleet tr[data-tenant]");
  const visible = () => Array.from(rows()).filter(r => !r.hidden).map(r => r.dataset.tenant);
  const box = document.getElementById("search");
  const before = visible().length;
  box.value = "TENANT-042";
  box.dispatchEvent(new Event("input"));
  const found = visible();
  box.value = "";
  box.dispatchEvent(new Event("input"));
  document.body.dataset.search = JSON.stringify({
    rows: rows().length, before, found, after: visible().length,
    shown: document.getElementById("shown").textContent,
  });
});
</script>"""


@needs_chromium
def test_in_headless_chromium_the_index_searches_and_a_page_loads(
    report: tuple[list[TenantReport], Pages, float], tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    _reports, pages, _seconds = report
    output = tmp_path / "out" / "fleet.html"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / page_name("fleet", 11)).write_text("a previous, larger report's page")
    assert write_page(ReportSettings(output=output), pages) == output
    files = sorted(p.name for p in output.parent.iterdir())
    assert files == sorted(["fleet.html", *pages.pages])  # one folder; the stale page gone
    checked = output.with_name("checked.html")
    checked.write_text(output.read_text().replace("</body>", _SEARCH + "</body>", 1))
    started = time.monotonic()
    dom, _log = chromium("--virtual-time-budget=5000", "--dump-dom", checked.as_uri())
    found = re.search(r'data-search="([^"]*)"', dom)
    assert found is not None, dom[-2000:]
    search = json.loads(found.group(1).replace("&quot;", '"'))
    assert search["rows"] == TENANTS and search["before"] == TENANTS
    assert search["found"] == [f"tenant-{n:04d}" for n in range(420, 430)]
    assert search["after"] == TENANTS and search["shown"] == str(TENANTS)
    page = output.with_name(page_name("fleet", 5))
    dom, _log = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert doc(dom).sections == [f"tenant-{n:04d}" for n in range(400, 500)]
    assert time.monotonic() - started < 30
