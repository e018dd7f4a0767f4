"""The command line's manners: `--version`, each subcommand's own usage on its errors, no
abbreviated flags, a broker that does not answer at start-up, and Ctrl-C.

Broker-down start-ups point every command that needs a broker at a closed loopback
port with `connect_timeout_s` 2; the Ctrl-C tests run `slaops` as a subprocess and
send it SIGINT, with generous time bounds (bench/bench_cli_interrupt.py measures
against 2 s).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from kernel.settings import ServiceSettings
from slaops.cli import build_parser, commands, main
from testkit.factories import answer_names, consumer_names
from testkit.ports import free_port
from testkit.processes import env_for

#: The store, key and metrics port every broker command may need; the rest defaults.
KEY = "cli-manners-key-0123456789abcdef"
CONNECT_TIMEOUT_S = 2.0


def broker_commands() -> list[list[str]]:
    """Every command whose settings name a broker, as a user would start it."""
    found = []
    for name, (_summary, cls, _run) in commands().items():
        if not issubclass(cls, ServiceSettings):
            continue
        actions = getattr(cls, "actions", {})
        if not actions:
            found.append([name])
        for action, (_text, positionals) in actions.items():
            found.append([name, action, *("acme" for _ in positionals)])
    return found


def test_every_broker_command_is_covered() -> None:
    names = {argv[0] for argv in broker_commands()}
    assert {"consume", "retrain", "simulate", "watch", "report", "models", "demo"} <= names
    assert "backtest" not in names  # reads files, never a broker


@pytest.fixture
def closed_port_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    for name in [n for n in os.environ if n.startswith("SLAOPS_")]:
        monkeypatch.delenv(name)
    address = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", address)
    monkeypatch.setenv("SLAOPS_CONNECT_TIMEOUT_S", str(CONNECT_TIMEOUT_S))
    monkeypatch.chdir(tmp_path)
    yield address


def _env_for(argv: list[str], tmp_path: Path) -> dict[str, str]:
    """The settings each command needs besides the broker, as environment variables."""
    cls = commands()[argv[0]][1]
    wanted = {
        "store": f"file://{tmp_path / 'models'}",
        "tenant_key": KEY,
        "metrics_port": "0",
        "alertmanager_urls": "http://127.0.0.1:9",
        "output": str(tmp_path / "report.html"),
        "data_dir": str(tmp_path / "data"),
    }
    return {f"SLAOPS_{k.upper()}": v for k, v in wanted.items() if k in cls.model_fields}


@pytest.mark.parametrize("argv", broker_commands(), ids=" ".join)
def test_broker_down_at_start_up_names_the_address_and_exits_non_zero(
    argv: list[str],
    closed_port_env: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    for name, value in _env_for(argv, tmp_path).items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = main(argv)
    seconds = time.monotonic() - started
    err = capfd.readouterr().err + caplog.text  # the log, wherever pytest sent it
    assert code not in (0, None), err[-2000:]
    assert f"no Kafka broker answered at {closed_port_env}" in err, err[-2000:]
    assert "Traceback" not in err
    # It waited for connect_timeout_s, and not much longer (generous on a busy machine).
    assert CONNECT_TIMEOUT_S * 0.9 <= seconds < CONNECT_TIMEOUT_S + 30, seconds
    # librdkafka's connection failures are not repeated line after line.
    assert err.count("Connection refused") <= 2, err[-2000:]


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"slaops {metadata.version('slaops')}"


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["watch", "--no-such-flag"], "usage: slaops watch"),
        (["report", "--idle-s"], "usage: slaops report"),
        (["models", "show", "acme", "--no-such-flag"], "usage: slaops models show"),
        (["models", "list", "extra"], "usage: slaops models list"),
        (["models"], "usage: slaops models"),
    ],
)
def test_a_subcommand_error_prints_that_subcommands_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"{usage.removeprefix('usage: ')}: error:" in err


def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["watch", "--bootstrap", "127.0.0.1:9092", "--max-events", "1"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --bootstrap" in capsys.readouterr().err


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_no_parser_accepts_abbreviations() -> None:
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > len(commands())
    assert [p.prog for p in parsers if p.allow_abbrev] == []


# -- Ctrl-C -----------------------------------------------------------------------------


class Command:
    """`slaops ARGV` as a subprocess, its stderr read line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slaops.cli", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"no line matching {pattern!r}: {''.join(self.lines)[-3000:]}")

    def interrupt(self, timeout_s: float) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(
                f"still running {timeout_s:g} s after SIGINT: {''.join(self.lines)[-3000:]}"
            )
        self._reader.join(timeout=5)
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLAOPS_")}
    return {**env, **settings}


@pytest.mark.integration
def test_ctrl_c_while_waiting_for_a_broker_exits_130_promptly(tmp_path: Path) -> None:
    env = _environment(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}", SLAOPS_CONNECT_TIMEOUT_S="300"
    )
    command = Command(["watch"], env)
    command.wait_for("waiting up to 300 s for the broker", timeout_s=120)
    code, seconds = command.interrupt(timeout_s=20)
    assert code == 130, "".join(command.lines)[-2000:]
    assert "Traceback" not in "".join(command.lines)
    print(f"watch, broker down: exited {seconds:.2f} s after SIGINT")  # noqa: T201


@pytest.mark.integration
def test_ctrl_c_stops_a_running_watch_with_130(bootstrap: str) -> None:
    env = _environment(KAFKA_BOOTSTRAP_SERVERS=bootstrap, **env_for(answer_names()))
    command = Command(["watch"], env)
    command.wait_for("the broker at .* answered", timeout_s=120)
    time.sleep(1.0)  # into its poll loop
    code, seconds = command.interrupt(timeout_s=20)
    assert code == 130, "".join(command.lines)[-2000:]
    assert "Traceback" not in "".join(command.lines)
    print(f"watch: exited {seconds:.2f} s after SIGINT")  # noqa: T201


@pytest.mark.integration
def test_ctrl_c_stops_a_running_consume_with_130(bootstrap: str, tmp_path: Path) -> None:
    env = _environment(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        SLAOPS_STORE=f"file://{tmp_path / 'models'}",
        SLAOPS_TENANT_KEY=KEY,
        SLAOPS_METRICS_PORT="0",
        **env_for(consumer_names(models=True)),
    )
    command = Command(["consume"], env)
    command.wait_for("consuming topic=", timeout_s=120)
    time.sleep(1.0)
    code, seconds = command.interrupt(timeout_s=60)
    assert code == 130, "".join(command.lines)[-2000:]
    assert any("stopped:" in line for line in command.lines), "".join(command.lines)[-2000:]
    print(f"consume: exited {seconds:.2f} s after SIGINT")  # noqa: T201
