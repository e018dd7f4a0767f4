"""`slaops models publish-index`: the store's root README lists the tenants' cards by hash.

acme's model is trained and published once (the `published` fixture); its files are
published again into a fresh file store and a loopback Hub under two tenants (acme
twice, globex once with a card that loses to the prior), and announced on a real
broker's models topic with a third tenant that has no version in the store. The
command runs as a user runs it (in process, through `slaops.cli.main`); the Hub is
read back with the real `huggingface_hub` client.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, set_client_factory
from huggingface_hub.utils._http import default_client_factory
from pydantic import SecretStr

import kernel.store.hub_http as store_http
from kernel.store import ModelStore, StoreOptions, model_paths, open_store, report_paths
from kernel.store.protocol import ROOT_README
from kernel.tenant_hash import tenant_hash
from slaops.cli import main
from testkit.factories import unique_name
from testkit.hub_server import HubServer, running_hub_server
from testkit.kafka_helpers import produce_all
from testkit.live_models import KEY, Published

pytestmark = pytest.mark.integration

ACME, GLOBEX, INITECH = (tenant_hash(s, KEY) for s in ("acme", "globex", "initech"))
REPO = "ops-org/sla-models"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("SLAOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    yield
    set_client_factory(default_client_factory)
    store_http._http_timeout_s = None


@pytest.fixture(scope="module")
def topics(bootstrap: str, published: Published) -> dict[str, str]:
    """Announcements of acme, globex and initech (which has no version anywhere)."""
    names = {role: unique_name(f"index-{role}") for role in ("models", "decisions", "failures")}
    event = published[2]
    records = [
        (slug.encode(), event.model_copy(update={"tenant": slug, "tenant_hash": h}))
        for slug, h in (("acme", ACME), ("globex", GLOBEX), ("initech", INITECH))
    ]
    produce_all(bootstrap, names["models"], [(k, e.model_dump_json().encode()) for k, e in records])
    return names


def fill(store: ModelStore, published: Published) -> dict[str, str]:
    """acme v1 and v2, globex v1 (skill vs prior below zero): tenant hash -> head revision."""
    source, event = published[1], published[2]
    files: dict[str, bytes] = {
        k: source.read(p, revision=event.revision) for k, p in event.paths.items()
    }
    store.publish(ACME, files, message="acme v1")
    acme = store.publish(ACME, files, message="acme v2").revision
    card = json.loads(files["card"])
    card["skill"]["log_loss_skill_vs_prior"] = -0.25
    globex = store.publish(GLOBEX, {**files, "card": json.dumps(card).encode()}, message="g v1")
    return {ACME: acme, GLOBEX: globex.revision}


def publish_index(bootstrap: str, topics: dict[str, str], *flags: str) -> int:
    argv = ["models", "publish-index", "--bootstrap-servers", bootstrap, "--idle-s", "1"]
    for role, topic in topics.items():
        argv += [f"--{role}-topic", topic]
    argv += ["--tenant-key", KEY.get_secret_value(), "--json", *flags]
    return main(argv)


def check_readme(text: str, heads: dict[str, str]) -> None:
    """The README lists acme and globex by hash (never slug), newest version, skill, links."""
    assert text.startswith("---\n")
    assert yaml.safe_load(text[4:].split("\n---\n", 1)[0])["library_name"] == "pytorch"
    for slug in ("acme", "globex", "initech"):
        assert slug not in text
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) == {ACME, GLOBEX}  # initech has no version in the store
    assert f"| v2 | `{heads[ACME][:12]}` |" in rows[ACME]
    assert f"| v1 | `{heads[GLOBEX][:12]}` |" in rows[GLOBEX]
    assert "| -0.250 LOSES |" in rows[GLOBEX]
    assert " LOSES" not in rows[ACME]
    for h in (ACME, GLOBEX):
        assert f"[card]({report_paths(h)['report']})" in rows[h]
        assert f"[json]({model_paths(h)['card']})" in rows[h]
    assert "2 tenant(s)." in text


def test_publish_index_writes_the_file_stores_root_readme(
    bootstrap: str,
    topics: dict[str, str],
    published: Published,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = f"file://{tmp_path / 'models'}"
    store = open_store(uri)
    heads = fill(store, published)
    assert not (tmp_path / "models" / ROOT_README).exists()  # publishes never write it
    capsys.readouterr()
    code = publish_index(bootstrap, topics, "--store", uri)
    assert code == 0
    shown = json.loads(capsys.readouterr().out)["index"]
    assert (shown["path"], shown["tenants"]) == (ROOT_README, 2)
    text = (tmp_path / "models" / ROOT_README).read_text()
    check_readme(text, heads)
    assert shown["bytes"] == len(text.encode())
    # Nothing changed: the next run leaves the file as it was (no new file put in place).
    inode = (tmp_path / "models" / ROOT_README).stat().st_ino
    assert publish_index(bootstrap, topics, "--store", uri) == 0
    assert (tmp_path / "models" / ROOT_README).stat().st_ino == inode
    # The index is not part of any version: the tenants' heads are what they were.
    head = store.head(ACME)
    assert head is not None and (head.revision, head.version) == (heads[ACME], 2)


def test_publish_index_commits_the_hubs_readme_alone_and_only_when_it_changed(
    bootstrap: str,
    topics: dict[str, str],
    published: Published,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_hub_server() as hub:
        hub.create_repo(REPO)
        options = StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint)
        store = open_store(f"hf://{REPO}", options)
        heads = fill(store, published)
        assert all(ROOT_README not in c.changed for c in hub.user_commits(REPO))
        flags = ["--store", f"hf://{REPO}", "--hf-endpoint", hub.endpoint, "--hf-token"]
        flags.append(hub.token)
        code = publish_index(bootstrap, topics, *flags)
        assert code == 0
        assert json.loads(capsys.readouterr().out)["index"]["tenants"] == 2
        commits = hub.user_commits(REPO)
        assert commits[0].changed == frozenset({ROOT_README})  # its own commit, README only
        assert len(commits) == 4  # three model versions and the index
        text = readme_on_hub(hub)
        check_readme(text, heads)
        # The README commit moves no tenant: heads, counts and history stay.
        fresh = open_store(f"hf://{REPO}", options)
        head = fresh.head(ACME)
        assert head is not None and (head.revision, head.version) == (heads[ACME], 2)
        assert fresh.revision_messages(ACME) == ["acme v2", "acme v1"]
        # Nothing changed: the next run writes no commit.
        code = publish_index(bootstrap, topics, *flags)
        assert code == 0
        assert len(hub.user_commits(REPO)) == 4


def readme_on_hub(hub: HubServer) -> str:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    with open(api.hf_hub_download(REPO, ROOT_README), encoding="utf-8") as f:
        return f.read()
