"""The one adapter to Alertmanager: POST /api/v2/alerts, its answers as slaops errors.

Credentials go in the `Authorization` header only, to the URL given (redirects are not
followed, so they never reach another host), and no proxy is taken from the
environment. Error messages name the URL and the status, never a credential or a
body we sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import httpx2
from pydantic import SecretStr

from kernel.errors import SlaopsError
from kernel.logs import visible

log = logging.getLogger(__name__)

#: Alerts in one POST; a longer list goes in several.
MAX_ALERTS_PER_POST = 500


class AlertmanagerError(SlaopsError, ConnectionError):
    """Alertmanager did not take the alerts; retry later (transient unless refused)."""

    transient = True


class AlertmanagerRefused(AlertmanagerError):
    """401/403: the credentials are wrong for this Alertmanager; fix the settings."""

    transient = False


class AlertmanagerClient:
    """Posts alerts to one Alertmanager. `post` returns when every alert was accepted
    (200), or when Alertmanager refused some as invalid (400: it kept the valid ones,
    and a retry would be refused again; logged). Raises `AlertmanagerRefused` on 401
    or 403 and `AlertmanagerError` on anything else (connection, timeout, 5xx)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        username: str | None = None,
        password: SecretStr | None = None,
        bearer_token: SecretStr | None = None,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.endpoint = f"{url}/api/v2/alerts"
        headers = {"Content-Type": "application/json", "User-Agent": "slaops-alerts"}
        auth: httpx2.Auth | None = None
        if username is not None and password is not None:
            auth = httpx2.BasicAuth(username, password.get_secret_value())
        elif bearer_token is not None:
            headers["Authorization"] = f"Bearer {bearer_token.get_secret_value()}"
        self._client = httpx2.Client(
            auth=auth,
            headers=headers,
            timeout=httpx2.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def post(self, alerts: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(alerts), MAX_ALERTS_PER_POST):
            self._post(alerts[start : start + MAX_ALERTS_PER_POST])

    def _post(self, alerts: Sequence[dict[str, Any]]) -> None:
        body = json.dumps(list(alerts), separators=(",", ":")).encode()
        try:
            response = self._client.post(self.endpoint, content=body)
        except httpx2.HTTPError as exc:
            raise AlertmanagerError(
                f"Alertmanager {self.url} did not answer: {type(exc).__name__}: "
                f"{visible(str(exc)[:200])}"
            ) from None
        status = response.status_code
        if status == 200:
            return
        detail = visible(response.text[:300])
        if status == 400:
            log.error("Alertmanager %s refused some alerts as invalid (400): %s", self.url, detail)
            return
        if status in (401, 403):
            raise AlertmanagerRefused(
                f"Alertmanager {self.url} refused the credentials ({status}): check "
                "alertmanager_username/_password or alertmanager_bearer_token"
            )
        raise AlertmanagerError(f"Alertmanager {self.url} answered {status}: {detail}")
