"""Model store: both backends through one contract, plus the Hub's failure modes.

The Hub backend runs the real ``huggingface_hub`` client over HTTP against the
in-memory server in ``testkit/hub_server.py``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from huggingface_hub import HfApi, set_client_factory
from huggingface_hub.utils._http import default_client_factory
from pydantic import SecretStr

import kernel.store.file as store_file
import kernel.store.hub_http as store_http
from kernel.store import (
    FileStore,
    HubStore,
    ModelStore,
    PublishedFiles,
    StoreConflict,
    StoreError,
    StoreNotFound,
    StoreOptions,
    StoreUnavailable,
    model_paths,
    open_store,
)
from kernel.store.index import MAX_SERVED, VERIFY_DEPTH, TenantIndex
from kernel.store.paths import index_path
from testkit.hub_server import HubServer, running_hub_server
from testkit.store_seed import seed_tenants, seeded_hash

TENANT = "3a" * 32
OTHER = "7f" * 32
REPO = "acme-org/sla-models"


def files(tag: str) -> dict[str, bytes]:
    return {
        "safetensors": f"weights-{tag}".encode() + bytes(range(256)),
        "pt": f"pt-{tag}".encode() + b"\x80\x02",
        "card": json.dumps({"tag": tag}).encode(),
    }


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    yield
    # open_store(hf://) bounds huggingface_hub's shared client process-wide; undo it.
    set_client_factory(default_client_factory)
    store_http._http_timeout_s = None


@dataclass
class Case:
    store: ModelStore
    hub: HubServer | None = None
    root: Path | None = None
    sleeps: list[float] = field(default_factory=list)


def hub_store(server: HubServer, sleeps: list[float], **kwargs: object) -> ModelStore:
    options: dict = {"sleep": sleeps.append, "http_timeout_s": 5.0, **kwargs}
    return open_store(
        f"hf://{REPO}",
        StoreOptions(token=SecretStr(server.token), endpoint=server.endpoint, **options),
    )


@pytest.fixture(params=["file", "hub"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    if request.param == "file":
        root = tmp_path / "store"
        yield Case(open_store(f"file://{root}"), root=root)
        return
    with running_hub_server() as server:
        sleeps: list[float] = []
        yield Case(hub_store(server, sleeps), hub=server, sleeps=sleeps)


# -- the contract, for both backends ----------------------------------------------------


def test_publish_latest_read_roundtrip(case: Case) -> None:
    store = case.store
    assert store.latest(TENANT) is None
    assert store.revision_messages(TENANT) == []

    published = store.publish(TENANT, files("v1"), message="retrain event=abc123")

    assert published.paths == model_paths(TENANT)
    assert published.paths["safetensors"] == f"sla_models/{TENANT}_sla_model.safetensors"
    assert published.paths["pt"] == f"sla_models/{TENANT}_sla_model.pt"
    assert published.paths["card"] == f"sla_models/{TENANT}_sla_model.json"
    assert store.latest(TENANT) == published
    for kind, data in files("v1").items():
        assert store.read(published.paths[kind], revision=published.revision) == data
    assert store.revision_messages(TENANT) == ["retrain event=abc123"]
    assert store.latest(OTHER) is None


def test_old_revisions_stay_readable(case: Case) -> None:
    store = case.store
    first = store.publish(TENANT, files("v1"), message="event=1")
    second = store.publish(TENANT, files("v2"), message="event=2")

    assert first.revision != second.revision
    assert store.latest(TENANT) == second
    path = first.paths["safetensors"]
    assert store.read(path, revision=first.revision) == files("v1")["safetensors"]
    assert store.read(path, revision=second.revision) == files("v2")["safetensors"]
    assert store.revision_messages(TENANT) == ["event=2", "event=1"]


def test_tenants_have_separate_histories(case: Case) -> None:
    store = case.store
    mine = store.publish(TENANT, files("mine"), message="event=mine")
    other = store.publish(OTHER, files("other"), message="event=other")

    assert store.latest(TENANT) == mine
    assert store.latest(OTHER) == other
    assert store.revision_messages(TENANT) == ["event=mine"]
    assert store.revision_messages(OTHER) == ["event=other"]


def test_one_publish_is_one_commit_with_all_files_and_the_index(case: Case) -> None:
    published = case.store.publish(TENANT, files("v1"), message="event=one")
    expected = {published.paths[kind]: data for kind, data in files("v1").items()}
    if case.hub is not None:
        [commit] = case.hub.user_commits(REPO)
        assert commit.oid == published.revision
        assert commit.title == "event=one"
        changed = {p: d for p, d in commit.files.items() if p.startswith("sla_models/")}
        index = TenantIndex.model_validate_json(changed.pop(index_path(TENANT)))
        assert changed == expected
    else:
        assert case.root is not None
        versions = [p for p in (case.root / ".revisions" / TENANT).iterdir() if p.is_dir()]
        assert [v.name for v in versions] == [published.revision]
        names = {p.name for p in versions[0].iterdir()}
        assert names == {Path(p).name for p in expected} | {"meta.json", "index.json"}
        index = TenantIndex.model_validate_json((versions[0] / "index.json").read_bytes())
        for path, data in expected.items():  # the human-facing mirror
            assert (case.root / path).read_bytes() == data
    assert (index.tenant_hash, index.version, index.parent) == (TENANT, 1, None)
    assert index.served == ("event=one",)


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "/etc/passwd",
        "sla_models/../../etc/passwd",
        "sla_models/./x.json",
        "sla_models\\..\\x",
        "sla_models//x.json",
        "sla_models/",
        "other/x.json",
        "",
        f"sla_models/{TENANT}_sla_model.json\x00",
    ],
)
def test_read_refuses_paths_that_escape(case: Case, path: str) -> None:
    published = case.store.publish(TENANT, files("v1"), message="event=1")
    with pytest.raises(StoreError, match="refusing"):
        case.store.read(path, revision=published.revision)


@pytest.mark.parametrize("revision", ["../main", "a b", "", "x/../y", "rev;rm"])
def test_read_refuses_odd_revisions(case: Case, revision: str) -> None:
    with pytest.raises(StoreError, match="refusing"):
        case.store.read(model_paths(TENANT)["card"], revision=revision)


def test_read_unknown_revision_or_file_is_not_found(case: Case) -> None:
    published = case.store.publish(TENANT, files("v1"), message="event=1")
    with pytest.raises(StoreNotFound):
        case.store.read(published.paths["card"], revision="f" * 40)
    with pytest.raises(StoreNotFound):
        case.store.read(model_paths(OTHER)["card"], revision=published.revision)


@pytest.mark.parametrize(
    ("tenant_hash", "payload", "message", "error"),
    [
        ("not-a-hash", files("x"), "m", ValueError),
        (TENANT.upper(), files("x"), "m", ValueError),
        (TENANT, {"safetensors": b"w", "card": b"{}"}, "m", ValueError),
        (TENANT, {**files("x"), "extra": b"?"}, "m", ValueError),
        (TENANT, {**files("x"), "pt": "text"}, "m", TypeError),
        (TENANT, files("x"), "", ValueError),
        (TENANT, files("x"), "two\nlines", ValueError),
    ],
)
def test_publish_validates_its_input(
    case: Case, tenant_hash: str, payload: dict, message: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        case.store.publish(tenant_hash, payload, message=message)
    if case.hub is not None:
        assert case.hub.user_commits(REPO) == []


# -- URIs ----------------------------------------------------------------------------------


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    local = open_store(f"file://{tmp_path}/models")
    assert isinstance(local, FileStore)
    assert local.uri == f"file://{tmp_path}/models"
    hub = open_store(
        "hf://acme-org/sla.models_v2", StoreOptions(hf_api=HfApi(endpoint="http://127.0.0.1:9"))
    )
    assert isinstance(hub, HubStore)
    assert hub.uri == "hf://acme-org/sla.models_v2"


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "models",
        "s3://bucket/models",
        "HF://acme/models",
        "http://example.com/acme/models",
        "hf://acme",
        "hf://acme/models/extra",
        "hf://acme/",
        "hf://-acme/models",
        "hf://acme/models.",
        "hf://acme/mo--dels",
        "hf://acme/mo..dels",
        "hf://acme/models.git",
        "hf://acme/models;rm -rf /",
        "hf://acme/models?revision=x",
        "hf://acme/models#x",
        "hf://acme/my models",
        "hf://acme/models%2F..",
        "hf://" + "a" * 97 + "/models",
        "file://",
        "file://../outside",
        "file:///data/../etc",
        "file:///data/models;touch /tmp/x",
        "file:///data/my models",
        "file:///data/$(id)",
        "file:///data/`id`",
        "file:///data/models\n",
    ],
)
def test_open_store_rejects_bad_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        open_store(uri, StoreOptions(hf_api=HfApi(endpoint="http://127.0.0.1:9")))


@pytest.mark.parametrize(
    "uri", ["hf://user:hf_SeCrEtToKeN@acme/models", "hf://hf_SeCrEtToKeN@acme/models"]
)
def test_open_store_rejects_tokens_in_the_uri_without_echoing_them(uri: str) -> None:
    with pytest.raises(ValueError, match="credentials") as info:
        open_store(uri)
    assert "SeCrEtToKeN" not in str(info.value)


def test_open_store_rejects_ambiguous_client_options() -> None:
    with pytest.raises(ValueError, match="either"):
        open_store("hf://acme/models", StoreOptions(hf_api=HfApi(), token=SecretStr("hf_x")))
    with pytest.raises(ValueError, match="endpoint"):
        open_store("hf://acme/models", StoreOptions(endpoint="http://user:pw@127.0.0.1:9"))


# -- Hub failure modes ------------------------------------------------------------------------


def test_hub_retries_transient_failures_then_commits_once(hub: HubServer) -> None:
    sleeps: list[float] = []
    store = hub_store(hub, sleeps, backoff_s=0.5, max_backoff_s=8.0)
    hub.fail_next(2, 503)

    published = store.publish(TENANT, files("v1"), message="event=retry")

    [commit] = hub.user_commits(REPO)
    assert commit.oid == published.revision
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # jittered, doubling


def test_hub_backoff_is_capped_and_honours_retry_after(hub: HubServer) -> None:
    sleeps: list[float] = []
    store = hub_store(hub, sleeps, backoff_s=1.0, max_backoff_s=2.0, max_attempts=6)
    hub.fail_next(1, 429, retry_after=2)
    hub.fail_next(4, 502)

    store.publish(TENANT, files("v1"), message="event=busy")

    assert len(sleeps) == 5
    assert sleeps[0] == 2.0  # Retry-After, within the cap
    assert all(delay <= 2.0 for delay in sleeps)
    assert len(hub.user_commits(REPO)) == 1


def test_hub_always_failing_raises_unavailable_and_commits_nothing(hub: HubServer) -> None:
    sleeps: list[float] = []
    store = hub_store(hub, sleeps, max_attempts=4)
    hub.fail_next(10_000, 503)

    with pytest.raises(StoreUnavailable, match="after 4 attempts") as info:
        store.publish(TENANT, files("v1"), message="event=down")

    assert isinstance(info.value, ConnectionError)  # callers may catch the built-in
    assert len(sleeps) == 3
    hub.clear_faults()
    assert hub.user_commits(REPO) == []


def test_hub_another_tenants_commit_is_settled_by_committing_again(hub: HubServer) -> None:
    sleeps: list[float] = []
    store = hub_store(hub, sleeps)
    store.publish(OTHER, files("first"), message="event=first")

    # Another writer commits after our head read (model_info), before our commit: the
    # Hub answers 412; this tenant did not move, so the store commits again.
    hub.before_next(
        lambda: hub.push_commit(REPO, {"README.md": b"hi"}, "someone else"),
        path_contains="/preupload/",
    )
    published = store.publish(TENANT, files("v1"), message="event=raced", parent=None)

    assert hub.statuses.count(412) == 1
    assert [c.title for c in hub.user_commits(REPO)] == [
        "event=raced",
        "someone else",
        "event=first",
    ]
    assert hub.user_commits(REPO)[0].oid == published.revision
    head = store.head(TENANT)
    assert head is not None and (head.revision, head.version) == (published.revision, 1)
    assert store.revision_messages(TENANT) == ["event=raced"]


def test_hub_same_tenant_published_meanwhile_is_a_conflict_for_the_caller(hub: HubServer) -> None:
    store = hub_store(hub, [])
    other_writer = hub_store(hub, [])
    v1 = store.publish(TENANT, files("v1"), message="event=1")

    # Another retrainer publishes this very tenant between our head read and commit.
    hub.before_next(
        lambda: other_writer.publish(TENANT, files("theirs"), message="event=theirs"),
        path_contains="/preupload/",
    )
    with pytest.raises(StoreConflict, match="another writer published it"):
        store.publish(TENANT, files("v2"), message="event=2", parent=v1.revision)

    assert store.revision_messages(TENANT) == ["event=theirs", "event=1"]
    head = store.head(TENANT)
    assert head is not None and head.version == 2


def test_a_stale_parent_is_a_conflict_and_the_current_one_publishes(case: Case) -> None:
    store = case.store
    with pytest.raises(ValueError, match="parent"):
        store.publish(TENANT, files("x"), message="event=x", parent="../main")
    v1 = store.publish(TENANT, files("v1"), message="event=1", parent=None)
    v2 = store.publish(TENANT, files("v2"), message="event=2", parent=v1.revision)

    for stale in (None, v1.revision):
        with pytest.raises(StoreConflict):
            store.publish(TENANT, files("v3"), message="event=3", parent=stale)
    store.publish(OTHER, files("o"), message="event=o", parent=None)  # another tenant: no effect
    v3 = store.publish(TENANT, files("v3"), message="event=3", parent=v2.revision)

    head = store.head(TENANT)
    assert head is not None
    assert (head.files, head.version, head.parent) == (v3, 3, v2.revision)
    assert head.recent == ("event=3", "event=2", "event=1")
    assert store.revision_messages(TENANT) == ["event=3", "event=2", "event=1"]


def test_two_hub_clients_publish_different_tenants_concurrently(hub: HubServer) -> None:
    tenants = {0: [f"{i:02x}" * 32 for i in (1, 2, 3)], 1: [f"{i:02x}" * 32 for i in (4, 5, 6)]}
    stores = [hub_store(hub, []), hub_store(hub, [])]
    store_for_setup = hub_store(hub, [])
    store_for_setup.publish(OTHER, files("warm"), message="event=warm")  # the repo exists
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for round_ in range(3):
                for thash in tenants[n]:
                    head = stores[n].head(thash)
                    parent = head.revision if head is not None else None
                    stores[n].publish(
                        thash, files(f"{n}-{round_}"), message=f"r{round_}", parent=parent
                    )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert len(hub.user_commits(REPO)) == 1 + 2 * 3 * 3  # every publish landed once
    for thash in tenants[0] + tenants[1]:
        head = store_for_setup.head(thash)
        assert head is not None and head.version == 3 and head.recent == ("r2", "r1", "r0")


def test_hub_lost_commit_response_is_recognised_not_duplicated(hub: HubServer) -> None:
    sleeps: list[float] = []
    store = hub_store(hub, sleeps, http_timeout_s=0.5)
    store.publish(OTHER, files("warm"), message="event=warm")
    hub.hang_next(1, 2.0, path_contains="/commit/", after=True)  # applied, answer too late

    published = store.publish(TENANT, files("v1"), message="event=lost")

    assert len(sleeps) == 1
    commits = hub.user_commits(REPO)
    assert [c.title for c in commits] == ["event=lost", "event=warm"]
    assert commits[0].oid == published.revision


def test_hub_stalled_request_times_out_and_is_retried(hub: HubServer) -> None:
    sleeps: list[float] = []
    store = hub_store(hub, sleeps, http_timeout_s=0.5)
    hub.hang_next(1, 2.0)

    published = store.publish(TENANT, files("v1"), message="event=slow")

    assert len(sleeps) == 1
    assert [c.oid for c in hub.user_commits(REPO)] == [published.revision]


def test_hub_bad_token_is_a_plain_store_error_without_the_token(
    hub: HubServer, caplog: pytest.LogCaptureFixture
) -> None:
    sleeps: list[float] = []
    wrong = "hf_wrong_" + "x" * 20
    store = open_store(
        f"hf://{REPO}",
        StoreOptions(token=SecretStr(wrong), endpoint=hub.endpoint, sleep=sleeps.append),
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreError) as info:
        store.publish(TENANT, files("v1"), message="event=auth")
    assert not isinstance(info.value, StoreUnavailable)
    assert "401" in str(info.value)
    assert sleeps == []
    assert wrong not in str(info.value) and wrong not in caplog.text


def test_hub_token_never_logged_during_retries(
    hub: HubServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = hub_store(hub, [])
    hub.fail_next(1, 500)
    with caplog.at_level(logging.DEBUG):
        published = store.publish(TENANT, files("v1"), message="event=log")
        store.read(published.paths["card"], revision=published.revision)
    assert "retrying" in caplog.text
    assert hub.token not in caplog.text


def test_hub_server_requires_the_token(hub: HubServer) -> None:
    hub.create_repo(REPO)
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(Exception, match="401"):
        anonymous.model_info(REPO)
    assert HfApi(endpoint=hub.endpoint, token=hub.token).model_info(REPO).sha is not None


def test_hub_read_of_a_missing_repo_is_not_found(hub: HubServer) -> None:
    store = hub_store(hub, [])
    assert store.latest(TENANT) is None
    with pytest.raises(StoreNotFound):
        store.read(model_paths(TENANT)["card"], revision="main")


# -- FileStore specifics -------------------------------------------------------------------


def test_file_store_head_moves_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)
    first = store.publish(TENANT, files("v1"), message="event=1")
    real_write = store_file.atomic_write

    def crash_on_head(path: Path, data: bytes) -> None:
        if path.name == "HEAD":
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(store_file, "atomic_write", crash_on_head)
    with pytest.raises(StoreError, match="No space left"):
        store.publish(TENANT, files("v2"), message="event=2")
    monkeypatch.undo()

    assert store.latest(TENANT) == first
    assert store.revision_messages(TENANT) == ["event=1"]
    card = store.read(first.paths["card"], revision=first.revision)
    assert card == files("v1")["card"]
    assert not list((tmp_path / ".revisions" / TENANT).glob(".tmp-*"))


def test_file_store_concurrent_publishers_keep_a_linear_history(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    results: list[PublishedFiles] = []
    lock = threading.Lock()

    def publish(i: int) -> None:
        published = store.publish(TENANT, files(f"v{i}"), message=f"event={i}")
        with lock:
            results.append(published)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    messages = store.revision_messages(TENANT)
    assert sorted(messages) == sorted(f"event={i}" for i in range(8))
    latest = store.latest(TENANT)
    assert latest is not None and latest.revision in {p.revision for p in results}
    card = json.loads(store.read(latest.paths["card"], revision=latest.revision))
    assert messages[0] == f"event={card['tag'][1:]}"
    for published in results:
        assert store.read(published.paths["pt"], revision=published.revision).startswith(b"pt-v")


# -- bounded lookups ---------------------------------------------------------------------


def requests_of(hub: HubServer, call: Callable[[], object]) -> list[tuple[str, str]]:
    before = len(hub.requests)
    call()
    return hub.requests[before:]


def test_hub_lookup_requests_do_not_grow_from_10_to_200_tenants(hub: HubServer) -> None:
    store = hub_store(hub, [])
    seed_tenants(hub, REPO, 10)
    store.publish(TENANT, files("v1"), message="event=1")
    store.publish(TENANT, files("v2"), message="event=2")
    store.publish(OTHER, files("o0"), message="event=o0")
    few_head = requests_of(hub, lambda: store.head(TENANT))
    few_publish = requests_of(hub, lambda: store.publish(OTHER, files("o1"), message="event=o1"))

    seed_tenants(hub, REPO, 190, start=10, per_commit=10)  # 200 tenants, 24 more commits
    store.publish(TENANT, files("v3"), message="event=3")
    many_head = requests_of(hub, lambda: store.head(TENANT))
    many_publish = requests_of(hub, lambda: store.publish(OTHER, files("o2"), message="event=o2"))

    # The version this store verified last: paths-info (each path's last commit) alone.
    assert len(many_head) == len(few_head) == 1
    assert [m for m, _ in many_head] == ["POST"] and "/paths-info/" in many_head[0][1]
    assert len(many_publish) == len(few_publish) == 6  # head sha, tenant (3), preupload, commit
    assert not any("/commits/" in path for _, path in hub.requests)  # no history listing
    head = store.head(TENANT)
    assert head is not None and head.version == 3 and head.recent[0] == "event=3"
    # A reader that verified nothing: paths-info, the index (metadata and body), then two
    # requests a version walked back (v2, v1, and none before it), among 10 or 200 tenants.
    cold = requests_of(hub, lambda: hub_store(hub, []).head(TENANT))
    assert len(cold) == 3 + 2 * 3
    seeded = store.head(seeded_hash(150))
    assert seeded is not None and seeded.version == 1


def test_file_lookup_reads_do_not_grow_with_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    reads: list[str] = []
    real = store_file._read_regular

    def counting(path: Path, max_bytes: int, *, what: str) -> bytes:
        reads.append(what)
        return real(path, max_bytes, what=what)

    monkeypatch.setattr(store_file, "_read_regular", counting)
    counts, cold = [], []
    for version in range(1, 31):
        store.publish(TENANT, files(f"v{version}"), message=f"event={version}")
        reads.clear()
        head = store.head(TENANT)
        assert head is not None and head.version == version
        counts.append(len(reads))
        reads.clear()
        head = FileStore(tmp_path).head(TENANT)  # a reader that verified nothing yet
        assert head is not None and head.version == version
        cold.append(len(reads))
    assert set(counts) == {1}  # HEAD: the version this store verified when it published
    # HEAD, meta.json and index.json, then VERIFY_DEPTH versions back (two meta.json
    # reads each) and the index there: the same from version 5 to 30.
    assert set(cold[VERIFY_DEPTH:]) == {3 + 2 * VERIFY_DEPTH + 1}


def test_the_index_keeps_the_newest_served_messages_only(case: Case) -> None:
    store = case.store
    for version in range(1, MAX_SERVED + 6):
        store.publish(TENANT, files("v"), message=f"event={version}")
    head = store.head(TENANT)
    assert head is not None and head.version == MAX_SERVED + 5
    assert head.recent == tuple(f"event={v}" for v in range(MAX_SERVED + 5, 5, -1))
