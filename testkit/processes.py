"""Real `slaops` services as subprocesses, for fault tests: start, kill, freeze, read logs.

Settings go in as environment variables (`SLAOPS_*`, `KAFKA_BOOTSTRAP_SERVERS`, ...), as
an operator would set them; output goes to a log file per start, so a test can wait for
a line without a pipe filling up. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from testkit.ports import free_port


def env_for(settings: Mapping[str, object]) -> dict[str, str]:
    """`{"telemetry_topic": "x"}` -> `{"SLAOPS_TELEMETRY_TOPIC": "x"}`; upper-case keys pass."""
    out = {}
    for name, value in settings.items():
        key = name if name.isupper() else f"SLAOPS_{name.upper()}"
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


class ServiceProcess:
    """One `slaops COMMAND` that can be killed and started again with the same settings."""

    def __init__(self, command: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.command = command
        # A metrics port of its own (unless `env` names one): services on other
        # pytest-xdist workers run at the same time, and a default port taken by one
        # stops the next at start-up. Restarts of this process bind the same port again.
        port = {"SLAOPS_METRICS_PORT": str(free_port())}
        self.env = {**os.environ, "SLAOPS_LOG_LEVEL": "INFO", **port, **env}
        self.log_dir = log_dir
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / f"{command}-0.log"

    def start(self) -> ServiceProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        self.log_path = self.log_dir / f"{self.command}-{self.starts}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "slaops.cli", self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        return "".join(
            (self.log_dir / f"{self.command}-{i}.log").read_text(errors="replace")
            for i in range(1, self.starts + 1)
            if (self.log_dir / f"{self.command}-{i}.log").exists()
        )

    def wait_log(self, pattern: str, *, timeout_s: float, count: int = 1) -> re.Match[str]:
        """Wait until this start's log matches `pattern` `count` times; the last match."""
        deadline = time.monotonic() + timeout_s
        while True:
            matches = list(re.finditer(pattern, self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if not self.alive():
                raise AssertionError(
                    f"slaops {self.command} exited ({self.process and self.process.returncode}) "
                    f"before logging {pattern!r}:\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"slaops {self.command} did not log {pattern!r} in {timeout_s}s:\n"
                    f"{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no clean-up, no commit, as a crash or an OOM kill would leave it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. The exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode


@contextmanager
def services(*procs: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    """Stop (then kill) every process on the way out, whatever the test did."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.alive():
                proc.stop(timeout_s=30)


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP a process (a broker that stalls), SIGCONT it on the way out."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
