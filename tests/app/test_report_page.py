"""`slaops report` as a person sees it: one self-contained page, opened in headless Chromium.

A small fleet is built on the real broker and a file store (three tenants with
telemetry, requests, published versions, a drift alarm in flight, a failure, a kept
champion, and live forecasts of tenant-000's version that are all wrong), then
`slaops report` runs as a user runs it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from kernel.model_report import PLOT_KINDS
from kernel.store import open_store
from kernel.tenant_hash import tenant_hash
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.search import SearchConfig
from schemas import (
    ChampionKept,
    Forecast,
    InvalidTelemetry,
    RetrainFailed,
    RetrainRequested,
    parse_telemetry,
)
from simulator.model import TelemetrySimulator
from slaops.fleet_data import live_version
from testkit.factories import unique_name
from testkit.kafka_helpers import produce_all
from testkit.paths import ROOT
from testkit.retrain_data import request_for, tenant_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCREENSHOT = ROOT / "docs" / "report.png"
KEY = SecretStr("report-page-key-0123456789abcdef")
SEARCH = SearchConfig(
    grid={"lr": [1e-2, 1e-3], "module__hidden_layers": [0, 1], "module__width": [16]},
    n_jobs=1,
    max_epochs=10,
    n_splits=3,
)
#: Rows and seed of each tenant's training data: each makes a model that beats the baselines.
ROWS = {"tenant-000": (900, 5), "tenant-001": (1_000, 3), "tenant-002": (700, 211)}
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs Debian's `chromium`)"
)


@dataclass(frozen=True)
class Fleet:
    bootstrap: str
    topics: dict[str, str]
    store_uri: str
    tenants: tuple[str, ...]
    workdir: Path


@pytest.fixture(scope="module")
def fleet(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    workdir = tmp_path_factory.mktemp("report")
    topics = {
        role: unique_name(f"report-{role}")
        for role in ("telemetry", "retrain", "models", "decisions", "failures", "forecasts")
    }
    simulator = TelemetrySimulator(3, seed=11, interval_s=600.0, malformed_rate=0.01)
    telemetry = list(simulator.events(3 * 400))
    produce_all(bootstrap, topics["telemetry"], [(k, v) for k, v, _meta in telemetry])
    uri = f"file://{workdir / 'models'}"
    handler = RequestHandler(
        store=open_store(uri),
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SEARCH, min_rows=100),
        replay=lambda request: tenant_rows(ROWS[request.tenant][0], seed=ROWS[request.tenant][1]),
        topics=OutcomeTopics(
            models=topics["models"], failures=topics["failures"], decisions=topics["decisions"]
        ),
    )
    requests: list[RetrainRequested] = []
    answers: list[tuple[str, bytes, bytes]] = []

    def ask(tenant: str, at_event: int, reason: str = "cold_start") -> RetrainRequested:
        request = request_for(tenant, offset=at_event, reason=reason).model_copy(
            update={"detected_at": simulator.event_time(at_event * 3)}
        )
        requests.append(request)
        return request

    for tenant in simulator.tenants:
        outcome = handler.handle(ask(tenant, 200))
        assert outcome.kind == "published", (tenant, outcome)
        for topic, key, event in outcome.events:
            answers.append((topic, key, event.model_dump_json().encode()))
    ask("tenant-001", 330, "performance_drift")  # an alarm whose retrain is in flight
    failing = ask("tenant-002", 360, "data_drift")
    failed = RetrainFailed.model_validate(
        {
            "request_event_id": failing.event_id,
            "tenant": "tenant-002",
            "reason": "single_class",
            "detail": "training part has one class",
            "failed_at": simulator.event_time(1_100),
        }
    )
    kept = ChampionKept.model_validate(
        {
            "request_event_id": requests[0].event_id,
            "tenant": "tenant-000",
            "reason": "cold_start",
            "decision": {
                "published": False,
                "rule": "holdout_log_loss",
                "challenger_score": 0.5,
                "champion_score": 0.4,
                "verdict": "champion_better",
            },
            "challenger_metrics": {"f1": 0.4},
            "champion_revision": "c" * 40,
            "decided_at": simulator.event_time(1_000) + timedelta(minutes=1),
        }
    )
    answers.append((topics["failures"], b"tenant-002", failed.model_dump_json().encode()))
    answers.append((topics["decisions"], b"tenant-000", kept.model_dump_json().encode()))
    produce_all(
        bootstrap,
        topics["retrain"],
        [(r.tenant.encode(), r.model_dump_json().encode()) for r in requests],
    )
    for topic in {t for t, _k, _v in answers}:
        produce_all(bootstrap, topic, [(k, v) for t, k, v in answers if t == topic])
    produce_all(bootstrap, topics["forecasts"], wrong_forecasts(uri, "tenant-000", telemetry))
    return Fleet(bootstrap, topics, uri, simulator.tenants, workdir)


def wrong_forecasts(
    uri: str, tenant: str, telemetry: Sequence[tuple[bytes, bytes, Any]]
) -> list[tuple[bytes, bytes]]:
    """A forecast of the tenant's live version at each of its events, each one wrong:
    0 before a breach within the horizon, 1 before none."""
    live = live_version(open_store(uri), tenant_hash(tenant, KEY))
    assert live is not None and live.card is not None
    horizon = live.card.horizon
    stamps: list[tuple[Any, bool]] = []
    for key, value, _meta in telemetry:
        try:
            event = parse_telemetry(key, value)
        except InvalidTelemetry:
            continue  # the simulator's malformed records, which the report skips too
        if event.tenant == tenant:
            stamps.append((event.ts, event.sla_breached))
    out = []
    for i, (ts, _breached) in enumerate(stamps):
        coming = any(b for _ts, b in stamps[i + 1 : i + 1 + horizon])
        forecast = Forecast(
            tenant=tenant,
            ts=ts,
            horizon=horizon,
            probability=0.0 if coming else 1.0,
            breach_expected=not coming,
            model_revision=live.revision,
            model_version=live.version,
        )
        out.append((tenant.encode(), forecast.model_dump_json().encode()))
    return out


def report_command(fleet: Fleet, output: Path, *flags: str, key: bool = True) -> list[str]:
    args = [sys.executable, "-m", "slaops.cli", "report", "--store", fleet.store_uri]
    for role, topic in fleet.topics.items():
        args += [f"--{role}-topic", topic]
    args += ["--output", str(output), "--idle-s", "1.5", *flags]
    if key:
        args += ["--tenant-key", KEY.get_secret_value()]
    return args


def environment(fleet: Fleet) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLAOPS_")}
    return {**env, "KAFKA_BOOTSTRAP_SERVERS": fleet.bootstrap}


def write_report(fleet: Fleet, name: str, *, key: bool = True) -> tuple[str, float]:
    output = fleet.workdir / name
    started = time.monotonic()
    result = subprocess.run(
        report_command(fleet, output, key=key),
        env=environment(fleet),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(output.resolve()) in result.stdout
    return output.read_text(), seconds


@pytest.fixture(scope="module")
def page(fleet: Fleet) -> str:
    html, seconds = write_report(fleet, "report.html")
    print(f"report: {len(html):,} bytes in {seconds:.1f} s")  # noqa: T201 - in the test log
    return html


class _Page(HTMLParser):
    """The tenants, version rows, plots and every external reference of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tenants: list[str] = []
        self.versions: dict[str, int] = {}
        self.plots: dict[str, list[dict[str, str]]] = {}
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for name in ("src", "href"):
            value = a.get(name, "")
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        if tag == "script":
            self.scripts += 1
        if tag == "section" and "data-tenant" in a:
            self.tenants.append(a["data-tenant"])
            self.versions[a["data-tenant"]] = 0
            self.plots[a["data-tenant"]] = []
        if self.tenants and tag == "tr" and "data-version" in a:
            self.versions[self.tenants[-1]] += 1
        if self.tenants and tag == "img":
            self.plots[self.tenants[-1]].append(a)


