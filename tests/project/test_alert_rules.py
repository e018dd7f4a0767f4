"""The alert rules of `deploy/prometheus/rules/`, checked and unit-tested by promtool.

`promtool test rules` runs `slaops_test.yml`'s series through the rules, with cases
that fire and cases that must stay silent; `promtool check rules` and `promtool check
config` check what compose's Prometheus loads. Beyond promtool: every rule carries the
annotations an on-call engineer needs, its runbook section exists, and it queries only
series the services export.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.paths import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "slaops.yml"
RULE_TESTS = PROMETHEUS / "rules" / "slaops_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (CI installs Debian's `prometheus`)"
)

#: What the issue asks an alert for, by the rule that gives it.
EXPECTED_ALERTS = {
    "SlaopsTargetDown",  # a target down
    "SlaopsNotReady",  # not ready for 5 minutes
    "SlaopsConsumerLagGrowing",  # consumer lag growing for 10 minutes
    "SlaopsModelFollowerStalled",  # the model follower stalled
    "SlaopsRetrainFailures",  # retrain failures by rate
    "SlaopsStoreErrors",  # store errors by rate
    "SlaopsDeadLetterRateHigh",  # dead letters over a threshold
    "SlaopsLiveErrorAboveHoldout",  # live error rate above holdout's by a margin
    "SlaopsTenantsOverWarningBudget",  # tenants over their false-warning budget
}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(  # noqa: S603
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_checks_the_rules_and_the_config_that_loads_them() -> None:
    rules = _promtool("check", "rules", str(RULES), cwd=ROOT)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert config.returncode == 0, config.stdout + config.stderr
    # The config loads this rule file (promtool checks it again through the config).
    assert f"Checking {RULES.relative_to(PROMETHEUS)}" in config.stdout


def test_the_config_loads_the_rules_and_sends_alerts_to_alertmanager() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(RULES.relative_to(PROMETHEUS))]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_every_alert_the_issue_asks_for_is_there_and_tested_both_ways() -> None:
    alerts = {rule["alert"] for rule in _alerts()}
    assert alerts == EXPECTED_ALERTS
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert firing == alerts, f"never seen firing: {sorted(alerts - firing)}"
    assert silent == alerts, f"never seen staying silent: {sorted(alerts - silent)}"


def test_every_alert_says_what_to_do_and_links_its_runbook_section() -> None:
    runbook = RUNBOOK.read_text()
    sections = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    for rule in _alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "Next:" in annotations["description"], f"{name}: no next step"
        url = annotations["runbook_url"]
        assert url == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in sections, f"docs/runbook.md has no section ## {name}"


def _exposed_series() -> set[str]:
    from tests.project.test_compose import _exposed_series as exposed

    return exposed()


def _queried_series() -> set[str]:
    return {name for rule in _rules() for name in re.findall(r"\bslaops_[a-z_]+\b", rule["expr"])}


def test_every_series_the_rules_query_is_exposed() -> None:
    missing = sorted(_queried_series() - _exposed_series())
    assert not missing, f"the rules query series no service exposes: {missing}"


AMTOOL = shutil.which("amtool")


@pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is not installed (CI installs Debian's `prometheus-alertmanager`)",
)
def test_alertmanager_config_is_valid() -> None:
    assert AMTOOL is not None
    config = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    result = subprocess.run(  # noqa: S603
        [AMTOOL, "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
