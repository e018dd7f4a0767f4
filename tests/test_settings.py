"""Settings: environment and flags, clear start-up errors, secrets kept out of sight."""

from __future__ import annotations

import logging

import pytest

from consumer.settings import ConsumerSettings
from slaops.cli import build_parser, main, settings_from_args
from slaops.errors import ConfigError
from slaops.kafka import base_config
from slaops.settings import load_settings

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