def parse(html: str) -> _Page:
    parsed = _Page()
    parsed.feed(html)
    return parsed


def test_the_page_is_self_contained_and_shows_every_tenant_with_versions_and_plots(
    fleet: Fleet, page: str
) -> None:
    parsed = parse(page)
    assert parsed.external == [] and parsed.scripts == 0
    assert not re.search(r"url\(|@import|https?://", page.split("<main>")[0].split("<style>")[1])
    assert parsed.tenants == list(fleet.tenants)
    for tenant in fleet.tenants:
        assert parsed.versions[tenant] >= 1, tenant
        kinds = [img["data-plot"] for img in parsed.plots[tenant]]
        assert kinds == ["timeline", *PLOT_KINDS], tenant
    assert "(published with it)" in page  # the plots are the published ones, not redrawn
    assert "in flight: performance_drift" in page and "failed: single_class" in page
    assert f"store: <code>{fleet.store_uri}</code>" in page
    assert f"bootstrap: <code>{fleet.bootstrap}</code>" in page and "generated 20" in page
    assert KEY.get_secret_value() not in page


def entry(page: str, tenant: str) -> str:
    return page.split(f'data-tenant="{tenant}">')[-1].split("</section>")[0]


def test_a_model_whose_live_error_rate_is_above_its_holdout_is_flagged_with_its_live_skill(
    fleet: Fleet, page: str
) -> None:
    """tenant-000's forecasts are all wrong: scored on the telemetry read, its live error
    rate is 100 %, flagged beside the holdout's, and its live skill is below zero."""
    wrong = entry(page, "tenant-000")
    assert re.search(r"live error rate 100\.0% is above the holdout&#39;s \d+\.\d%", wrong)
    skill = re.search(r"live log-loss skill vs prior</td><td class=\"num\">([^<]+)<", wrong)
    assert skill is not None and float(skill.group(1)) < 0
    for tenant in ("tenant-001", "tenant-002"):  # no forecasts read: no live figures
        assert "live error rate" not in entry(page, tenant).split("<table")[0]
        assert re.search(r"scored</td><td class=\"num\">0<", entry(page, tenant))
    # every tenant's warning record, from its card
    for tenant in fleet.tenants:
        assert "warning record (out of fold, from the card)" in entry(page, tenant)
        assert "recall at lead &ge; 1" in entry(page, tenant)
    # both time bases are named: the timeline is on event time, the retrainer's acts on
    # the wall clock
    assert "trained (wall clock)" in page and "last drift alarm (event time)" in page


