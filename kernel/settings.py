"""Settings shared by every service: the broker, client passthrough, logging.

Each service subclasses `ServiceSettings`; `main` builds one frozen instance from the
environment (`SLAOPS_*`, plus `KAFKA_BOOTSTRAP_SERVERS`) and CLI flags, and passes it in.
Core code never reads `os.environ`.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from kernel.errors import ConfigError
from kernel.http_guard import parse_host_list
from kernel.logs import LogFormat
from kernel.store import ModelStore, StoreOptions, open_store
from kernel.tenant_hash import load_or_create_local_key, weak_key_problem
from kernel.time_rule import TimeRule
from schemas.topics import TOPIC_NAME_PATTERN


def _kafka_topic_name(value: str) -> str:
    if value in (".", ".."):  # the pattern allows them; Kafka does not
        raise ValueError("a topic may not be named '.' or '..': choose another name")
    return value


TopicName = Annotated[str, Field(pattern=TOPIC_NAME_PATTERN), AfterValidator(_kafka_topic_name)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
S = TypeVar("S", bound=BaseSettings)

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
#: librdkafka properties slaops sets itself; passing them through would break guarantees.
_RESERVED_PROPERTIES = frozenset(
    {"bootstrap.servers", "group.id", "enable.auto.commit", "enable.idempotence", "acks"}
)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SLAOPS_", frozen=True, extra="forbid", populate_by_name=True
    )

    bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers"),
        description="Kafka bootstrap servers, host:port[,host:port] (env KAFKA_BOOTSTRAP_SERVERS).",
    )
    kafka_properties: dict[str, SecretStr] = Field(
        default_factory=dict,
        description=(
            "Extra librdkafka client properties as a JSON object, e.g. "
            '{"security.protocol":"SASL_SSL","sasl.mechanism":"PLAIN",...}; values are secret.'
        ),
    )
    embedded_broker: bool = Field(
        default=False,
        description="With no bootstrap servers, start an embedded tansu broker on loopback.",
    )
    session_timeout_ms: int = Field(
        default=45_000, ge=1_000, le=3_600_000, description="Consumer group session timeout."
    )
    connect_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3_600,
        description="At start-up, a command that needs the broker waits this long for it to "
        "answer, then fails naming the address it tried (a running service keeps waiting "
        "through an outage).",
    )
    log_level: LogLevel = Field(default="INFO", description="Log level.")
    log_format: LogFormat = Field(
        default="text",
        description="Log lines as text, or json: one object a line with ts, level, logger, "
        "message and the tenant, partition, offset, event_id, revision the record carries "
        "(never read from the message text).",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None:
            return None
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers or not all(_HOST_PORT.match(s) for s in servers):
            raise ValueError("expected host:port[,host:port], e.g. 127.0.0.1:9092")
        return ",".join(servers)

    @field_validator("kafka_properties")
    @classmethod
    def _check_properties(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        reserved = sorted(_RESERVED_PROPERTIES.intersection(value))
        if reserved:
            raise ValueError(f"slaops sets {', '.join(reserved)} itself; remove them")
        bad = [k for k in value if not re.fullmatch(r"[a-z0-9._]{1,100}", k)]
        if bad:
            raise ValueError(
                f"not a librdkafka property name: {bad[0]!r} (names are lower-case letters, "
                "digits, '.' and '_', e.g. security.protocol)"
            )
        return value

    def require_bootstrap(self) -> str:
        if self.bootstrap_servers is None:
            raise ConfigError(
                "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers), "
                "or pass --embedded-broker for a local one"
            )
        return self.bootstrap_servers


def load_settings(cls: type[S], overrides: dict[str, Any]) -> S:
    """Build settings from the environment and CLI overrides, or fail naming the setting."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            if err["loc"]:
                name = str(err["loc"][0])
                problems.append(f"{name} ({setting_sources(name)}): {err['msg']}")
            else:  # a rule across settings: its message names them
                problems.append(str(err["msg"]))
        raise ConfigError("invalid settings: " + "; ".join(problems)) from exc
    except SettingsError as exc:  # a JSON-valued environment variable that does not parse
        match = re.search(r'field "(\w+)"', str(exc))
        if match is None:
            raise ConfigError(f"invalid settings: {exc}") from exc
        name = match.group(1)
        raise ConfigError(
            f"invalid settings: {name} ({setting_sources(name)}): not valid JSON"
        ) from exc


#: Settings read from the environment variables their ecosystems already use.
ECOSYSTEM_VARIABLES = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "hf_token": "HF_TOKEN",
    "hf_endpoint": "HF_ENDPOINT",
}


def setting_sources(name: str) -> str:
    """Where a user sets `name`: its environment variable and its CLI flag."""
    env = ECOSYSTEM_VARIABLES.get(name, f"SLAOPS_{name.upper()}")
    return f"{env} or --{name.replace('_', '-')}"


class TopicSettings(ServiceSettings):
    """Settings of services that create slaops topics (consumer, retrainer, simulator).

    One partition count for every topic keyed by tenant, so the topics look the same
    whichever service creates them first (`kernel.kafka.slaops_topics`).
    """

    telemetry_partitions: int = Field(
        default=6,
        ge=1,
        le=10_000,
        description=(
            "Partitions of sla.telemetry and of every other topic keyed by tenant when "
            "slaops creates them (the checkpoint topic has one); existing topics are kept."
        ),
    )


