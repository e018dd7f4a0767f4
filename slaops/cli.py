"""`slaops` command line: one subcommand per service, every setting also a flag.

Flags are generated from the settings models, so `--help` documents every setting with
its environment variable and default, and a flag always overrides the environment.
Flags are never abbreviated, and a subcommand's mistake prints that subcommand's usage.

Exit status: 0 done; 1 failed (a broker that did not answer within `connect_timeout_s`,
a store error, ...); 2 bad usage or settings; 130 stopped by Ctrl-C (SIGINT). Before a
command that needs the broker starts, the broker must answer within
`connect_timeout_s` (`slaops.runner.wait_for_broker`), or the command fails naming the
address it tried.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import typing
from collections.abc import Callable, Sequence
from importlib import metadata
from types import FrameType
from typing import Any, NoReturn

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from kernel.errors import ConfigError, SlaopsError
from kernel.logs import configure_logging
from kernel.settings import ServiceSettings, load_settings, setting_sources

Runner = Callable[..., int]
#: Exit status after Ctrl-C (SIGINT), as shells report a process it killed.
EXIT_INTERRUPTED = 130
#: A command's other settings classes (its settings' `companions`), each with the names
#: of it the command does not take: `slaops backtest` takes the consumer's and the
#: retrainer's; its runner gets one settings object per class, in order.
Companions = tuple[tuple[type[BaseSettings], frozenset[str]], ...]
#: A command's actions (its settings' `actions`), e.g. `slaops models list`: action ->
#: (summary, its positional arguments as (name, help)); the runner gets them by keyword.
Actions = dict[str, tuple[str, tuple[tuple[str, str], ...]]]
#: Commands whose runner waits for the broker itself, after its own start-up checks
#: (`slaops.runner.run_service`): bad settings fail before any connection.
_WAIT_IN_RUNNER = frozenset({"consume", "retrain", "simulate"})


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


def _models(settings: Any, *, action: str, tenant: str | None = None) -> int:
    from slaops.models_cli import run_models

    return run_models(settings, action, tenant)


def actions(cls: type[BaseSettings]) -> Actions:
    """The actions `cls`'s command takes (`slaops models list`), usually none."""
    found: Actions = getattr(cls, "actions", {})
    return found


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
    from slaops.models_cli import ModelsSettings
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
        "models": (
            "each tenant's versions as the store holds them (forecaster, metrics against "
            "baselines, evidence) and its last retrain decision and why; publish-index "
            "writes the store's root README listing the tenants' cards by hash",
            ModelsSettings,
            _models,
        ),
        "alerts": (
            "forward sla.warnings edges to Alertmanager (raise, re-send while active, clear)",
            AlertsSettings,
            _alerts,
        ),
    }


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it reports its own unknown arguments, with its own usage.

    (argparse leaves them to the top-level parser, which prints the top-level usage.)
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def package_version() -> str:
    """The installed package's version (importlib.metadata), or "unknown" off a checkout."""
    try:
        return metadata.version("slaops")
    except metadata.PackageNotFoundError:
        return "unknown"


def _add_command_settings(command: argparse.ArgumentParser, cls: type[BaseSettings]) -> None:
    taken = add_settings_arguments(command, cls)
    for extra, skip in companions(cls):
        title = f"{extra.__name__}, as its command takes them (a shared name sets both)"
        taken |= add_settings_arguments(command, extra, skip | taken, title)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slaops",
        description="Keeps one SLA-breach forecasting model per tenant fresh.",
        epilog="Exit status: 0 done, 1 failed, 2 bad usage or settings, 130 Ctrl-C.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for name, (summary, cls, _run) in commands().items():
        command = sub.add_parser(name, help=summary, description=summary, allow_abbrev=False)
        if not actions(cls):
            _add_command_settings(command, cls)
            continue
        # Settings flags go on each action only: argparse lets a subparser's defaults
        # overwrite what its parent parsed.
        nested = command.add_subparsers(
            dest="action", required=True, metavar="ACTION", parser_class=CommandParser
        )
        for action, (text, positionals) in actions(cls).items():
            leaf = nested.add_parser(action, help=text, description=text, allow_abbrev=False)
            for positional, positional_help in positionals:
                leaf.add_argument(positional, help=positional_help)
            _add_command_settings(leaf, cls)
    return parser


def _interrupt(interrupted: threading.Event) -> Callable[[int, FrameType | None], NoReturn]:
    def handler(_signum: int, _frame: FrameType | None) -> NoReturn:
        interrupted.set()
        raise KeyboardInterrupt

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (see the module docstring)."""
    interrupted = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C raises KeyboardInterrupt as usual, and is remembered even where a
        # command catches it; a service replaces this with its stop request.
        previous = signal.signal(signal.SIGINT, _interrupt(interrupted))
    code = EXIT_INTERRUPTED
    try:
        code = _main(argv)
    except KeyboardInterrupt:
        interrupted.set()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set() or code == EXIT_INTERRUPTED:
        print("slaops: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _summary, cls, run = commands()[args.command]
    by_name = {
        positional: getattr(args, positional)
        for _text, positionals in actions(cls).values()
        for positional, _help in positionals
        if hasattr(args, positional)
    }
    if actions(cls):
        by_name["action"] = args.action
    try:
        settings = settings_from_args(cls, args)
        extra = [settings_from_args(other, args, skip) for other, skip in companions(cls)]
    except ConfigError as exc:
        print(f"slaops {args.command}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if (
            isinstance(settings, ServiceSettings)
            and settings.bootstrap_servers is not None
            and args.command not in _WAIT_IN_RUNNER
        ):
            from slaops.runner import wait_for_broker

            wait_for_broker(settings)
        return run(settings, *extra, **by_name)
    except ConfigError as exc:
        print(f"slaops {args.command}: {exc}", file=sys.stderr)
        return 2
    except SlaopsError as exc:
        logging.getLogger("slaops").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
