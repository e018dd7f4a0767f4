"""How long `slaops` takes to stop after Ctrl-C (SIGINT), and its exit status.

    python bench/bench_cli_interrupt.py              # 3 runs of each case
    python bench/bench_cli_interrupt.py --runs 5

Each case starts `python -m slaops.cli ...` as a user would, waits for the line that
says it is where the case wants it, sends SIGINT and times the exit:

- **watch, broker down**: waiting for a broker at a closed loopback port
  (`connect_timeout_s` 300), before it gave up;
- **watch**: reading the topics of a running broker;
- **consume**: the consumer service in its poll loop (a clean stop: it finishes its
  batch, commits and closes its clients).

Target: every case exits 130 within 2 s of SIGINT (start-up time, mostly imports, is
not counted). The tests (tests/app/test_cli_manners.py) check the exit status with a
generous bound; the 2 s goal is measured only here.

Measured here (2 shared cores, load 1.3 to 4.5, tansu, 3 runs each): watch with the
broker down 1.07 s median (1.17 s max), watch 1.07 s (1.17 s), both met; consume 6.14 s
(6.34 s), not met: about 5 s of it is librdkafka waiting for the answer to its
LeaveGroupRequest, which tansu never sends (the log says "Timed out LeaveGroupRequest"),
and about 1 s, in every case, is the interpreter's exit with torch loaded.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from testkit.broker import kafka_bootstrap
from testkit.factories import answer_names, consumer_names
from testkit.ports import free_port
from testkit.processes import env_for

TARGET_S = 2.0


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLAOPS_")}
    return {**env, **settings}


def interrupt_once(argv: list[str], env: dict[str, str], ready: str) -> tuple[int, float]:
    """(exit status, seconds from SIGINT to exit) of one run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "slaops.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if re.search(ready, line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not seen.wait(timeout=180):
            raise RuntimeError(f"{argv}: never printed {ready!r}")
        time.sleep(1.0)  # into its loop
        started = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        return code, time.perf_counter() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        cases = {
            "watch, broker down": (
                ["watch"],
                _env(
                    KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                    SLAOPS_CONNECT_TIMEOUT_S="300",
                ),
                "waiting up to 300 s for the broker",
            ),
            "watch": (
                ["watch"],
                _env(KAFKA_BOOTSTRAP_SERVERS=bootstrap, **env_for(answer_names())),
                "the broker at .* answered",
            ),
            "consume": (
                ["consume"],
                _env(
                    KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                    SLAOPS_STORE=f"file://{Path(tmp) / 'models'}",
                    SLAOPS_TENANT_KEY="bench-interrupt-key-0123456789abcdef",
                    SLAOPS_METRICS_PORT="0",
                    **env_for(consumer_names(models=True)),
                ),
                "consuming topic=",
            ),
        }
        print(f"{'case':<20} {'exit':>5} {'median s':>9} {'max s':>7}  target")  # noqa: T201
        for name, (argv, env, ready) in cases.items():
            runs = [interrupt_once(argv, env, ready) for _ in range(args.runs)]
            codes = sorted({code for code, _s in runs})
            seconds = [s for _code, s in runs]
            ok = codes == [130] and max(seconds) <= TARGET_S
            print(  # noqa: T201
                f"{name:<20} {','.join(map(str, codes)):>5} {statistics.median(seconds):>9.2f} "
                f"{max(seconds):>7.2f}  130 within {TARGET_S:g} s: {'met' if ok else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
