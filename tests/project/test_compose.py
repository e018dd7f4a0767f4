"""`docker-compose.yml`, `Dockerfile` and `.dockerignore`, checked without Docker.

The app services are checked against the CLI itself: each runs a real `slaops`
subcommand with real flags, sets only environment variables that are settings of that
subcommand, and its settings load from the compose defaults.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import PurePosixPath
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
PLACEHOLDERS = {
    "HF_TOKEN": "hf_" + "x" * 34,
    "HF_READ_TOKEN": "hf_" + "r" * 34,
    "SLAOPS_TENANT_KEY": "k7Q2x9Lm" * 8,
}
#: The shell variables a service's secret may come from (the consumer's token is the
#: read-only one, passed as its HF_TOKEN).
SECRET_SOURCES = {
    "HF_TOKEN": {"HF_TOKEN", "HF_READ_TOKEN"},
    "SLAOPS_TENANT_KEY": {"SLAOPS_TENANT_KEY"},
    "SLAOPS_KAFKA_PROPERTIES": {"SLAOPS_KAFKA_PROPERTIES"},
}

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
    for key in ("SLAOPS_STORE", "SLAOPS_TENANT_KEY"):
        assert consumer[key] == retrainer[key], key


def _secret_source(service: dict[str, Any], key: str) -> str | None:
    match = _substitution(_environment(service).get(key))
    return match["name"] if match else None


def test_only_the_retrainer_gets_the_write_token(services: dict[str, dict[str, Any]]) -> None:
    # The README's ACL table: the store is written by `slaops retrain` only; consumers
    # read it with a read token, so a compromised consumer cannot publish a model.
    assert _secret_source(services["retrainer"], "HF_TOKEN") == "HF_TOKEN"
    assert _secret_source(services["consumer"], "HF_TOKEN") == "HF_READ_TOKEN"
    for name, service in services.items():
        if name == "retrainer":
            continue
        for key, value in _environment(service).items():
            match = _substitution(value)
            assert not (match and match["name"] == "HF_TOKEN"), f"{name}: {key} is the write token"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_secrets_come_from_the_shell(services: dict[str, dict[str, Any]], name: str) -> None:
    env = _environment(services[name])
    for key in ("HF_TOKEN", "SLAOPS_TENANT_KEY", "SLAOPS_KAFKA_PROPERTIES"):
        if key in env:
            match = _substitution(env[key])
            assert match is not None and match["name"] in SECRET_SOURCES[key], (
                f"{name}: {key} is written out"
            )
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
    assert {"prometheus", "grafana", "alertmanager"} <= set(services)
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:")
    for name in ("prometheus", "grafana", "alertmanager"):
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
        if "SLAOPS_METRICS_ALLOWED_HOSTS" in _env_names(_settings_class(subcommand)):
            # The port answers only the Host names it is told: Prometheus sends `name`.
            allowed = str(env.get("SLAOPS_METRICS_ALLOWED_HOSTS", "")).split(",")
            assert name in {host.strip() for host in allowed}, name
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


# -- networks: who reaches whom ------------------------------------------------------
#: The only services that may reach the Dask scheduler: its pickles run code.
DASK_PEERS = {"retrainer", "dask-worker-1", "dask-worker-2"}


def _networks(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks", ["default"])  # no key: compose's default network
    return set(networks if isinstance(networks, list) else dict(networks))


def test_every_service_names_its_networks_and_none_is_on_the_default(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("networks") or {})
    for name, service in services.items():
        assert "networks" in service, f"{name} would join the default network"
        networks = _networks(service)
        assert networks, name
        assert networks <= declared, f"{name}: undeclared networks {networks - declared}"
        assert "default" not in networks, name
    assert "network_mode" not in " ".join(str(s) for s in services.values())


def test_only_the_retrainer_and_the_workers_reach_the_dask_scheduler(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    scheduler = _networks(services["dask-scheduler"])
    reach = {
        name
        for name, service in services.items()
        if name != "dask-scheduler" and _networks(service) & scheduler
    }
    assert reach == DASK_PEERS
    for network in scheduler:
        # No way in or out of the scheduler's network but through its members.
        assert (compose["networks"][network] or {}).get("internal") is True, network
    for name in ("dask-scheduler", *DASK_PEERS - {"retrainer"}):
        assert "ports" not in services[name], name


def test_each_service_reaches_what_it_talks_to(services: dict[str, dict[str, Any]]) -> None:
    def shared(a: str, b: str) -> bool:
        return bool(_networks(services[a]) & _networks(services[b]))

    for name in (*APP_SERVICES, "topics"):
        assert shared(name, "kafka"), name
    for name in OBSERVED:
        assert shared(name, "prometheus"), f"prometheus cannot scrape {name}"
    assert shared("prometheus", "alertmanager") and shared("grafana", "prometheus")
    # The simulator and the broker see nothing of the metrics or the cluster.
    assert not shared("simulator", "prometheus") and not shared("kafka", "dask-scheduler")


def test_the_retrainer_may_use_the_private_dask_network_without_tls(
    services: dict[str, dict[str, Any]],
) -> None:
    # Its settings refuse tcp:// to another host unless told; compose tells it, because
    # the `dask` network is internal and holds only DASK_PEERS (the test above).
    env = _environment(services["retrainer"])
    assert _default(env["SLAOPS_DASK_SCHEDULER"]).startswith("tcp://")  # type: ignore[union-attr]
    assert _default(env["SLAOPS_DASK_ALLOW_INSECURE"]) == "true"


DASK_TLS_OVERRIDE = DEPLOY / "dask" / "compose.tls.yml"


def test_the_tls_override_runs_dask_over_mutual_tls_with_real_flags(
    services: dict[str, dict[str, Any]],
) -> None:
    pytest.importorskip("distributed")
    override = yaml.safe_load(DASK_TLS_OVERRIDE.read_text())["services"]
    assert set(override) == set(DASK_SERVICES) | {"retrainer"}
    for name, subcommand in DASK_SERVICES.items():
        command = _command(override[name])
        assert command[0] == subcommand, name
        flags = [arg for arg in command[1:] if arg.startswith("-")]
        assert not set(flags) - _dask_cli_flags(subcommand), name
        assert {"--tls-ca-file", "--tls-cert", "--tls-key"} <= set(flags), name
        if subcommand == "worker":
            assert command[1] == "tls://dask-scheduler:8786", name
        else:
            assert command[command.index("--protocol") + 1] == "tls", name
        assert any(v.endswith(":/certs:ro") for v in override[name]["volumes"]), name
    env = _environment(override["retrainer"])
    assert env["SLAOPS_DASK_SCHEDULER"] == "tls://dask-scheduler:8786"
    assert str(env["SLAOPS_DASK_ALLOW_INSECURE"]).lower() == "false"
    for key in ("SLAOPS_DASK_TLS_CA_FILE", "SLAOPS_DASK_TLS_CERT_FILE", "SLAOPS_DASK_TLS_KEY_FILE"):
        assert env[key].startswith("/certs/"), key
    # Every setting the override sets is one of `slaops retrain`'s.
    assert set(env) <= _env_names(_settings_class("retrain"))


# -- Grafana, Prometheus's rules, Alertmanager ---------------------------------------
def test_grafana_has_no_anonymous_viewer_by_default(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["grafana"])
    assert _resolve("GF_AUTH_ANONYMOUS_ENABLED", env["GF_AUTH_ANONYMOUS_ENABLED"]) == "false"
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP", "false")).lower() == "false"
    match = _substitution(env["GF_SECURITY_ADMIN_PASSWORD"])
    assert match is not None and match["op"] == ":?", "the admin password has no default"


def test_prometheus_loads_the_alert_rules_and_alertmanager_receives_them(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounts["./deploy/prometheus/rules"] == "/etc/prometheus/rules"
    config_dir = PurePosixPath(mounts["./deploy/prometheus/prometheus.yml"]).parent
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for rule_file in config["rule_files"]:
        # The path the container resolves (relative to the config) is the mounted one.
        in_container = (config_dir / rule_file).as_posix()
        assert in_container.startswith("/etc/prometheus/rules/"), rule_file
        assert (ROOT / "deploy" / "prometheus" / rule_file).is_file(), rule_file
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    (target,) = alertmanagers["static_configs"][0]["targets"]
    assert target.split(":")[0] == "alertmanager"
    alertmanager = services["alertmanager"]
    config_mount = next(v for v in alertmanager["volumes"] if "alertmanager.yml" in v)
    assert config_mount.split(":")[0] == "./deploy/alertmanager/alertmanager.yml"
    assert any(
        arg == f"--config.file={config_mount.split(':')[1]}" for arg in alertmanager["command"]
    )
    assert alertmanager["ports"] == ["127.0.0.1:9093:9093"]  # loopback only


# -- profile `sasl`: Kafka with SASL and ACLs -----------------------------------------
def _in_profile(service: dict[str, Any], profile: str) -> bool:
    return profile in service.get("profiles", [])


def test_the_sasl_profile_is_a_broker_that_authenticates_and_authorises(
    services: dict[str, dict[str, Any]],
) -> None:
    sasl = {name for name, service in services.items() if _in_profile(service, "sasl")}
    assert sasl == {"kafka-sasl", "kafka-sasl-acls"}
    # Nothing a plain `docker compose up` starts is in a profile.
    assert all(not s.get("profiles") for n, s in services.items() if n not in sasl)
    env = {k: str(v) for k, v in _environment(services["kafka-sasl"]).items()}
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocols.values()) <= {"SASL_PLAINTEXT", "SASL_SSL"}, protocols
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert listeners == set(protocols)
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    for listener in listeners:
        jaas = env[f"KAFKA_LISTENER_NAME_{listener}_PLAIN_SASL_JAAS_CONFIG"]
        # Passwords come from the shell, never from this file (and never `:?`: compose
        # interpolates every profile's services, so that would stop a plain `up`).
        passwords = re.findall(r'"([^"]*)"', jaas.split("username=", 1)[1])
        assert passwords and all(
            re.fullmatch(r"\$\{KAFKA_SASL_\w+_PASSWORD:-\}", p) for p in passwords[1:]
        )


def _acls(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    script = "\n".join(_command(services["kafka-sasl-acls"]))
    return [
        shlex.split(line)[1:] for line in script.splitlines() if line.strip().startswith("acl ")
    ]


def _granted(acls: list[list[str]], principal: str, operation: str) -> set[str]:
    topics_granted: set[str] = set()
    for args in acls:
        if f"User:{principal}" not in args or operation not in args:
            continue
        topics_granted |= {args[i + 1] for i, arg in enumerate(args) if arg == "--topic"}
    return topics_granted


def test_the_sasl_acls_are_the_readmes_table(services: dict[str, dict[str, Any]]) -> None:
    acls = _acls(services)
    assert acls
    assert all("--allow-principal" in args and "--deny-principal" not in args for args in acls)
    checkpoints = topics.CONSUMER_CHECKPOINTS
    assert _granted(acls, "telemetry_producer", "Write") == {topics.TELEMETRY}
    assert _granted(acls, "telemetry_producer", "Read") == set()
    assert _granted(acls, "slaops_consumer", "Write") == {
        topics.TELEMETRY_DLQ,
        topics.RETRAIN,
        topics.FORECASTS,
        topics.WARNINGS,
        checkpoints,
    }
    assert _granted(acls, "slaops_consumer", "Read") == {
        topics.TELEMETRY,
        topics.MODELS,
        topics.RETRAIN_FAILURES,
        topics.RETRAIN_DECISIONS,
        checkpoints,
    }
    assert _granted(acls, "slaops_retrainer", "Write") == {
        topics.MODELS,
        topics.RETRAIN_FAILURES,
        topics.RETRAIN_DECISIONS,
    }
    assert _granted(acls, "slaops_retrainer", "Read") == {topics.RETRAIN, topics.TELEMETRY}
    # Groups: each service's own prefix (its group and its readers' names).
    for principal, cls in (("slaops_consumer", "consume"), ("slaops_retrainer", "retrain")):
        group = _settings_class(cls).model_fields["group_id"].default
        assert any(
            f"User:{principal}" in args and args[args.index("--group") + 1] == group
            for args in acls
            if "--group" in args
        ), principal
    # The SASL broker gets every topic the plain one does.
    assert set(_created_topics(services["kafka-sasl-acls"])) == set(
        _created_topics(services["topics"])
    )
