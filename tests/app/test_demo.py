"""`slaops demo --quick`, the main job, run as a user runs it: its story and its clean exit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIFTED = "tenant-001"


def demo_process(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "slaops.cli", "demo", "--quick", "--plain"]
    args += ["--data-dir", str(tmp_path / ".slaops"), *extra]
    return subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**os.environ, "SLAOPS_LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def broker_pid(stderr: str) -> int | None:
    """The embedded broker the demo started, from its log (none with an external broker)."""
    match = re.search(r"embedded broker pid=(\d+)", stderr)
    return int(match.group(1)) if match else None


def assert_gone(pid: int | None) -> None:
    if pid is None:
        return
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert not alive, f"the demo left its broker (pid {pid}) running"


def test_quick_demo_retrains_only_the_drifted_tenant_and_the_new_model_wins(
    tmp_path: Path,
) -> None:
    summary = tmp_path / "summary.json"
    process = demo_process(tmp_path, "--summary-json", str(summary))
    out, err = finish(process, timeout_s=280)
    assert process.returncode == 0, err[-3000:] + out[-3000:]
    assert "slaops demo: summary" in out
    assert_gone(broker_pid(err))

    rows = {row["tenant"]: row for row in json.loads(summary.read_text())}
    assert sorted(rows) == ["tenant-000", "tenant-001", "tenant-002"]
    # It ends with the fleet report: written, named, every tenant on it.
    report = re.search(r"^fleet report: (\S+)$", out, re.M)
    assert report is not None, out[-2000:]
    page = Path(report.group(1)).read_text()
    for tenant in rows:
        assert f'data-tenant="{tenant}"' in page, tenant
    for tenant, row in rows.items():
        assert row["models"] >= 1 and row["cold_start_f1"] is not None, tenant
    drifted = rows.pop(DRIFTED)
    # Detected after the drift began, never before it, and retrained for it.
    assert drifted["retrain_reason"] == "performance_drift"
    assert drifted["drift_at_event"] < drifted["detected_at_event"] <= drifted["requested_at_event"]
    assert drifted["models"] == 2
    assert drifted["requests"] == ["cold_start", "performance_drift"]
    assert drifted["new_f1_post_drift"] > drifted["old_f1_post_drift"]
    for tenant, row in rows.items():
        assert (row["retrain_reason"], row["models"]) == (None, 1), tenant
        assert row["requests"] == ["cold_start"], tenant
        assert row["drift_at_event"] is None, tenant


def test_ctrl_c_stops_the_demo_cleanly_with_a_summary_and_no_broker_left(tmp_path: Path) -> None:
    process = demo_process(tmp_path)
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    seen = ""
    while "phase 1" not in seen and time.monotonic() < deadline and process.poll() is None:
        seen += process.stdout.readline()
    assert "phase 1" in seen, "the demo never reached its first phase"
    process.send_signal(signal.SIGINT)
    out, err = finish(process, timeout_s=90)
    assert "slaops demo: summary" in out
    assert process.returncode == 1, "an interrupted demo did not tell its story: not a success"
    assert "Traceback" not in err
    assert_gone(broker_pid(err))
