"""`slaops alerts` settings: where the warnings come from, which Alertmanagers get them.

Credentials are secrets (`SecretStr`, never logged or shown by `--help`) and go only to
the URLs named here: https, or plain http on loopback. A URL may not carry them itself.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from kernel.settings import ServiceSettings, TopicName
from schemas import topics

#: Alertmanager's label names (Prometheus's classic rule).
LABEL_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: Labels the service sets itself; `extra_labels` may not replace them.
OWN_LABELS: Final = frozenset({"alertname", "tenant", "severity", "service"})
MAX_URLS: Final = 8
_LOOPBACK_NAMES: Final = frozenset({"localhost", "ip6-localhost"})


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_alertmanager_url(url: str) -> str:
    """One Alertmanager base URL, normalised (no trailing slash); ValueError if unusable.

    >>> parse_alertmanager_url("http://127.0.0.1:9093/")
    'http://127.0.0.1:9093'
    >>> parse_alertmanager_url("https://am.example.org/alertmanager")
    'https://am.example.org/alertmanager'
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "credentials in the URL are refused (they would be logged): set "
            "alertmanager_username and alertmanager_password, or alertmanager_bearer_token"
        )
    if parts.query or parts.fragment:
        raise ValueError("the URL may not have a query or a fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class AlertsSettings(ServiceSettings):
    warnings_topic: TopicName = Field(
        default=topics.WARNINGS, description="Warning edges in (WarningRaised, WarningCleared)."
    )
    alertmanager_urls: str = Field(
        default="http://127.0.0.1:9093",
        min_length=1,
        max_length=4_000,
        description="Alertmanager base URLs, comma-separated (each gets every alert, as "
        "Prometheus sends to every member of an HA cluster); alerts go to "
        "URL/api/v2/alerts. https, or http on loopback when credentials are set.",
    )
    alertmanager_username: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Basic-auth user name (with alertmanager_password).",
    )
    alertmanager_password: SecretStr | None = Field(
        default=None, description="Basic-auth password (secret; never logged)."
    )
    alertmanager_bearer_token: SecretStr | None = Field(
        default=None,
        description="Bearer token sent as `Authorization: Bearer ...` (secret; never logged); "
        "not with basic auth.",
    )
    alertmanager_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Timeout of each POST to an Alertmanager."
    )
    resend_interval_s: float = Field(
        default=60.0,
        ge=0.5,
        le=3_600,
        description="Active warnings are sent again this often, as Prometheus re-sends a "
        "firing alert, so Alertmanager does not resolve them by timeout.",
    )
    resends_until_end: int = Field(
        default=4,
        ge=2,
        le=100,
        description="Each send of an active warning has endsAt = now + this many resend "
        "intervals: if the service stops, Alertmanager resolves the alert after that.",
    )
    retry_base_s: float = Field(
        default=1.0, gt=0, le=600, description="First pause after a failed POST (doubling)."
    )
    retry_max_s: float = Field(
        default=60.0, gt=0, le=3_600, description="Longest pause between tries of a POST."
    )
    alertname: str = Field(
        default="SlaBreachExpected",
        pattern=r"^[A-Za-z_][A-Za-z0-9_:]{0,127}$",
        description="The alertname label of every warning.",
    )
    severity: str = Field(
        default="warning",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The severity label (route on it in Alertmanager).",
    )
    service_label: str = Field(
        default="slaops",
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description="The service label: which system raised the warning.",
    )
    extra_labels: dict[str, str] = Field(
        default_factory=dict,
        description='More labels on every alert, a JSON object, e.g. {"team":"sre"}; '
        "not alertname, tenant, severity or service.",
    )
    runbook_url: str = Field(
        default="",
        max_length=2_000,
        description="runbook_url annotation of every alert (none if empty).",
    )
    generator_url: str = Field(
        default="",
        max_length=2_000,
        description="generatorURL of every alert, e.g. a dashboard (none if empty).",
    )
    max_active_warnings: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Active warnings held (one a tenant); a raise beyond it is logged and dropped.",
    )
    max_remembered_ids: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="Ended warning ids remembered, so a repeated raise of one (a "
        "consumer's replay) is not sent as active again.",
    )
    max_record_bytes: int = Field(
        default=16_384,
        ge=1_024,
        le=1_048_576,
        description="Records on warnings_topic larger than this are refused.",
    )

    @field_validator("alertmanager_urls")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("name at least one Alertmanager URL")
        if len(urls) > MAX_URLS:
            raise ValueError(f"at most {MAX_URLS} Alertmanager URLs")
        parsed = [parse_alertmanager_url(u) for u in urls]
        if len(set(parsed)) != len(parsed):
            raise ValueError("an Alertmanager URL is named twice")
        return ",".join(parsed)

    @field_validator("extra_labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32:
            raise ValueError("at most 32 extra labels")
        for name, label in value.items():
            if not LABEL_NAME.match(name) or name.startswith("__"):
                raise ValueError(f"not a label name: {name!r} (letters, digits, _)")
            if name in OWN_LABELS:
                raise ValueError(f"{name} is set by the service; choose another label")
            if not label or len(label) > 256:
                raise ValueError(f"label {name}: 1 to 256 characters")
        return value

    @field_validator("generator_url", "runbook_url")
    @classmethod
    def _check_link(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> AlertsSettings:
        basic = self.alertmanager_username is not None or self.alertmanager_password is not None
        if basic and (self.alertmanager_username is None or self.alertmanager_password is None):
            raise ValueError(
                "alertmanager_username and alertmanager_password go together: set both"
            )
        if basic and self.alertmanager_bearer_token is not None:
            raise ValueError(
                "set basic auth (alertmanager_username/_password) or "
                "alertmanager_bearer_token, not both"
            )
        if basic or self.alertmanager_bearer_token is not None:
            for url in self.urls():
                parts = urlsplit(url)
                if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
                    raise ValueError(
                        f"alertmanager_urls: {url} is plain http to another host, and "
                        "credentials would cross the network in clear; use https"
                    )
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("retry_base_s must not exceed retry_max_s")
        return self

    def urls(self) -> tuple[str, ...]:
        return tuple(self.alertmanager_urls.split(","))

    def lifetime_s(self) -> float:
        """How long after a send an active warning stays active in Alertmanager."""
        return self.resend_interval_s * self.resends_until_end