def test_without_the_tenant_key_tenants_are_shown_by_hash_only(fleet: Fleet) -> None:
    html, _seconds = write_report(fleet, "report-nokey.html", key=False)
    parsed = parse(html)
    assert "tenant-00" not in html
    hashes = {tenant_hash(t, KEY)[:16] for t in fleet.tenants}
    assert set(parsed.tenants) == hashes
    assert all(parsed.versions[h] >= 1 for h in hashes)


_CHECK = """<script>
window.__errors = [];
window.addEventListener("error",
  e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener("load", () => {
  for (const img of document.images) img.dataset.naturalWidth = String(img.naturalWidth);
  document.body.dataset.errors = JSON.stringify(window.__errors);
});
</script>"""


def chromium(*args: str, timeout_s: float = 90.0) -> tuple[str, str]:
    """Run headless Chromium in its own process group; the group is killed if it hangs.

    Each run has a profile directory of its own: runs on other pytest-xdist workers
    would otherwise share (and lock) the user's default profile.
    """
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return _chromium(profile, *args, timeout_s=timeout_s)


def _chromium(profile: str, *args: str, timeout_s: float) -> tuple[str, str]:
    assert CHROMIUM is not None
    flags = [
        f"--user-data-dir={profile}",
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--enable-logging=stderr",
        "--v=0",
    ]
    process = subprocess.Popen(
        [CHROMIUM, *flags, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == 0, err[-2000:]
    return out, err


@needs_chromium
def test_in_headless_chromium_every_tenant_has_a_version_and_loaded_plots_and_no_errors(
    fleet: Fleet, page: str, tmp_path: Path
) -> None:
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + _CHECK, 1))
    dom, log = chromium(
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        checked.as_uri(),
    )
    parsed = parse(dom)
    assert parsed.tenants == list(fleet.tenants)
    for tenant in fleet.tenants:
        assert parsed.versions[tenant] >= 1, tenant
        widths = {
            img["data-plot"]: int(img.get("data-natural-width", "0"))
            for img in parsed.plots[tenant]
        }
        assert set(widths) == {"timeline", *PLOT_KINDS}, tenant
        assert all(width > 0 for width in widths.values()), (tenant, widths)
    errors = re.search(r'data-errors="([^"]*)"', dom)
    assert errors is not None and json.loads(errors.group(1).replace("&quot;", '"')) == []
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert console == [], console


@needs_chromium
def test_the_readme_screenshot_is_the_report_page(page: str, tmp_path: Path) -> None:
    """Chromium's screenshot of the page; SLAOPS_UPDATE_SCREENSHOT=1 refreshes docs/."""
    html = tmp_path / "report.html"
    html.write_text(page)
    shot = tmp_path / "shot.png"
    chromium(
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--window-size=1200,900",
        f"--screenshot={shot}",
        html.as_uri(),
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000
    if os.environ.get("SLAOPS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size < 300_000
    assert "docs/report.png" in (ROOT / "README.md").read_text()


def test_serve_answers_on_loopback_and_stops_cleanly(fleet: Fleet) -> None:
    output = fleet.workdir / "served.html"
    process = subprocess.Popen(
        report_command(fleet, output, "--serve", "--port", "0", "--refresh-s", "5"),
        env=environment(fleet),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the first page is ready
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match is not None, line + (process.stderr.read() if process.stderr else "")
        url = match.group(0)
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            body = response.read().decode()
            assert response.status == 200
        assert parse(body).tenants == list(fleet.tenants)
        assert '<meta http-equiv="refresh" content="5">' in body
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url + "elsewhere", timeout=10)  # noqa: S310
        assert output.is_file()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        assert process.returncode in (0, 130)  # 130: the CLI's status after Ctrl-C
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_a_refused_host_names_the_setting(fleet: Fleet) -> None:
    result = subprocess.run(
        report_command(fleet, fleet.workdir / "x.html", "--serve", "--host", "0.0.0.0"),  # noqa: S104
        env=environment(fleet),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "host (SLAOPS_HOST or --host)" in result.stderr
    assert "loopback" in result.stderr


def _png_pixels_vary(data: bytes) -> bool:
    import io

    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    return float(np.asarray(pixels[..., :3]).std()) > 0.05


def test_every_embedded_image_is_a_non_blank_png(page: str) -> None:
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 * (1 + len(PLOT_KINDS))
    assert all(_png_pixels_vary(base64.b64decode(b)) for b in images)
    assert len(page) < 3_000_000
