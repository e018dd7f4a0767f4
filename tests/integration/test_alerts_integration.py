"""The real `slaops alerts` between the real broker and a real Alertmanager (Debian's
`prometheus-alertmanager`) on loopback, whose webhook receiver is a small HTTP server of
the test: what Alertmanager lists (`GET /api/v2/alerts`) and what it notifies.

A raise shows as one active alert with the warning's labels and annotations, re-sent
while active; a clear ends it; a SIGKILLed service started again (with the consumer's
replayed raise of the cleared warning on the topic) makes no second notification and
does not bring the cleared warning back. A service that starts before its Alertmanager
retries until it answers, authenticating with basic auth, and never logs the password.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from kernel.errors import ConfigError
from kernel.kafka import ensure_topics, slaops_topics
from kernel.settings import load_settings
from schemas import WarningCleared, WarningPolicyFacts, WarningRaised, warning_event_id
from slaops.alerts_book import AlertBook
from slaops.alerts_settings import AlertsSettings
from testkit.factories import unique_name
from testkit.kafka_helpers import produce_all, wait_for
from testkit.ports import free_port
from testkit.processes import ServiceProcess, env_for, services

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def needs_alertmanager(test: Any) -> Any:
    """A test of the real service against the real broker and a real Alertmanager."""
    skip = pytest.mark.skipif(
        ALERTMANAGER is None,
        reason="Alertmanager is not installed (apt-get install prometheus-alertmanager)",
    )
    return pytest.mark.integration(pytest.mark.slow(skip(test)))


#: A test password and its bcrypt hash (Alertmanager's web config stores only hashes).
PASSWORD = "test-password-0123"  # noqa: S105 - a test's own password
PASSWORD_HASH = "$2b$10$qs8UNmiP0pSKPwSBSrmRVeemGNJxMZ83OhKdvJZ7xvY1GGo1w2RtC"  # noqa: S105
PARTITIONS = 3


class Webhook:
    """Alertmanager's receiver: every notification it posts, in order."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        lock = self.lock = threading.Lock()
        notifications = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = min(int(self.headers.get("Content-Length", "0")), 1_000_000)
                body = json.loads(self.rfile.read(length))
                with lock:
                    notifications.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def count(self, tenant: str, status: str) -> int:
        """Notifications that carried `tenant`'s alert in state `status`."""
        with self.lock:
            return sum(
                1
                for body in self.notifications
                for alert in body["alerts"]
                if alert["labels"].get("tenant") == tenant and alert["status"] == status
            )


@contextmanager
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()


