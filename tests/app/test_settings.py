"""Settings: environment and flags, clear start-up errors, secrets kept out of sight."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from consumer.settings import ConsumerSettings
from kernel.errors import ConfigError
from kernel.kafka import base_config
from kernel.settings import load_settings
from slaops.cli import build_parser, main, settings_from_args

SECRET = "hunter2-do-not-print"  # noqa: S105 (a fake, to look for in output)


def test_environment_and_flags_both_set_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("SLAOPS_WINDOW_MAX_EVENTS", "3000")
    monkeypatch.setenv("SLAOPS_DETECTOR_PARAMS", '{"delta": 0.01}')
    args = build_parser().parse_args(["consume", "--window-max-events", "4000", "--no-cold-start"])
    settings = settings_from_args(ConsumerSettings, args)
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.window_max_events == 4000  # the flag wins over the environment
    assert settings.detector_params == {"delta": 0.01}
    assert settings.cold_start is False


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"window_max_events": 0}, "window_max_events"),
        ({"detector": "magic"}, "detector"),
        ({"telemetry_topic": "bad topic;rm -rf"}, "telemetry_topic"),
        ({"bootstrap_servers": "not a host"}, "bootstrap_servers"),
        ({"kafka_properties": {"bootstrap.servers": "x:1"}}, "kafka_properties"),
        ({"cold_start_min_events": 5_000}, "cold_start_min_events"),
        ({"dlq_topic": "sla.telemetry"}, "topics must all differ"),
    ],
)
def test_bad_settings_fail_naming_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(ConsumerSettings, overrides)


def test_invalid_detector_params_fail_at_start_up() -> None:
    from consumer.main import core_config

    settings = ConsumerSettings(detector_params={"no_such_param": 1.0})
    with pytest.raises((ConfigError, ValueError, TypeError), match="no_such_param"):
        core_config(settings)


def test_missing_broker_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        ConsumerSettings().require_bootstrap()


def test_secrets_never_show_in_repr_dumps_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    settings = ConsumerSettings(
        bootstrap_servers="127.0.0.1:9092", kafka_properties={"sasl.password": SECRET}
    )
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()
    assert base_config(settings)["sasl.password"] == SECRET  # only the client sees it
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("slaops.test").info("settings %s", settings)
    assert SECRET not in caplog.text


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["consume", "--help"])
    text = capsys.readouterr().out
    for name in ConsumerSettings.model_fields:
        assert "--" + name.replace("_", "-") in text, name
    assert "KAFKA_BOOTSTRAP_SERVERS" in text and "SLAOPS_WINDOW_SPAN_S" in text


def test_cli_reports_config_errors_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["consume", "--batch-size", "-1"]) == 2
    assert "batch_size (SLAOPS_BATCH_SIZE or --batch-size)" in capsys.readouterr().err


def test_retrain_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from retrainer.settings import RetrainerSettings

    with pytest.raises(SystemExit):
        main(["retrain", "--help"])
    text = capsys.readouterr().out
    for name in RetrainerSettings.model_fields:
        assert "--" + name.replace("_", "-") in text, name
    assert "HF_TOKEN" in text and "SLAOPS_STORE" in text and "SLAOPS_TENANT_KEY" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--store", "file:///tmp/x"], "no tenant key: set SLAOPS_TENANT_KEY"),
        (["--tenant-key", "k7Q2x9Lm" * 4], "no model store: set SLAOPS_STORE"),
        (["--tenant-key", "short", "--store", "file:///tmp/x"], "at least 16 characters"),
        (
            ["--tenant-key", "k7Q2x9Lm" * 4, "--store", "hf://owner/repo;rm -rf"],
            "forbidden character",
        ),
        (
            ["--tenant-key", "k7Q2x9Lm" * 4, "--store", "hf://user:hf_secret@owner/repo"],
            "must not embed credentials",
        ),
        (["--tenant-key", "k7Q2x9Lm" * 4, "--store", "s3://bucket"], "unsupported model store"),
        (["--grid", '{"momentum": [0.9]}'], "unknown grid parameter"),
        (["--retrain-topic", "sla retrain"], "retrain_topic"),
    ],
)
def test_retrainer_refuses_bad_settings_at_start_up(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["retrain", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "hf_secret" not in err


def test_grid_file_is_read_and_checked(tmp_path: Path) -> None:
    from retrainer.settings import RetrainerSettings

    good = tmp_path / "grid.toml"
    good.write_text("[grid]\nlr = [0.01, 0.001]\nmodule__width = [8]\n")
    assert RetrainerSettings(grid_file=good).search_grid() == {
        "lr": [0.01, 0.001],
        "module__width": [8],
    }
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nmomentum = [0.9]\n")
    with pytest.raises(ConfigError, match="unknown grid parameter"):
        load_settings(RetrainerSettings, {"grid_file": bad})