class StoreSettings(ServiceSettings):
    """Settings of services that read or write the model store (retrainer, consumer)."""

    store: str | None = Field(
        default=None,
        description="Model store: file://DIR or hf://OWNER/REPO (local mode: DATA_DIR/models).",
    )
    tenant_key: SecretStr | None = Field(
        default=None, description="Secret key of the HMAC that hashes tenant slugs in paths."
    )
    local_mode: bool = Field(
        default=False,
        description="Embedded use: generate the tenant key once, keep it in data_dir.",
    )
    data_dir: Path = Field(default=Path(".slaops"), description="Local state directory.")
    hf_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("HF_TOKEN", "hf_token"),
        description="Hugging Face token for hf:// stores (env HF_TOKEN).",
    )
    hf_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("HF_ENDPOINT", "hf_endpoint"),
        description="Hub endpoint for hf:// stores (env HF_ENDPOINT).",
    )
    hf_private: bool = Field(default=True, description="Create the Hub repo private.")
    hub_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of each Hub request.")

    def store_uri(self) -> str:
        if self.store is not None:
            return self.store
        if self.local_mode:
            return f"file://{(self.data_dir / 'models').resolve()}"
        raise ConfigError(
            "no model store: set SLAOPS_STORE (or --store) to file://DIR or hf://OWNER/REPO, "
            "or pass --local-mode for a store in the local data directory"
        )

    def open_model_store(self, *, sleep: Callable[[float], None] = time.sleep) -> ModelStore:
        """The configured store; `sleep` is its pause between retries (metrics count them)."""
        try:
            options = StoreOptions(
                token=self.hf_token,
                endpoint=self.hf_endpoint,
                private=self.hf_private,
                http_timeout_s=self.hub_timeout_s,
                sleep=sleep,
            )
            return open_store(self.store_uri(), options)
        except ValueError as exc:
            raise ConfigError(f"store (SLAOPS_STORE or --store): {exc}") from exc

    def tenant_secret(self) -> SecretStr:
        if self.tenant_key is not None:
            problem = weak_key_problem(self.tenant_key.get_secret_value())
            if problem is not None:
                raise ConfigError(f"tenant_key (SLAOPS_TENANT_KEY): {problem}")
            return self.tenant_key
        if self.local_mode:
            return load_or_create_local_key(self.data_dir)
        raise ConfigError(
            "no tenant key: set SLAOPS_TENANT_KEY (a long random secret; it hashes tenant "
            "slugs in store paths), or pass --local-mode to generate one in the local data "
            "directory"
        )


_RULE: Final = TimeRule()


class EventTimeSettings(ServiceSettings):
    """The time rule (`kernel.time_rule`) of every service that reads telemetry.

    The consumer, the retrainer's replay and `slaops report` judge event times by the
    same rule: give them the same values.
    """

    window_span_s: float = Field(
        default=_RULE.span_s,
        gt=0,
        description="Time span of a tenant's window (event time); an event more than this "
        "before its tenant's newest is refused (past_ts).",
    )
    max_future_s: float = Field(
        default=_RULE.max_future_s,
        ge=0,
        le=7 * 86_400,
        description="Events stamped more than this after the reader's clock are refused "
        "(future_ts): one far-future stamp would empty its tenant's window.",
    )
    max_past_s: float = Field(
        default=_RULE.max_past_s,
        ge=0,
        description="Events stamped more than this before the reader's clock are refused "
        "(past_ts), as are those more than window_span_s before their tenant's newest "
        "event; 0: only the window bound. The consumer dead-letters them; the retrainer's "
        "replay and the report skip and count them.",
    )

    def time_rule(self) -> TimeRule:
        return TimeRule(self.max_future_s, self.window_span_s, self.max_past_s)


class ObservabilitySettings(ServiceSettings):
    """Settings of services that serve metrics and health on a port (consumer, retrainer).

    Each service sets its own default port (`ConsumerSettings`, `RetrainerSettings`).
    """

    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65_535,
        description="Port of /metrics (Prometheus), /healthz and /readyz; 0 turns them off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9.\-:]+$",
        description="Host name, IPv4 or IPv6 address the metrics port listens on: loopback "
        "by default; 0.0.0.0 (or ::) to be scraped from other hosts or containers.",
    )
    metrics_allowed_hosts: str = Field(
        default="",
        max_length=4_000,
        description="Host names the metrics port answers for besides localhost, 127.0.0.1, "
        "::1 and metrics_host, comma-separated (e.g. the service's name in compose); any "
        "other Host header gets 421 (DNS rebinding). * answers every host.",
    )
    liveness_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="/healthz fails once the poll loop (or the consumer's model follower) "
        "has made no progress for this long.",
    )

    @field_validator("metrics_host")
    @classmethod
    def _check_metrics_host(cls, value: str) -> str:
        if ":" in value:
            try:
                ipaddress.IPv6Address(value)
            except ValueError:
                raise ValueError("expected a host name, an IPv4 or an IPv6 address") from None
        return value

    @field_validator("metrics_allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: str) -> str:
        return ",".join(parse_host_list(value))

    def allowed_metrics_hosts(self) -> tuple[str, ...]:
        """`metrics_allowed_hosts` as a tuple of names (``("*",)`` answers any host)."""
        return parse_host_list(self.metrics_allowed_hosts)