@contextmanager
def alertmanager(
    tmp: Path, hook: Webhook, *, port: int | None = None, users: dict[str, str] | None = None
) -> Iterator[str]:
    """A real Alertmanager on loopback, clustering off, stopped by its PID; its URL."""
    assert ALERTMANAGER is not None
    port = port or free_port()
    home = tmp / f"alertmanager-{port}"
    (home / "data").mkdir(parents=True)
    config = {
        "route": {
            "receiver": "hook",
            "group_by": ["tenant"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "hook", "webhook_configs": [{"url": hook.url, "send_resolved": True}]}
        ],
    }
    (home / "alertmanager.yml").write_text(json.dumps(config))  # JSON is YAML
    args = [
        ALERTMANAGER,
        f"--config.file={home / 'alertmanager.yml'}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    auth = None
    if users:
        (home / "web.yml").write_text(json.dumps({"basic_auth_users": users}))
        args.append(f"--web.config.file={home / 'web.yml'}")
        auth = ("slaops", PASSWORD)
    url = f"http://127.0.0.1:{port}"
    with (home / "log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{url}/-/ready", auth=auth, timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert process.poll() is None, (home / "log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Alertmanager did not start in 30 s"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def listed(url: str, auth: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """What Alertmanager lists (active, not yet ended)."""
    response = httpx2.get(f"{url}/api/v2/alerts", auth=auth, timeout=5)
    response.raise_for_status()
    alerts: list[dict[str, Any]] = response.json()
    return alerts


def of(alerts: list[dict[str, Any]], tenant: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("tenant") == tenant]


def raised(tenant: str, offset: int, revision: str = "rev-1") -> WarningRaised:
    return WarningRaised(
        warning_id=warning_event_id(tenant, revision, "sla.telemetry", 0, offset),
        tenant=tenant,
        ts=datetime.now(UTC) - timedelta(seconds=5),
        probability=0.87,
        horizon=6,
        horizon_s=360.0,
        model_revision=revision,
        model_version=3,
        forecaster="mlp",
        policy=WarningPolicyFacts(threshold=0.4, median_lead=2.0, false_per_day=0.5),
    )


def cleared(warning: WarningRaised) -> WarningCleared:
    return WarningCleared(
        warning_id=warning.warning_id,
        tenant=warning.tenant,
        ts=datetime.now(UTC),
        reason="risk_passed",
        model_revision=warning.model_revision,
    )


def record(edge: WarningRaised | WarningCleared) -> tuple[bytes, bytes]:
    return edge.tenant.encode(), edge.model_dump_json().encode()


def warnings_topic(bootstrap: str) -> str:
    topic = unique_name("warnings")
    settings = AlertsSettings(bootstrap_servers=bootstrap)
    ensure_topics(settings, slaops_topics(PARTITIONS, warnings=topic))
    return topic


def alerts_process(tmp: Path, bootstrap: str, topic: str, **settings: object) -> ServiceProcess:
    env = env_for(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "warnings_topic": topic,
            "resend_interval_s": 1.0,
            # An alert lives 30 s past a send: longer than a restart takes, so only a
            # duplicate notification (not a timeout) could make a second one.
            "resends_until_end": 30,
            "retry_base_s": 0.2,
            "retry_max_s": 1.0,
            "extra_labels": json.dumps({"team": "sre"}),
            **settings,
        }
    )
    return ServiceProcess("alerts", env, tmp)


@needs_alertmanager
def test_raise_resend_clear_and_restart_without_a_duplicate(bootstrap: str, tmp_path: Path) -> None:
    topic = warnings_topic(bootstrap)
    acme, globex = raised("acme", 10), raised("globex", 20)
    with webhook() as hook, alertmanager(tmp_path, hook) as url:
        proc = alerts_process(tmp_path, bootstrap, topic, alertmanager_urls=url)
        with services(proc):
            proc.start().wait_log(r"caught up with", timeout_s=60)
            produce_all(
                bootstrap,
                topic,
                [
                    record(acme),
                    record(globex),
                    (b"acme", b'{"kind": "raised", "tenant": "acme"}'),  # invalid
                    (b"initech", record(raised("globex", 30))[1]),  # key is not its tenant
                ],
            )
            wait_for(
                lambda: len(of(listed(url), "acme")) == 1 and len(of(listed(url), "globex")) == 1,
                timeout_s=30,
                what="both warnings listed by Alertmanager",
            )
            (alert,) = of(listed(url), "acme")
            assert alert["labels"] == {
                "alertname": "SlaBreachExpected",
                "tenant": "acme",
                "severity": "warning",
                "service": "slaops",
                "team": "sre",
            }
            notes = alert["annotations"]
            assert notes["probability"] == "0.87"
            assert notes["horizon"] == "6" and notes["horizon_s"] == "360"
            assert notes["expected_lead"] == "2" and notes["expected_lead_s"] == "120"
            assert notes["model_revision"] == "rev-1" and notes["model_version"] == "3"
            assert notes["warning_id"] == acme.warning_id
            assert "acme" in notes["summary"] and alert["status"]["state"] == "active"
            assert datetime.fromisoformat(alert["startsAt"]) <= acme.ts + timedelta(seconds=1)
            assert len(listed(url)) == 2, "the two refused records made no alert"
            proc.wait_log(r"refused record .*invalid", timeout_s=10)
            proc.wait_log(r"refused record .*key_mismatch", timeout_s=10)
            wait_for(
                lambda: hook.count("acme", "firing") == 1 and hook.count("globex", "firing") == 1,
                timeout_s=30,
                what="one firing notification per tenant",
            )

            # Re-sent while active: Alertmanager's endsAt moves on, the start stays.
            first_end = datetime.fromisoformat(alert["endsAt"])
            wait_for(
                lambda: (
                    datetime.fromisoformat(of(listed(url), "acme")[0]["endsAt"])
                    > first_end + timedelta(seconds=1.5)
                ),
                timeout_s=15,
                what="acme re-sent with a later endsAt",
            )
            assert of(listed(url), "acme")[0]["startsAt"] == alert["startsAt"]

            produce_all(bootstrap, topic, [record(cleared(globex))])
            wait_for(
                lambda: not of(listed(url), "globex"),
                timeout_s=30,
                what="globex's alert ended",
            )
            assert len(of(listed(url), "acme")) == 1
            wait_for(
                lambda: hook.count("globex", "resolved") == 1,
                timeout_s=30,
                what="globex's resolved notification",
            )

            # A crash; then the consumer's replay repeats globex's raise after its clear.
            proc.kill()
            produce_all(bootstrap, topic, [record(globex)])
            proc.start().wait_log(r"caught up with .*: 1 active warnings", timeout_s=60)
            proc.wait_log(r"sent \d+ alerts to .*: 1 active", timeout_s=30)
            time.sleep(4.0)  # four group intervals, four resends
            (after,) = of(listed(url), "acme")
            assert after["startsAt"] == alert["startsAt"], "the same alert, not a new one"
            assert not of(listed(url), "globex"), "a cleared warning came back"
            assert hook.count("acme", "firing") == 1, "a duplicate notification"
            assert hook.count("acme", "resolved") == 0, "acme ended during the restart"
            assert hook.count("globex", "firing") == 1
            assert hook.count("globex", "resolved") == 1
            # And live, not only on a restart: the repeat of a cleared raise is dropped.
            produce_all(bootstrap, topic, [record(globex)])
            time.sleep(2.5)
            assert not of(listed(url), "globex")
            assert hook.count("globex", "firing") == 1


@needs_alertmanager
def test_retries_until_alertmanager_answers_with_basic_auth_and_never_logs_it(
    bootstrap: str, tmp_path: Path
) -> None:
    topic = warnings_topic(bootstrap)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = alerts_process(
        tmp_path,
        bootstrap,
        topic,
        alertmanager_urls=url,
        alertmanager_username="slaops",
        alertmanager_password=PASSWORD,
        log_level="DEBUG",
    )
    with webhook() as hook, services(proc):
        proc.start().wait_log(r"caught up with", timeout_s=60)
        produce_all(bootstrap, topic, [record(raised("acme", 7))])
        proc.wait_log(r"did not answer.*try 3 again", timeout_s=30)
        with alertmanager(tmp_path, hook, port=port, users={"slaops": PASSWORD_HASH}):
            assert httpx2.get(f"{url}/api/v2/alerts", timeout=5).status_code == 401
            wait_for(
                lambda: len(of(listed(url, ("slaops", PASSWORD)), "acme")) == 1,
                timeout_s=30,
                what="the raise delivered once Alertmanager is up",
            )
            wait_for(lambda: hook.count("acme", "firing") == 1, timeout_s=30, what="notified")
        proc.stop(timeout_s=30)
    logs = proc.all_logs()
    assert "sent 1 alerts to" in logs
    assert PASSWORD not in logs


@needs_alertmanager
def test_wrong_credentials_are_refused_and_named(bootstrap: str, tmp_path: Path) -> None:
    topic = warnings_topic(bootstrap)
    with webhook() as hook, alertmanager(tmp_path, hook, users={"slaops": PASSWORD_HASH}) as url:
        secret = "not-the-password-4711"  # noqa: S105 - the wrong one, on purpose
        proc = alerts_process(
            tmp_path,
            bootstrap,
            topic,
            alertmanager_urls=url,
            alertmanager_username="slaops",
            alertmanager_password=secret,
        )
        with services(proc):
            proc.start().wait_log(r"caught up with", timeout_s=60)
            produce_all(bootstrap, topic, [record(raised("acme", 8))])
            proc.wait_log(r"refused the credentials \(401\)", timeout_s=30)
            assert not listed(url, ("slaops", PASSWORD))
        assert secret not in proc.all_logs()


# -- the parts the service is built of, without Alertmanager -------------------------
def test_the_book_applies_each_edge_once_and_never_reactivates_an_ended_warning() -> None:
    book, now = AlertBook(max_active=2, max_ended=100), datetime.now(UTC)
    first, second = raised("acme", 1), raised("acme", 2, revision="rev-2")
    assert book.apply(first, now) == "raised"
    assert book.apply(first, now) == "repeat"
    assert book.apply(second, now) == "replaced"  # a new warning, the same alert
    assert book.apply(first, now) == "repeat", "the replaced raise came back"
    assert book.apply(cleared(second), now) == "cleared"
    assert book.apply(second, now) == "repeat" and not book.is_active("acme")
    (ended,) = book.take_ended()
    assert ended.warning_id == second.warning_id and ended.raised == second
    assert book.apply(raised("globex", 3), now) == "raised"
    assert book.apply(raised("initech", 4), now) == "raised"
    assert book.apply(raised("umbrella", 5), now) == "full"
    assert len(book) == 2


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            {"alertmanager_urls": "http://am.example.org:9093", "alertmanager_bearer_token": "t"},
            "plain http to another host",
        ),
        ({"alertmanager_urls": "https://user:pw@am.example.org"}, "credentials in the URL"),
        ({"alertmanager_username": "slaops"}, "go together"),
        (
            {
                "alertmanager_username": "a",
                "alertmanager_password": "b",
                "alertmanager_bearer_token": "c",
            },
            "not both",
        ),
        ({"extra_labels": {"tenant": "x"}}, "set by the service"),
        ({"alertmanager_urls": "ftp://127.0.0.1"}, "http:// or https://"),
    ],
)
def test_settings_refuse_credentials_that_could_leak(
    overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings(AlertsSettings, overrides)
    for value in ("pw", "t"):
        assert f"{value}@" not in str(caught.value) and f"'{value}'" not in str(caught.value)


def test_credentials_on_loopback_or_https_are_taken() -> None:
    settings = load_settings(
        AlertsSettings,
        {
            "alertmanager_urls": "http://127.0.0.1:9093, https://am.example.org/am/",
            "alertmanager_username": "slaops",
            "alertmanager_password": PASSWORD,
        },
    )
    assert settings.urls() == ("http://127.0.0.1:9093", "https://am.example.org/am")
    assert PASSWORD not in repr(settings)
