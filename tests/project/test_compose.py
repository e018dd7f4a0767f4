"""`docker-compose.yml`, `Dockerfile` and `.dockerignore`, checked without Docker.

The app services are checked against the CLI itself: each runs a real `slaops`
subcommand with real flags, sets only environment variables that are settings of that
subcommand, and its settings load from the compose defaults.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from consumer.settings import ConsumerSettings
from kernel.settings import setting_sources
from schemas import topics
from slaops.cli import build_parser, commands, settings_from_args
from testkit.paths import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

#: Compose service → the `slaops` subcommand it runs.
APP_SERVICES = {"consumer": "consume", "retrainer": "retrain", "simulator": "simulate"}
#: Services that run until stopped (the simulator sends its stream and exits).
LONG_RUNNING = ("consumer", "retrainer")
#: Values given to required (`${NAME:?message}`) variables when settings are loaded.
PLACEHOLDERS = {"HF_TOKEN": "hf_" + "x" * 34, "SLAOPS_TENANT_KEY": "k7Q2x9Lm" * 8}

_SUBSTITUTION = re.compile(
    r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}$"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _settings_class(subcommand: str) -> type[BaseSettings]:
    available = commands()
    if subcommand not in available:
        pytest.skip(
            f"`slaops {subcommand}` is not a subcommand yet (commands(): {sorted(available)})"
        )
    return available[subcommand][1]


def _env_names(cls: type[BaseSettings]) -> set[str]:
    return {setting_sources(name).split(" or ")[0] for name in cls.model_fields}


def _flags(cls: type[BaseSettings]) -> set[str]:
    flags: set[str] = set()
    for name, info in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        flags.add(flag)
        if info.annotation is bool:
            flags.add("--no-" + name.replace("_", "-"))
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            flags.update(str(f) for f in extra.get("flags", []))  # type: ignore[union-attr]
    return flags


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def _substitution(value: Any) -> re.Match[str] | None:
    return _SUBSTITUTION.match(value) if isinstance(value, str) else None


def _resolve(name: str, value: Any) -> str | None:
    """The value compose passes with a clean shell: defaults taken, required ones filled."""
    if value is None:  # `NAME:` with no value: passed through from the shell, here unset
        return None
    if isinstance(value, bool):
        return str(value).lower()
    match = _substitution(value)
    if match is None:
        return str(value)
    if match["op"] in (":-", "-"):
        return match["arg"]
    if match["op"] in (":?", "?"):
        return PLACEHOLDERS.get(match["name"], "x" * 32)
    return None


def _default(value: Any) -> str | None:
    match = _substitution(value)
    return match["arg"] if match and match["op"] in (":-", "-") else None


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _dockerfile_instructions() -> list[str]:
    """Instructions without comments, continuation lines joined."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def _schema_topics() -> set[str]:
    return {
        value
        for key, value in vars(topics).items()
        if key.isupper()
        and isinstance(value, str)
        and re.fullmatch(topics.TOPIC_NAME_PATTERN, value)
    }


def _created_topics(service: dict[str, Any]) -> dict[str, list[str]]:
    """topic → the kafka-topics.sh --create arguments that make it."""
    script = "\n".join(_command(service))
    created: dict[str, list[str]] = {}
    for line in script.splitlines():
        if "kafka-topics.sh" not in line or "--create" not in line:
            continue
        args = shlex.split(line)
        created[args[args.index("--topic") + 1]] = args
    return created


