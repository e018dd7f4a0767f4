"""The README is the manual: it must name every setting and keep CI on its test command."""

from __future__ import annotations

import re

import pytest
from pydantic_settings import BaseSettings

from consumer.settings import ConsumerSettings
from kernel.settings import setting_sources
from retrainer.settings import RetrainerSettings
from simulator.settings import SimulatorSettings
from slaops.backtest_cli import BacktestSettings
from slaops.demo import DemoSettings
from slaops.fleet_report import ReportSettings
from slaops.settings_doc import render
from slaops.watch import WatchSettings
from testkit.paths import ROOT

README = (ROOT / "README.md").read_text()


def test_settings_tables_are_current() -> None:
    assert render(README) == README, "run `python -m slaops.settings_doc` to refresh README.md"


@pytest.mark.parametrize(
    "settings",
    [
        ConsumerSettings,
        RetrainerSettings,
        SimulatorSettings,
        WatchSettings,
        DemoSettings,
        ReportSettings,
        BacktestSettings,
    ],
)
def test_every_setting_is_in_the_readme_table(settings: type[BaseSettings]) -> None:
    for name in settings.model_fields:
        env, flag = setting_sources(name).split(" or ")
        row = f"| `{name}` | `{env}` / `{flag}` |"
        assert row in README, f"README.md lacks the settings row for {name}"


def test_ci_runs_the_readme_test_command_which_installs_torch_first() -> None:
    block = re.search(
        r"<!-- test-command -->\n```sh\n(.+?)\n```\n<!-- /test-command -->", README, re.S
    )
    assert block is not None
    command = block.group(1)
    assert command.index("torch==2.13.0") < command.index("-e '.[dev]'")
    assert "pytest" in command and "ruff check" in command and "mypy" in command
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def test_every_test_the_guarantees_cite_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)`", text)
    names = re.findall(r"`::(\w+)`", text)
    assert len(cited) >= 10
    sources = {path: (ROOT / path).read_text() for path, _name in cited}
    for path, name in cited:
        if name:
            assert f"def {name[2:]}(" in sources[path], f"{path}{name} is cited but missing"
    everything = "".join(sources.values())
    for name in names:
        assert f"def {name}(" in everything, f"::{name} is cited but missing"
