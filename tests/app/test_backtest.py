"""`slaops backtest` without a broker: the live loop's code on a file, event time the clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrainer.errors import ReplayError, RequestRefused
from schemas import Forecast
from slaops.backtest import Backtest, BacktestResult, BacktestSetup, offline_setup
from slaops.backtest_records import file_replay, read_telemetry
from slaops.cli import main
from testkit.backtest_data import TENANTS, differences, recorded, settings, write_input
from testkit.retrain_data import request_for

pytestmark = pytest.mark.slow
EVENTS = 1_200
DAY_S = 86_400.0


def backtest(path: Path, chunk_events: int, **tuning: object) -> tuple[BacktestResult, list[bytes]]:
    consumer, retrainer = settings(**tuning)
    with offline_setup(BacktestSetup(consumer, retrainer, chunk_events)) as setup:
        telemetry = read_telemetry(path, setup.consumer.telemetry_topic)
        out = path.with_suffix(f".{chunk_events}.forecasts")
        with out.open("wb") as forecasts:
            result = Backtest(setup, telemetry, forecasts).run()
    return result, out.read_bytes().splitlines()


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_input(tmp_path_factory.mktemp("backtest") / "events.jsonl", recorded(EVENTS))


@pytest.fixture(scope="module")
def whole(input_file: Path) -> tuple[BacktestResult, list[bytes]]:
    return backtest(input_file, 10_000)


def test_each_tenant_forecasts_from_the_event_after_its_first_model_on(
    whole: tuple[BacktestResult, list[bytes]],
) -> None:
    result, lines = whole
    forecasts = [Forecast.model_validate_json(line) for line in lines]
    assert len(forecasts) == result.forecasts > 0
    for tenant in TENANTS:
        events = result.telemetry.tenants[tenant]
        published = [r for r in result.retrains if r.tenant == tenant and r.kind == "published"]
        assert published, f"{tenant} got no model"
        first = int((events.at > published[0].offset).argmax())  # its next event
        made = result.series[tenant].made
        # Answered before its next event: that event is forecast, none before it is.
        assert made[first] and not made[:first].any() and made[first:].all()
        ours = [f for f in forecasts if f.tenant == tenant]
        assert [f.ts.timestamp() for f in ours] == events.ts[first:].tolist()
        assert [f.model_version for f in ours] == sorted(f.model_version for f in ours)


def test_forecast_lines_are_in_input_order(whole: tuple[BacktestResult, list[bytes]]) -> None:
    result, lines = whole
    offsets = []
    for line in lines:
        document = json.loads(line)
        events = result.telemetry.tenants[document["tenant"]]
        stamp = Forecast.model_validate_json(line).ts.timestamp()
        offsets.append(int(events.at[events.ts.tolist().index(stamp)]))
    assert offsets == sorted(offsets)


def test_the_cut_of_the_input_changes_nothing(
    input_file: Path, whole: tuple[BacktestResult, list[bytes]]
) -> None:
    """Chunks of 37 events cut before and after most requests, and re-run many."""
    result, lines = whole
    cut, cut_lines = backtest(input_file, 37)
    assert cut.reruns > 0 and result.reruns > 0
    assert {r.reason for r in result.retrains} > {"cold_start"}, "no drift to cut around"
    assert [(r.event_id, r.offset, r.kind) for r in cut.retrains] == [
        (r.event_id, r.offset, r.kind) for r in result.retrains
    ]
    assert differences(cut_lines, lines) == []


def test_cooldowns_run_in_event_time_and_future_dates_are_past_enough(tmp_path: Path) -> None:
    """Dated years ahead of the wall clock (a live consumer would dead-letter them all),
    the events are processed, and a tenant's requests are a cooldown of event time apart."""
    path = write_input(tmp_path / "future.jsonl", recorded(EVENTS, shift_s=4 * 365 * DAY_S))
    result, lines = backtest(path, 500, consumer={"cooldown_s": 1_800.0})
    assert result.dead_letters == 0 and lines
    for tenant in TENANTS:
        events = result.telemetry.tenants[tenant]
        raised = [r.offset for r in result.retrains if r.tenant == tenant]
        stamps = [events.ts[events.at.tolist().index(o)] for o in raised]
        assert all(b - a >= 1_800.0 for a, b in zip(stamps, stamps[1:], strict=False))


