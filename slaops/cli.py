"""`slaops` command line: one subcommand per service, every setting also a flag.

Flags are generated from the settings models, so `--help` documents every setting with
its environment variable and default, and a flag always overrides the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from kernel.errors import ConfigError, SlaopsError
from kernel.logs import configure_logging
from kernel.settings import load_settings, setting_sources

Runner = Callable[..., int]
#: A command's other settings classes (its settings' `companions`), each with the names
#: of it the command does not take: `slaops backtest` takes the consumer's and the
#: retrainer's; its runner gets one settings object per class, in order.
Companions = tuple[tuple[type[BaseSettings], frozenset[str]], ...]


def _is_structured(info: FieldInfo) -> bool:
    """Whether the setting takes JSON (a dict or list, possibly optional)."""
    candidates = [info.annotation, *typing.get_args(info.annotation)]
    return any(c in (dict, list) or typing.get_origin(c) in (dict, list) for c in candidates)


def _help(name: str, info: FieldInfo) -> str:
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if info.is_required():
        shown = "required"
    elif isinstance(default, SecretStr) or (isinstance(default, dict) and not default):
        shown = "" if not default else "(secret)"
    elif isinstance(default, BaseModel):
        shown = default.model_dump_json()
    else:
        shown = json.dumps(default) if isinstance(default, (dict, list)) else str(default)
    text = (info.description or "").replace("%", "%%")
    env = setting_sources(name).split(" or ")[0]
    return f"{text} [env {env}; default: {shown or 'none'}]"


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    cls: type[BaseSettings],
    skip: frozenset[str] = frozenset(),
    title: str = "settings",
) -> set[str]:
    """A flag per setting of `cls` but those in `skip`; returns the names it added."""
    group = parser.add_argument_group(title)
    added = set()
    for name, info in cls.model_fields.items():
        if name in skip:
            continue
        added.add(name)
        flag = "--" + name.replace("_", "-")
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        short = [str(f) for f in extra.get("flags", [])]  # type: ignore[union-attr]
        if info.annotation is bool:
            group.add_argument(
                flag,
                *short,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=_help(name, info),
            )
        else:
            metavar = "JSON" if _is_structured(info) else name.upper()
            group.add_argument(
                flag, dest=name, default=None, metavar=metavar, help=_help(name, info)
            )
    return added


def settings_from_args(
    cls: type[BaseSettings], namespace: argparse.Namespace, skip: frozenset[str] = frozenset()
) -> Any:
    """`cls` from the environment, each flag given overriding it (but those in `skip`)."""
    overrides: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        value = None if name in skip else getattr(namespace, name, None)
        if value is None:
            continue
        if _is_structured(info):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{name} ({setting_sources(name)}): not valid JSON; pass one quoted JSON "
                    """value, e.g. --grid '{"lr": [0.01, 0.001]}'"""
                ) from exc
        overrides[name] = value
    return load_settings(cls, overrides)


def _consume(settings: Any) -> int:
    from slaops.runner import run_consumer

    return run_consumer(settings)


def _retrain(settings: Any) -> int:
    from slaops.runner import run_retrainer

    return run_retrainer(settings)


def _simulate(settings: Any) -> int:
    from slaops.runner import run_simulator

    return run_simulator(settings)


def _demo(settings: Any) -> int:
    from slaops.demo import run_demo

    return run_demo(settings)


def _watch(settings: Any) -> int:
    from slaops.watch import run_watch

    return run_watch(settings)


def _backtest(settings: Any, consumer: Any, retrainer: Any) -> int:
    from slaops.backtest_cli import run_backtest

    return run_backtest(settings, consumer, retrainer)


def companions(cls: type[BaseSettings]) -> Companions:
    """The settings classes `cls`'s command takes besides its own (usually none)."""
    found: Companions = getattr(cls, "companions", ())
    return found


def _report(settings: Any) -> int:
    from slaops.fleet_report import run_report

    return run_report(settings)


def _alerts(settings: Any) -> int:
    from slaops.alerts import run_alerts

    return run_alerts(settings)


def commands() -> dict[str, tuple[str, type[BaseSettings], Runner]]:
    from consumer.settings import ConsumerSettings
    from retrainer.settings import RetrainerSettings
    from simulator.settings import SimulatorSettings
    from slaops.alerts_settings import AlertsSettings
    from slaops.backtest_cli import BacktestSettings
    from slaops.demo import DemoSettings
    from slaops.fleet_report import ReportSettings
    from slaops.watch import WatchSettings

    return {
        "demo": (
            "everything on one machine: embedded broker, simulator, consumer, retrainer",
            DemoSettings,
            _demo,
        ),
        "backtest": (
            "replay recorded telemetry through the live loop's code, event time the clock: "
            "the forecasts and warnings it would have published, scored beside the SRE rules",
            BacktestSettings,
            _backtest,
        ),
        "consume": (
            "ingest telemetry, detect drift, request retraining",
            ConsumerSettings,
            _consume,
        ),
        "retrain": (
            "serve retrain requests: search, champion/challenger, publish, announce",
            RetrainerSettings,
            _retrain,
        ),
        "simulate": (
            "send seeded telemetry for N tenants, with injectable drift and malformed records",
            SimulatorSettings,
            _simulate,
        ),
        "watch": (
            "print model events (and, with --requests, requests and outcomes)",
            WatchSettings,
            _watch,
        ),
        "report": (
            "write the fleet as one self-contained HTML page (or serve it with --serve)",
            ReportSettings,
            _report,
        ),
        "alerts": (
            "forward sla.warnings edges to Alertmanager (raise, re-send while active, clear)",
            AlertsSettings,
            _alerts,
        ),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slaops",
        description="Keeps one SLA-breach forecasting model per tenant fresh.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (summary, cls, _run) in commands().items():
        command = sub.add_parser(name, help=summary, description=summary)
        taken = add_settings_arguments(command, cls)
        for extra, skip in companions(cls):
            title = f"{extra.__name__}, as its command takes them (a shared name sets both)"
            taken |= add_settings_arguments(command, extra, skip | taken, title)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _summary, cls, run = commands()[args.command]
    try:
        settings = settings_from_args(cls, args)
        extra = [settings_from_args(other, args, skip) for other, skip in companions(cls)]
    except ConfigError as exc:
        print(f"slaops {args.command}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return run(settings, *extra)
    except ConfigError as exc:
        print(f"slaops {args.command}: {exc}", file=sys.stderr)
        return 2
    except SlaopsError as exc:
        logging.getLogger("slaops").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
