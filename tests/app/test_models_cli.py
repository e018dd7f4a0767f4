"""`slaops models list` and `slaops models show TENANT`, against a real store and broker.

acme's first version is trained and published by the retrainer's own handler into a
file store; a second version is published on top of it (its card's lineage names the
first); a later request is answered by the handler with a kept champion, and globex's
request failed. The outcome events go to the real broker; `slaops models` runs as a
user runs it (in process, through `slaops.cli.main`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from huggingface_hub import set_client_factory
from huggingface_hub.utils._http import default_client_factory
from pydantic import SecretStr

import kernel.store.hub_http as store_http
from kernel.artifacts import ModelCard
from kernel.store import ModelStore, StoreOptions, open_store
from kernel.tenant_hash import tenant_hash
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from schemas import ChampionKept, ModelPublished, RetrainFailed, RetrainRequested
from slaops.cli import main
from testkit.factories import unique_name
from testkit.hub_server import running_hub_server
from testkit.kafka_helpers import produce_all
from testkit.retrain_data import request_for, tenant_rows
from testkit.store_seed import seed_tenants

pytestmark = pytest.mark.integration

KEY = SecretStr("models-cli-key-0123456789abcdef")
SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [16]},
    n_jobs=1,
    max_epochs=10,
    n_splits=3,
)
#: Rows and seed of the replay each request's offset stands for.
ROWS = {200: (900, 5), 400: (1_500, 3)}
ACME = tenant_hash("acme", KEY)


@dataclass(frozen=True)
class Fleet:
    bootstrap: str
    topics: dict[str, str]
    uri: str
    store: ModelStore
    first: ModelPublished
    second: str
    kept: ChampionKept
    failed: RetrainFailed


def replay(request: RetrainRequested) -> TenantRows:
    rows, seed = ROWS[request.source[0].end_offset - 1]
    return tenant_rows(rows, seed=seed)


@pytest.fixture(scope="module")
def fleet(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    topics = {role: unique_name(f"models-{role}") for role in ("models", "decisions", "failures")}
    uri = f"file://{tmp_path_factory.mktemp('models-cli') / 'models'}"
    store = open_store(uri)
    handler = RequestHandler(
        store=store,
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SEARCH, min_rows=100),
        replay=replay,
        topics=OutcomeTopics(
            models=topics["models"], failures=topics["failures"], decisions=topics["decisions"]
        ),
    )
    outcome = handler.handle(request_for("acme", offset=200))
    assert outcome.kind == "published", outcome
    first = outcome.events[0][2]
    assert isinstance(first, ModelPublished)
    # A second version on top of the first, as another retrain would write it.
    head = store.head(ACME)
    assert head is not None
    files = {
        kind: store.read(path, revision=head.revision) for kind, path in head.files.paths.items()
    }
    card = json.loads(files["card"])
    card["lineage"]["champion"] = {"revision": head.revision, "metrics": None}
    card["metrics"]["f1"] = 0.5
    files["card"] = json.dumps(card).encode()
    second = store.publish(ACME, files, message="second version", parent=head.revision).revision
    answer = handler.handle(request_for("acme", offset=400, reason="performance_drift"))
    assert answer.kind == "kept", answer
    kept = answer.events[0][2]
    assert isinstance(kept, ChampionKept)
    failed = RetrainFailed.model_validate(
        {
            "request_event_id": request_for("globex").event_id,
            "tenant": "globex",
            "reason": "single_class",
            "detail": "training part has one class",
            "failed_at": datetime(2026, 11, 2, 1, tzinfo=UTC),
        }
    )
    produce_all(bootstrap, topics["models"], [(b"acme", first.model_dump_json().encode())])
    produce_all(bootstrap, topics["decisions"], [(b"acme", kept.model_dump_json().encode())])
    produce_all(bootstrap, topics["failures"], [(b"globex", failed.model_dump_json().encode())])
    return Fleet(bootstrap, topics, uri, store, first, second, kept, failed)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("SLAOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    yield
    # open_store(hf://) bounds huggingface_hub's shared client process-wide; undo it.
    set_client_factory(default_client_factory)
    store_http._http_timeout_s = None


def models(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], *args: str, key: bool = True
) -> tuple[int, str, str]:
    argv = ["models", *args, "--bootstrap-servers", fleet.bootstrap, "--idle-s", "1"]
    for role, topic in fleet.topics.items():
        argv += [f"--{role}-topic", topic]
    if "--store" not in args:
        argv += ["--store", fleet.uri]
    if key:
        argv += ["--tenant-key", KEY.get_secret_value()]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_show_lists_the_versions_the_store_holds_with_their_cards(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = models(fleet, capsys, "show", "acme", "--json")
    assert code == 0
    shown = json.loads(out)["tenant"]
    head = fleet.store.head(ACME)
    assert head is not None
    assert (shown["tenant"], shown["tenant_hash"], shown["count"]) == ("acme", ACME, 2)
    newest, first = shown["versions"]
    assert (newest["version"], newest["revision"]) == (2, fleet.second) == (2, head.revision)
    assert (first["version"], first["revision"]) == (1, fleet.first.revision)
    card = ModelCard.model_validate_json(
        fleet.store.read(head.files.paths["card"], revision=fleet.first.revision)
    )
    assert first["forecaster"] == card.forecaster
    assert first["metrics"]["f1"] == card.metrics["f1"]
    assert newest["metrics"]["f1"] == 0.5  # each version's own card
    assert first["log_loss_skill"]["prior"] == card.skill["log_loss_skill_vs_prior"]
    assert first["baselines"]["prior"] == card.baselines["prior"]["log_loss"]
    assert first["evidence"]["n"] == card.evidence["n"]
    # The date comes from the announcement of that very revision; v2 had none.
    assert first["announced_at"] == fleet.first.published_at.isoformat()
    assert newest["announced_at"] is None
    decision = shown["last_decision"]
    assert decision["outcome"] == "kept"
    assert decision["verdict"] == fleet.kept.decision.verdict
    assert decision["request"] == "performance_drift"
    assert decision["revision"] == fleet.second


def test_show_as_text_names_the_forecaster_metrics_and_decision(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = models(fleet, capsys, "show", "acme")
    assert code == 0
    assert "versions in the store: 2" in out
    assert f"v1  revision {fleet.first.revision}" in out
    assert "log-loss skill vs prior" in out
    assert f"last decision: kept {fleet.kept.decided_at.isoformat()[:19]}" in out


def test_list_shows_each_tenant_with_its_newest_version_and_last_outcome(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = models(fleet, capsys, "list", "--json")
    assert code == 0
    rows = {row["tenant"]: row for row in json.loads(out)["tenants"]}
    assert set(rows) == {"acme", "globex"}
    assert rows["acme"]["count"] == 2
    assert [v["revision"] for v in rows["acme"]["versions"]] == [fleet.second]
    assert rows["globex"]["tenant_hash"] == tenant_hash("globex", KEY)
    assert rows["globex"]["count"] == 0
    assert rows["globex"]["last_decision"]["outcome"] == "failed"
    assert rows["globex"]["last_decision"]["verdict"] == "single_class"
    code, text, _err = models(fleet, capsys, "list")
    assert code == 0
    assert any(line.startswith("acme") and " v2 " in line for line in text.splitlines())
    assert any(line.startswith("globex") and "failed" in line for line in text.splitlines())


def test_without_the_key_tenants_are_hashes_and_slugs_are_refused(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = models(fleet, capsys, "list", "--json", key=False)
    assert code == 0
    assert "acme" not in out
    assert "globex" not in out
    rows = json.loads(out)["tenants"]
    assert [r["tenant_hash"] for r in rows if r["tenant_hash"]] == [ACME]
    code, out, err = models(fleet, capsys, "show", "acme", key=False)
    assert code == 2
    assert "SLAOPS_TENANT_KEY" in err
    code, out, _err = models(fleet, capsys, "show", ACME, "--json", key=False)
    assert code == 0
    shown = json.loads(out)["tenant"]
    assert (shown["tenant"], shown["count"]) == (None, 2)


def test_show_of_a_tenant_without_versions_exits_1(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = models(fleet, capsys, "show", "initech", "--json")
    assert code == 1
    assert json.loads(out)["tenant"]["count"] == 0


def test_show_reads_a_hub_store_and_reports_a_card_it_cannot_read(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    head = fleet.store.head(ACME)
    assert head is not None
    files = {
        kind: fleet.store.read(path, revision=head.revision)
        for kind, path in head.files.paths.items()
    }
    with running_hub_server() as hub:
        hub.create_repo("acme-org/sla-models")
        options = StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint)
        hub_store = open_store("hf://acme-org/sla-models", options)
        revision = hub_store.publish(ACME, files, message="copied").revision
        (seeded,) = seed_tenants(hub, "acme-org/sla-models", 1)  # a card that is not a card
        flags = ["--store", "hf://acme-org/sla-models", "--hf-endpoint", hub.endpoint]
        flags += ["--hf-token", hub.token, "--json"]
        code, out, _err = models(fleet, capsys, "show", ACME, *flags)
        assert code == 0
        shown = json.loads(out)["tenant"]
        assert shown["count"] == 1
        assert shown["versions"][0]["revision"] == revision
        assert shown["versions"][0]["metrics"]["f1"] == 0.5
        code, out, _err = models(fleet, capsys, "show", seeded, *flags)
        assert code == 0
        shown = json.loads(out)["tenant"]
        assert shown["count"] == 1
        assert "forecaster" not in shown["versions"][0]
        assert any("card unreadable" in p for p in shown["problems"])