def test_cli_writes_forecasts_and_prints_the_figures_as_json(
    input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "forecasts.jsonl"
    args = ["backtest", "--input", str(input_file), "--output", str(out), "--json"]
    args += [
        "--slo-metric",
        "latency_p99_ms",
        "--tenant-key",
        "cli-test-tenant-key-9f3a1c7e5b",
        "--n-jobs",
        "1",
    ]
    args += ["--grid", '{"module__hidden_layers": [0]}', "--max-epochs", "3"]
    args += ["--n-splits", "3", "--min-rows", "100"]
    assert main(args) == 0
    figures = json.loads(capsys.readouterr().out)
    assert [t["tenant"] for t in figures["tenants"]] == list(TENANTS)
    assert set(figures["pooled"]) == {
        "slaops",
        "persistence",
        "static_threshold",
        "predict_linear",
        "burn_rate",
    }
    for tenant in figures["tenants"]:
        assert tenant["test_events"] == EVENTS - EVENTS // 2
        assert tenant["slo"] is not None
    assert figures["forecasts"] == len(out.read_bytes().splitlines()) > 0
    assert figures["retrains"]["requests"] >= len(TENANTS)


def test_cli_without_a_breach_metric_judges_persistence_only(
    input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "forecasts.jsonl"
    args = ["backtest", "--input", str(input_file), "--output", str(out), "--n-jobs", "1"]
    args += ["--grid", '{"module__hidden_layers": [0]}', "--max-epochs", "3", "--n-splits", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "need the breach metric" in printed and "--slo-metric" in printed
    assert "persistence" in printed and "predict_linear" not in printed


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--slo-metric", "latency"], "slo_metric"),
        (["--chunk-events", "0"], "chunk_events"),
        (["--cooldown-s", "-1"], "cooldown_s"),
        (["--n-splits", "1"], "n_splits"),
    ],
)
def test_cli_refuses_bad_settings_naming_them(
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    named: str,
) -> None:
    args = ["backtest", "--input", str(input_file), "--output", str(tmp_path / "f"), *extra]
    assert main(args) == 2
    assert named in capsys.readouterr().err


def test_cli_refuses_a_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["backtest", "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "f")]
    assert main(args) == 2
    assert "input" in capsys.readouterr().err


def test_backtest_help_has_its_own_and_both_services_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["backtest", "--help"])
    text = capsys.readouterr().out
    for flag in ("--input", "--slo-metric", "--cooldown-s", "--grid", "--store", "--batch-size"):
        assert flag in text
    for flag in ("--bootstrap-servers", "--group-id", "--metrics-port", "--poll-timeout-s"):
        assert flag not in text


def test_a_request_replays_its_tenants_lines_of_the_input(input_file: Path) -> None:
    _consumer, retrainer = settings()
    telemetry = read_telemetry(input_file, retrainer.telemetry_topic)
    replay = file_replay(telemetry, retrainer)
    acme = telemetry.tenants["acme"]
    rows = replay(request_for("acme", offset=599))
    assert rows.ts.tolist() == acme.ts[acme.at < 600].tolist()
    assert (rows.features == acme.metrics[acme.at < 600]).all()
    assert rows.other_tenants == 600 - len(rows) and rows.invalid == 0
    with pytest.raises(ReplayError, match="not in the input"):
        replay(request_for("acme", offset=len(telemetry) + 5))
    foreign = request_for("acme").model_copy(
        update={"source": [request_for("acme").source[0].model_copy(update={"topic": "x"})]}
    )
    with pytest.raises(RequestRefused):
        replay(foreign)
