"""Settings of `slaops retrain` (env `SLAOPS_*`, `HF_TOKEN`, `HF_ENDPOINT`; each a flag)."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from kernel.artifacts import MAX_TRIALS
from kernel.features import FeatureSpec
from kernel.settings import (
    EventTimeSettings,
    ObservabilitySettings,
    StoreSettings,
    TopicName,
    TopicSettings,
)
from retrainer.dataset import DEFAULT_MIN_ROWS
from retrainer.pipeline import TrainingConfig
from retrainer.replay import ReplayLimits
from retrainer.search import SearchConfig
from retrainer.selection import EvidenceRule
from retrainer.service import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_QUEUED, DEFAULT_RETRY
from retrainer.strategies import STRATEGIES, StrategyName, strategy_builder
from retrainer.strategies.bayes import check_choices
from schemas import topics
from schemas.retrain import MAX_REQUEST_BYTES, MAX_SOURCE_RANGES
from schemas.telemetry import DEFAULT_MAX_MESSAGE_BYTES

#: Parameters the grid may search, routed the skorch way.
GRID_KEYS = frozenset(
    {
        "lr",
        "max_epochs",
        "batch_size",
        "module__hidden_layers",
        "module__width",
        "module__dropout",
        "module__activation",
        "optimizer__weight_decay",
    }
)


_FEATURES = FeatureSpec()
_TRAINING = TrainingConfig(search=SearchConfig())
_EVIDENCE = EvidenceRule()
_STRATEGIES: Final = ", ".join(STRATEGIES)


def _known_strategy(name: StrategyName) -> StrategyName:
    strategy_builder(name)  # raises ValueError naming the known strategies
    return name


#: A key of `retrainer.strategies.STRATEGIES`, checked against it.
StrategyChoice = Annotated[str, AfterValidator(_known_strategy)]
#: A dask.distributed scheduler address: tcp or tls, a host name, IPv4 or [IPv6], a port.
_DASK_ADDRESS = re.compile(
    r"(?P<scheme>tcp|tls)://(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>\d{1,5})"
)


def loopback_scheduler(address: str) -> bool:
    """Whether a `tcp://`/`tls://` scheduler address names this machine's loopback.

    Only `localhost` and literal loopback addresses (127.0.0.0/8, ::1) count: a name is
    never resolved, since whoever controls DNS could point it anywhere.
    """
    match = _DASK_ADDRESS.fullmatch(address)
    if match is None:
        return False
    host = match["host"].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DaskTls:
    """Mutual TLS to a `tls://` scheduler: the CA that signed the scheduler's and the
    workers' certificates, and the retrainer's own certificate and key (PEM files; the
    key may be inside `cert_file`). Passed to `distributed.security.Security`."""

    ca_file: Path
    cert_file: Path
    key_file: Path | None = None


#: Why a `tcp://` scheduler off this machine is refused, and what to do instead.
INSECURE_DASK_MESSAGE: Final = (
    "dask_scheduler is a tcp:// address of another host: Dask's protocol carries pickles, "
    "unencrypted and unauthenticated, so anyone who can reach that scheduler (a rogue "
    "worker) runs code in this retrainer, which holds the Hub token and the tenant key. "
    "Use tls://HOST:PORT with dask_tls_ca_file, dask_tls_cert_file and dask_tls_key_file "
    "(SLAOPS_DASK_TLS_*), or, only on a private network that nothing but the retrainers "
    "and the workers reach, set dask_allow_insecure=true (SLAOPS_DASK_ALLOW_INSECURE)"
)


class RetrainerSettings(StoreSettings, TopicSettings, ObservabilitySettings, EventTimeSettings):
    retrain_topic: TopicName = Field(default=topics.RETRAIN, description="Retrain requests in.")
    telemetry_topic: TopicName = Field(
        default=topics.TELEMETRY, description="Telemetry the requests' offset ranges point into."
    )
    models_topic: TopicName = Field(default=topics.MODELS, description="ModelPublished out.")
    failures_topic: TopicName = Field(
        default=topics.RETRAIN_FAILURES, description="RetrainFailed out (unusable requests)."
    )
    decisions_topic: TopicName = Field(
        default=topics.RETRAIN_DECISIONS,
        description="ChampionKept out (a challenger that lost to the current model).",
    )
    group_id: str = Field(
        default="slaops-retrainer", pattern=r"^[A-Za-z0-9._-]{1,200}$", description="Group id."
    )
    max_poll_interval_ms: int = Field(
        default=300_000,
        ge=1_000,
        description="librdkafka max.poll.interval.ms (searches run beside the poll loop).",
    )
    strategy: StrategyChoice = Field(
        default=SearchConfig.strategy, description=f"Search strategy: {_STRATEGIES}."
    )
    grid: dict[str, list[Any]] | None = Field(
        default=None,
        description='Search grid as JSON, e.g. {"lr": [0.01, 0.001], "module__width": [32]}.',
    )
    grid_file: Path | None = Field(
        default=None, description="TOML file with a [grid] table (instead of `grid`)."
    )
    n_iter: int = Field(default=6, ge=1, description="Candidates drawn by the random strategy.")
    n_trials: int = Field(
        default=SearchConfig.n_trials,
        ge=1,
        le=MAX_TRIALS,
        description="Most candidates the bayes strategy fits (each grid list is a "
        "categorical choice; pruned trials count).",
    )
    n_splits: int = Field(default=5, ge=2, le=20, description="Time-series CV folds.")
    n_jobs: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Parallel fits with search_backend=local (with dask, the cluster's "
        "worker threads decide).",
    )
    search_backend: Literal["local", "dask"] = Field(
        default="local",
        description="Where the search's fits run: local (n_jobs processes here) or dask "
        "(the dask_scheduler's workers; needs the dask extra).",
    )
    dask_scheduler: str | None = Field(
        default=None,
        description="The dask.distributed scheduler of search_backend=dask, tcp://HOST:PORT "
        "or tls://HOST:PORT (unused with local). tcp:// to a host other than loopback needs "
        "dask_allow_insecure.",
    )
    dask_allow_insecure: bool = Field(
        default=False,
        description="Allow a tcp:// (unencrypted, unauthenticated) dask_scheduler on "
        "another host; only on a private network that nothing but the retrainers and the "
        "workers reach.",
    )
    dask_tls_ca_file: Path | None = Field(
        default=None,
        description="With a tls:// dask_scheduler: PEM file of the CA that signed the "
        "scheduler's and the workers' certificates.",
    )
    dask_tls_cert_file: Path | None = Field(
        default=None,
        description="With a tls:// dask_scheduler: PEM file of the retrainer's client "
        "certificate (signed by that CA; may hold the key too).",
    )
    dask_tls_key_file: Path | None = Field(
        default=None,
        description="With a tls:// dask_scheduler: PEM file of the client certificate's "
        "private key (unset when dask_tls_cert_file holds it).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of every fit and draw.")
    max_epochs: int = Field(
        default=SearchConfig.max_epochs,
        ge=1,
        le=10_000,
        description="Most epochs per fit (early stopping on the newest rows usually ends it).",
    )
    batch_size: int = Field(default=SearchConfig.batch_size, ge=1, description="Minibatch size.")
    patience: int = Field(
        default=SearchConfig.patience,
        ge=1,
        le=1_000,
        description="Stop a fit after this many epochs without a better validation log loss.",
    )
    horizon: int = Field(
        default=_TRAINING.horizon,
        ge=1,
        le=1_000,
        description="Forecast a breach within the next h intervals (and warn of it).",
    )
    lags: int = Field(
        default=_FEATURES.lags, ge=0, le=8, description="Previous events' metrics as features."
    )
    rolling_window: int = Field(
        default=_FEATURES.rolling_window,
        ge=2,
        le=1_440,
        description="Events in the rolling mean and std of latency and error rate.",
    )
    min_rows: int = Field(
        default=DEFAULT_MIN_ROWS, ge=20, description="Fewer usable rows fail the request."
    )
    warning_budget_per_day: float = Field(
        default=_EVIDENCE.budget_per_day,
        gt=0,
        le=1_000,
        description="False warnings a tenant-day the warning policy may cost.",
    )
    min_positives: int = Field(
        default=_EVIDENCE.min_positives,
        ge=1,
        description="Fewer out-of-fold rows followed by a breach: insufficient evidence.",
    )
    min_fresh_onsets: int = Field(
        default=_EVIDENCE.min_fresh_onsets,
        ge=1,
        description="Fewer new incidents out of fold: insufficient evidence.",
    )
    champion_confidence: float = Field(
        default=_EVIDENCE.confidence,
        ge=0,
        lt=1,
        description="Bootstrap confidence a challenger's gain needs to replace a champion "
        "(0: every challenger replaces it).",
    )
    max_request_ranges: int = Field(
        default=ReplayLimits.max_ranges,
        ge=1,
        le=MAX_SOURCE_RANGES,
        description="Offset ranges a retrain request may list; more refuse the request "
        "(the schema allows at most 64).",
    )
    max_request_bytes: int = Field(
        default=MAX_REQUEST_BYTES,
        ge=1_024,
        le=MAX_REQUEST_BYTES,
        description="A retrain request larger than this is refused unread (RetrainFailed, "
        "invalid_request) and its offset committed.",
    )
    max_queued: int = Field(
        default=DEFAULT_MAX_QUEUED,
        ge=1,
        le=1_000_000,
        description="Retrain requests held in memory at most; a full queue pauses the "
        "retrain topic's partitions until it is down to half.",
    )
    max_request_offsets: int = Field(
        default=ReplayLimits.max_offsets,
        ge=1,
        description="Offsets a request's merged ranges may span (all tenants of the "
        "partitions count); more refuse the request.",
    )
    replay_timeout_s: float = Field(
        default=60.0, gt=0, description="Give up replaying a request's offset ranges after this."
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=256, description="Telemetry size limit on replay."
    )
    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        description="Tries of a request whose error is not transient (401/403, unusable "
        "data, a bug) before a RetrainFailed ends it; transient errors (broker or store "
        "down, 429, 5xx, timeouts) are retried without limit.",
    )
    retry_backoff_s: float = Field(
        default=DEFAULT_RETRY.base_s,
        gt=0,
        description="First pause before a failed request is tried again; doubles per try, "
        "jittered.",
    )
    retry_max_backoff_s: float = Field(
        default=DEFAULT_RETRY.max_s,
        gt=0,
        description="Longest pause between tries of a failed request.",
    )
    metrics_port: int = Field(
        default=9465,
        ge=0,
        le=65_535,
        description="Port of /metrics (Prometheus), /healthz and /readyz; 0 turns them off.",
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if grid is None:
            return None
        unknown = sorted(set(grid) - GRID_KEYS)
        if unknown:
            raise ValueError(f"unknown grid parameter(s) {unknown}; known: {sorted(GRID_KEYS)}")
        empty = [k for k, values in grid.items() if not values]
        if empty:
            raise ValueError(f"grid parameter(s) {empty} have no values")
        return grid

    @field_validator("dask_scheduler")
    @classmethod
    def _check_dask_scheduler(cls, address: str | None) -> str | None:
        # The value is not echoed: a mistyped one might hold a password.
        if address is None:
            return None
        match = _DASK_ADDRESS.fullmatch(address)
        if match is None or not 0 < int(match["port"]) < 65_536:
            raise ValueError(
                "expected the scheduler's address as tcp://HOST:PORT or tls://HOST:PORT, "
                "e.g. tcp://dask-scheduler:8786 (no user or password)"
            )
        return address

    @model_validator(mode="after")
    def _check_search_backend(self) -> RetrainerSettings:
        if self.search_backend == "dask" and self.dask_scheduler is None:
            raise ValueError(
                "search_backend=dask needs dask_scheduler (SLAOPS_DASK_SCHEDULER or "
                "--dask-scheduler), e.g. tcp://dask-scheduler:8786"
            )
        if self.search_backend == "dask" and self.dask_scheduler is not None:
            self._check_dask_security(self.dask_scheduler)
        return self

    def _check_dask_security(self, address: str) -> None:
        tls_files = {
            "dask_tls_ca_file": self.dask_tls_ca_file,
            "dask_tls_cert_file": self.dask_tls_cert_file,
            "dask_tls_key_file": self.dask_tls_key_file,
        }
        if address.startswith("tcp://"):
            given = sorted(name for name, path in tls_files.items() if path is not None)
            if given:
                raise ValueError(
                    f"{', '.join(given)} set, but dask_scheduler is tcp://: use "
                    "tls://HOST:PORT for the certificates to be used"
                )
            if not self.dask_allow_insecure and not loopback_scheduler(address):
                raise ValueError(INSECURE_DASK_MESSAGE)
            return
        missing = [n for n in ("dask_tls_ca_file", "dask_tls_cert_file") if not tls_files[n]]
        if missing:
            raise ValueError(
                f"a tls:// dask_scheduler needs {' and '.join(missing)} "
                "(SLAOPS_DASK_TLS_CA_FILE, SLAOPS_DASK_TLS_CERT_FILE; and "
                "SLAOPS_DASK_TLS_KEY_FILE unless the certificate file holds the key): "
                "Dask's TLS is mutual, the scheduler checks the retrainer's certificate"
            )
        unreadable = sorted(
            name for name, path in tls_files.items() if path is not None and not path.is_file()
        )
        if unreadable:
            raise ValueError(f"{', '.join(unreadable)}: not a readable file")

    def dask_tls(self) -> DaskTls | None:
        """The TLS files of a tls:// dask_scheduler (checked at load), else None."""
        if self.dask_tls_ca_file is None or self.dask_tls_cert_file is None:
            return None
        return DaskTls(self.dask_tls_ca_file, self.dask_tls_cert_file, self.dask_tls_key_file)

    @model_validator(mode="after")
    def _check_backoff(self) -> RetrainerSettings:
        if self.retry_backoff_s > self.retry_max_backoff_s:
            raise ValueError("retry_backoff_s must not exceed retry_max_backoff_s")
        return self

    @model_validator(mode="after")
    def _check_grid_source(self) -> RetrainerSettings:
        if self.grid is not None and self.grid_file is not None:
            raise ValueError("give the grid either inline (grid) or as a file (grid_file)")
        if self.grid_file is not None:
            self._check_grid(load_grid_file(self.grid_file))
        return self

    @model_validator(mode="after")
    def _check_bayes_grid(self) -> RetrainerSettings:
        if self.strategy == "bayes":
            check_choices(self.search_grid() or {})
        return self

    def search_grid(self) -> dict[str, list[Any]] | None:
        if self.grid_file is not None:
            return load_grid_file(self.grid_file)
        return self.grid


def load_grid_file(path: Path) -> dict[str, list[Any]]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read grid file {path}: {exc}") from exc
    grid = document.get("grid")
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise ValueError(f"{path} needs a [grid] table of lists, e.g. lr = [0.01, 0.001]")
    return grid
