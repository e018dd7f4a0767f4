"""The Grafana dashboard compose provisions (`deploy/grafana/dashboards/slaops.json`).

Every panel says what its numbers are (a unit) and where they turn bad (thresholds,
drawn on time series); each scrape job Prometheus has gets an `up` panel, so a stopped
service shows as down rather than as "No data"; every metric family the services
export is on a panel or in `NOT_SHOWN` with the reason; and every query is PromQL that
promtool accepts (each one written as a recording rule and checked with `promtool check
rules`, Prometheus 2.42's own parser).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.metric_families import exported_families, series_of
from testkit.paths import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "slaops.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMTOOL = shutil.which("promtool")

#: Families on no panel, each with the reason a person would not watch it.
NOT_SHOWN = {
    "slaops_retrainer_fits": (
        "the searches' cost, fixed by the search space and the folds "
        "(search_space, cv_folds); the time it takes is on the search time panel"
    ),
}
#: Grafana unit ids the dashboard may use; `suffix:TEXT` is Grafana's custom unit.
UNITS = {"none", "short", "s", "ops", "percentunit", "bytes"}


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    assert panels
    return panels


def _queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query."""
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def _jobs() -> list[str]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return [job["job_name"] for job in config["scrape_configs"]]


@pytest.mark.parametrize("panel", _panels(), ids=lambda p: p["title"])
def test_every_panel_has_a_unit_and_thresholds(panel: dict[str, Any]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults.get("unit", "")
    assert unit in UNITS or re.fullmatch(r"suffix:\S+", unit), f"unit {unit!r}"
    thresholds = defaults.get("thresholds") or {}
    assert thresholds.get("mode") == "absolute"
    steps = thresholds["steps"]
    # A base colour, then at least one level where the colour changes.
    assert len(steps) >= 2 and steps[0]["value"] is None, steps
    levels = [step["value"] for step in steps[1:]]
    assert all(isinstance(v, int | float) for v in levels) and levels == sorted(levels)
    assert len({step["color"] for step in steps}) == len(steps), "each level its own colour"
    if panel["type"] == "timeseries":  # drawn, not just kept in the model
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
    else:
        assert defaults["color"]["mode"] == "thresholds"
    assert panel["description"], "say what the panel shows and why its thresholds"


@pytest.mark.parametrize("job", _jobs())
def test_an_up_panel_per_scrape_job(job: str) -> None:
    up = re.compile(rf"\bup\{{job=\"{re.escape(job)}\"\}}")
    panels = [p for p in _panels() if any(up.search(t["expr"]) for t in p["targets"])]
    assert panels, f"no panel shows up{{job={job!r}}}"
    (panel,) = panels
    # Down is red: below 1 is the threshold's base colour.
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["color"] == "red" and steps[1] == {"color": "green", "value": 1}


def test_both_services_have_an_up_panel() -> None:
    # The scrape config names both; a job renamed there must not lose its panel.
    assert {"slaops-consumer", "slaops-retrainer"} <= set(_jobs())


def test_every_exported_family_is_on_a_panel_or_says_why_not() -> None:
    families = exported_families()
    text = " ".join(expr for _title, expr in _queries())
    queried = set(re.findall(r"\bslaops_\w+", text))
    missing = []
    for name, kind in sorted(families.items()):
        shown = bool(queried & set(series_of(name, kind)))
        if name in NOT_SHOWN:
            assert not shown, f"{name} is on a panel: drop it from NOT_SHOWN"
            assert len(NOT_SHOWN[name]) > 20, f"{name}: say why it is not shown"
        elif not shown:
            missing.append(name)
    assert not missing, f"families on no panel and not in NOT_SHOWN: {missing}"
    assert set(NOT_SHOWN) <= set(families), "NOT_SHOWN names a family no service exports"


def test_warnings_raised_and_cleared_have_a_panel() -> None:
    for title, needed in (
        ("raised", "slaops_consumer_warnings_raised_total"),
        ("cleared", "slaops_consumer_warnings_cleared_total"),
    ):
        panels = [p for p in _panels() if any(needed in t["expr"] for t in p["targets"])]
        assert panels and title in panels[0]["title"].lower(), needed


def test_no_query_reads_created_series() -> None:
    # The services export no `_created` series (kernel.observability turns them off).
    assert not [expr for _title, expr in _queries() if "_created" in expr]


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (CI installs Debian's `prometheus`)"
)
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    queries = _queries()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_title, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run(  # noqa: S603
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout, result.stdout