def test_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "topics", *APP_SERVICES} <= set(services)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_builds_the_project_image(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    build = services[name]["build"]
    if isinstance(build, str):
        build = {"context": build}
    context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    assert context in (".", "./")
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE


@pytest.mark.parametrize(("name", "subcommand"), APP_SERVICES.items())
def test_app_command_is_a_real_subcommand_with_real_flags(
    services: dict[str, dict[str, Any]], name: str, subcommand: str
) -> None:
    command = _command(services[name])
    assert command[0] == subcommand, f"{name} should run `slaops {subcommand}`"
    cls = _settings_class(subcommand)
    flags = _flags(cls)
    used = [arg.split("=", 1)[0] for arg in command[1:] if arg.startswith("-")]
    unknown = [flag for flag in used if flag not in flags]
    assert not unknown, f"{name}: not flags of `slaops {subcommand}`: {unknown}"


@pytest.mark.parametrize(("name", "subcommand"), APP_SERVICES.items())
def test_app_environment_names_are_settings(
    services: dict[str, dict[str, Any]], name: str, subcommand: str
) -> None:
    env = _environment(services[name])
    assert env, f"{name} is configured by environment"
    unknown = sorted(set(env) - _env_names(_settings_class(subcommand)))
    assert not unknown, f"{name}: not settings of `slaops {subcommand}`: {unknown}"


@pytest.mark.parametrize(("name", "subcommand"), APP_SERVICES.items())
def test_app_settings_load_from_compose_defaults(
    services: dict[str, dict[str, Any]],
    name: str,
    subcommand: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The values (defaults, flags) are valid, not just the names."""
    cls = _settings_class(subcommand)
    for env_name in _env_names(cls):
        monkeypatch.delenv(env_name, raising=False)
    for env_name, value in _environment(services[name]).items():
        resolved = _resolve(env_name, value)
        if resolved is not None:
            monkeypatch.setenv(env_name, resolved)
    try:
        args = build_parser().parse_args(_command(services[name]))
    except SystemExit:
        pytest.fail(f"{name}: `slaops {' '.join(_command(services[name]))}` does not parse")
    settings = settings_from_args(cls, args)
    assert settings.bootstrap_servers == _environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"]


def test_app_services_reach_kafka_on_its_internal_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka_env = _environment(services["kafka"])
    advertised = {
        listener.split("://", 1)[1]
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    internal = {address for address in advertised if not address.startswith("localhost:")}
    assert internal, "kafka needs a listener the other containers can reach"
    for name in APP_SERVICES:
        assert _environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"] in internal, name
    topics_script = "\n".join(_command(services["topics"]))
    assert all(f"--bootstrap-server {address}" in topics_script for address in internal)


def test_kafka_is_a_single_kraft_node_with_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = {key: str(value) for key, value in _environment(kafka).items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert "ZOOKEEPER" not in " ".join(env)
    check = " ".join(kafka["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-topics.sh" in check and "--list" in check


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully", name


def test_long_running_services_restart(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
    assert str(services["topics"].get("restart", "no")) == "no"


def test_topics_service_creates_every_topic(services: dict[str, dict[str, Any]]) -> None:
    service = services["topics"]
    assert service["image"] == services["kafka"]["image"]
    created = _created_topics(service)
    missing = sorted(_schema_topics() - set(created))
    assert not missing, f"topics does not create {missing}"
    for topic, args in created.items():
        assert "--if-not-exists" in args, topic
        assert args[args.index("--replication-factor") + 1] == "1", topic
    checkpoints = created[topics.CONSUMER_CHECKPOINTS]
    assert checkpoints[checkpoints.index("--config") + 1] == "cleanup.policy=compact"
    telemetry = created[topics.TELEMETRY]
    partitions = ConsumerSettings.model_fields["telemetry_partitions"].default
    assert telemetry[telemetry.index("--partitions") + 1] == str(partitions)


def test_hub_is_configured_by_hf_token_and_an_hf_store(
    services: dict[str, dict[str, Any]],
) -> None:
    retrainer = _environment(services["retrainer"])
    assert "HF_TOKEN" in retrainer
    store = _default(retrainer["SLAOPS_STORE"])
    assert store is not None and re.fullmatch(r"hf://[^/\s]+/[^/\s]+", store), store
    consumer = _environment(services["consumer"])
    # The consumer loads the models the retrainer publishes: same store, same tenant key.
    for key in ("SLAOPS_STORE", "SLAOPS_TENANT_KEY", "HF_TOKEN"):
        assert consumer[key] == retrainer[key], key


@pytest.mark.parametrize("name", APP_SERVICES)
def test_secrets_come_from_the_shell(services: dict[str, dict[str, Any]], name: str) -> None:
    env = _environment(services[name])
    for key in ("HF_TOKEN", "SLAOPS_TENANT_KEY", "SLAOPS_KAFKA_PROPERTIES"):
        if key in env:
            match = _substitution(env[key])
            assert match is not None and match["name"] == key, f"{name}: {key} is written out"
            assert match["op"] in (None, ":?", "?"), f"{name}: {key} has a default"


def test_simulator_drift_flag_is_json(services: dict[str, dict[str, Any]]) -> None:
    command = _command(services["simulator"])
    if "--drift" in command:
        assert isinstance(json.loads(command[command.index("--drift") + 1]), list)


def test_dockerfile_installs_cpu_torch_before_the_project() -> None:
    instructions = _dockerfile_instructions()
    text = "\n".join(instructions)
    assert instructions[0].split()[:2] == ["FROM", "python:3.11-slim"]
    torch_line = next(line for line in instructions if "torch==2.13.0" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line
    assert text.index("torch==2.13.0") < text.index("pip install '.[dask]'")
    assert "--extra-index-url" not in text
    # No other install names an unpinned torch.
    assert not re.search(r"\btorch(?![=\w.-])", text.replace("torch==2.13.0", "")), text


def test_dockerfile_runs_slaops_as_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    entrypoint = next(line for line in instructions if line.startswith("ENTRYPOINT "))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["slaops"]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".slaops"} <= ignored
    assert not {"README.md", "pyproject.toml", "slaops"} & ignored


# ---- Dask: the retrainer's search fits (search_backend=dask) ----
#: Compose service -> the `dask` subcommand it runs.
DASK_SERVICES = {
    "dask-scheduler": "scheduler",
    "dask-worker-1": "worker",
    "dask-worker-2": "worker",
}


def _dask_cli_flags(subcommand: str) -> set[str]:
    """The flags the installed `dask scheduler` / `dask worker` accept."""
    if subcommand == "scheduler":
        from distributed.cli.dask_scheduler import main as cli
    else:
        from distributed.cli.dask_worker import main as cli
    return {
        opt
        for param in cli.params
        for opt in [*param.opts, *getattr(param, "secondary_opts", [])]
        if opt.startswith("--")
    }


def _dask_scheduler_address(services: dict[str, dict[str, Any]]) -> str:
    command = _command(services["dask-scheduler"])
    port = command[command.index("--port") + 1] if "--port" in command else "8786"
    return f"tcp://dask-scheduler:{port}"


@pytest.mark.parametrize(("name", "subcommand"), DASK_SERVICES.items())
def test_dask_services_run_the_project_image_with_real_dask_flags(
    services: dict[str, dict[str, Any]], name: str, subcommand: str
) -> None:
    pytest.importorskip("distributed")
    service = services[name]
    build = service["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert service["image"] == services["retrainer"]["image"]  # the same slaops and torch
    assert service["entrypoint"] == ["dask"]
    command = _command(service)
    assert command[0] == subcommand
    unknown = [arg for arg in command[1:] if arg.startswith("-")]
    unknown = [flag for flag in unknown if flag not in _dask_cli_flags(subcommand)]
    assert not unknown, f"{name}: not flags of `dask {subcommand}`: {unknown}"
    assert service["restart"] == "unless-stopped"
    assert "ports" not in service, f"{name}: Dask's protocol carries pickles; keep it private"


def test_dask_workers_have_one_thread_and_the_retrainer_uses_their_scheduler(
    services: dict[str, dict[str, Any]],
) -> None:
    address = _dask_scheduler_address(services)
    workers = [name for name, sub in DASK_SERVICES.items() if sub == "worker"]
    assert len(workers) == 2
    for name in workers:
        command = _command(services[name])
        assert command[1] == address, name
        assert command[command.index("--nthreads") + 1] == "1", name
        depends = services[name]["depends_on"]
        assert depends["dask-scheduler"]["condition"] == "service_started", name
    retrainer = services["retrainer"]
    env = _environment(retrainer)
    assert _default(env["SLAOPS_SEARCH_BACKEND"]) == "dask"
    assert _default(env["SLAOPS_DASK_SCHEDULER"]) == address
    assert retrainer["depends_on"]["dask-scheduler"]["condition"] == "service_started"


# -- observability: Prometheus, Grafana, health checks -------------------------------
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
#: Compose service → the settings class whose metrics port it serves.
OBSERVED = {"consumer": "consume", "retrainer": "retrain"}


def _exposed_series() -> set[str]:
    """Every series the two services' registries expose (the follower's ones included)."""
    from pydantic import SecretStr

    from consumer.core import CoreConfig, IngestCore
    from consumer.follower import AnswerFollower, AnswerTopics
    from consumer.observability import ConsumerMetrics
    from kernel.model_follower import ModelAuthority
    from kernel.observability import series_names
    from kernel.store import open_store
    from retrainer.observability import RetrainerMetrics

    store = "file:///nonexistent"
    follower = AnswerFollower(  # built, never started: no connection
        client_config={"bootstrap.servers": "127.0.0.1:9"},
        topics=AnswerTopics(
            models_topic=topics.MODELS,
            failures_topic=topics.RETRAIN_FAILURES,
            decisions_topic=topics.RETRAIN_DECISIONS,
        ),
        authority=ModelAuthority(open_store(store), store, SecretStr("k7Q2x9Lm" * 8)),
    )
    consumer = ConsumerMetrics(core=IngestCore(CoreConfig(telemetry_topic="t")), follower=follower)
    return series_names(consumer.registry) | series_names(RetrainerMetrics().registry)


def _dashboard_queries() -> list[str]:
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            queries += [target["expr"] for target in panel["targets"]]
    return queries


def test_prometheus_and_grafana_are_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"prometheus", "grafana"} <= set(services)
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts a missing {source}"


def test_prometheus_scrapes_both_services_on_their_metrics_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for name, subcommand in OBSERVED.items():
        env = _environment(services[name])
        port = int(env.get("SLAOPS_METRICS_PORT") or 0) or (
            _settings_class(subcommand).model_fields["metrics_port"].default
        )
        assert f"{name}:{port}" in targets, name
        assert env["SLAOPS_METRICS_HOST"] == "0.0.0.0", f"{name} must listen beyond loopback"  # noqa: S104


@pytest.mark.parametrize("name", OBSERVED)
def test_app_healthchecks_ask_healthz_with_python_not_curl(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    test = services[name]["healthcheck"]["test"]
    command = " ".join(test)
    port = _environment(services[name])["SLAOPS_METRICS_PORT"]
    assert test[:3] == ["CMD", "python", "-c"] and "curl" not in command
    assert f"http://127.0.0.1:{port}/healthz" in command and "urllib.request" in command


def test_grafana_provisions_the_datasource_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "slaops.yml").read_text())
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert {p["options"]["path"] for p in providers["providers"]} <= mounted
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards
    for path in dashboards:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    text = " ".join(_dashboard_queries())
    for needed in (
        "slaops_consumer_records_consumed_total",  # throughput
        "slaops_consumer_lag_records",  # lag
        "slaops_consumer_dead_letters_total",  # dead-letter rate
        "slaops_consumer_drift_alarms_total",  # drift rate
        "slaops_retrainer_requests_total",  # retrain rate, models published
        "slaops_retrainer_search_duration_seconds_bucket",  # search time
        "slaops_retrainer_request_to_announcement_seconds_bucket",  # request to model
        "slaops_consumer_models_refused_total",  # models refused
        "slaops_consumer_forecast_errors_total",  # live error rate
    ):
        assert needed in text, needed


def test_every_metric_the_dashboard_queries_is_exposed() -> None:
    referenced = {
        name for query in _dashboard_queries() for name in re.findall(r"\bslaops_\w+", query)
    }
    assert referenced
    missing = sorted(referenced - _exposed_series())
    assert not missing, f"the dashboard queries series no service exposes: {missing}"
