"""A store writer forges a tenant's index (issue 23, item 8).

The index is a cache of the store's history, so each forged count or served list
must be counted from the history instead, by a reader that verified nothing before
(a consumer or retrainer just started) and by one that did (the writer itself), on
the file store and on the Hub (the real ``huggingface_hub`` client against the
loopback Hub). Then the tenant's next publish succeeds on top of the forged version
and writes a true index again; consumers see every new version as newer; a request
whose served message the forger trimmed away is re-announced, never retrained.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from kernel.model_authority import ModelAuthority
from kernel.store import FileStore, ModelStore, StoreOptions, model_paths, open_store
from kernel.store.index import MAX_SERVED, TenantIndex
from kernel.store.paths import index_path
from kernel.tenant_hash import tenant_hash
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler, commit_message
from retrainer.search import SearchConfig
from schemas import ModelPublished
from testkit.hub_server import HubServer, running_hub_server
from testkit.retrain_data import request_for, tenant_rows

KEY = SecretStr("hostile-index-key-0123456789abcdef")
HASHED = tenant_hash("acme", KEY)
REPO = "slaops-test/models"
FILES = {"safetensors": b"w", "pt": b"p", "card": b"{}"}
MESSAGES = ("m5", "m4", "m3", "m2", "m1")  # the five real versions, newest first
SMALL_SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [8]},
    n_jobs=1,
    max_epochs=5,
    n_splits=3,
)


@dataclass
class Backend:
    """A store as its writer holds it, a fresh reader's, and a forger's hands on it."""

    name: str
    writer: ModelStore
    reader: Callable[[], ModelStore]
    root: Path | None = None
    hub: HubServer | None = None

    def forge_version(self, title: str, index: bytes) -> str:
        """A new version of the tenant: the newest files again, with a forged index."""
        newest = self.writer.latest(HASHED)
        assert newest is not None
        paths = model_paths(HASHED)
        files = {
            kind: self.writer.read(path, revision=newest.revision) for kind, path in paths.items()
        }
        if self.hub is not None:
            written = {paths[kind]: data for kind, data in files.items()}
            return self.hub.push_commit(REPO, {**written, index_path(HASHED): index}, title)
        assert self.root is not None
        tenant_dir = self.root / ".revisions" / HASHED
        revision = secrets.token_hex(20)
        version_dir = tenant_dir / revision
        version_dir.mkdir()
        for kind, path in paths.items():
            (version_dir / Path(path).name).write_bytes(files[kind])
        (version_dir / "index.json").write_bytes(index)
        meta = {"revision": revision, "parent": newest.revision, "message": title, "paths": paths}
        (version_dir / "meta.json").write_text(json.dumps(meta))
        (tenant_dir / "HEAD").write_text(f"{revision}\n")
        return revision

    def rewrite_index(self, index: bytes) -> None:
        """The newest version's own index, rewritten in place (the file store)."""
        assert self.root is not None
        newest = self.writer.latest(HASHED)
        assert newest is not None
        (self.root / ".revisions" / HASHED / newest.revision / "index.json").write_bytes(index)

    def stored_index(self, revision: str) -> TenantIndex:
        """The index the store holds as of ``revision``."""
        if self.hub is not None:
            (commit,) = [c for c in self.hub.commits(REPO) if c.oid == revision]
            data = commit.files[index_path(HASHED)]
        else:
            assert self.root is not None
            data = (self.root / ".revisions" / HASHED / revision / "index.json").read_bytes()
        return TenantIndex.model_validate_json(data)


@pytest.fixture(params=["file", "hub"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        root = tmp_path / "store"
        yield Backend("file", FileStore(root), lambda: FileStore(root), root=root)
        return
    with running_hub_server() as hub:

        def hub_store() -> ModelStore:
            options = StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint)
            return open_store(f"hf://{REPO}", options)

        yield Backend("hub", hub_store(), hub_store, hub=hub)


def forged(version: int, served: tuple[str, ...], parent: str | None) -> bytes:
    index = TenantIndex(
        tenant_hash=HASHED, version=version, parent=parent, served=served, publish_id="0" * 32
    )
    return index.model_dump_json().encode()


def five_versions(store: ModelStore, files: dict[str, bytes] = FILES) -> list[str]:
    """The tenant's five real versions (m1 .. m5); their revisions, oldest first."""
    revisions: list[str] = []
    for message in reversed(MESSAGES):
        parent = revisions[-1] if revisions else None
        revisions.append(store.publish(HASHED, files, message=message, parent=parent).revision)
    return revisions


#: The forger's index over the five real versions, given the newest real revision.
ATTACKS: dict[str, Callable[[str], bytes]] = {
    "a count of 2**53": lambda v5: forged(2**53, ("forged", *MESSAGES), v5),
    "a count reset to 1": lambda v5: forged(1, ("forged",), v5),
    "a trimmed served list": lambda v5: forged(6, ("forged",), v5),
    "a count 100 too high, all else right": lambda v5: forged(106, ("forged", *MESSAGES), v5),
}


@pytest.mark.parametrize("reader", ["a fresh reader", "the writer"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_forged_version_is_counted_from_the_history_and_the_next_publish_goes_on(
    backend: Backend, attack: str, reader: str
) -> None:
    real = five_versions(backend.writer)
    revision = backend.forge_version("forged", ATTACKS[attack](real[-1]))
    store = backend.reader() if reader == "a fresh reader" else backend.writer

    head = store.head(HASHED)
    assert head is not None and head.revision == revision  # the store's newest, as ever
    assert (head.version, head.recent) == (6, ("forged", *MESSAGES))
    assert head.parent == real[-1]
    assert store.head(HASHED) == head  # remembered: the same answer again

    # The tenant's next version goes on top of it, and its index is true again.
    published = store.publish(HASHED, FILES, message="m7", parent=head.revision)
    after = store.head(HASHED)
    assert after is not None and after.revision == published.revision
    assert (after.version, after.recent) == (7, ("m7", "forged", *MESSAGES))
    rebuilt = backend.stored_index(published.revision)
    assert (rebuilt.version, rebuilt.served, rebuilt.parent) == (7, after.recent, revision)
    fresh = backend.reader().head(HASHED)
    assert fresh is not None and (fresh.version, fresh.recent) == (7, after.recent)


#: The forger's rewrite of the newest version's own index, given its parent's revision.
IN_PLACE: dict[str, Callable[[str], bytes]] = {
    "a count of 2**53": lambda v4: forged(2**53, MESSAGES, v4),
    "a count reset to 1": lambda v4: forged(1, ("m5",), v4),
    "a trimmed served list": lambda v4: forged(5, ("m5",), v4),
}


@pytest.mark.parametrize("attack", list(IN_PLACE))
def test_an_index_rewritten_in_place_is_counted_from_the_history(
    tmp_path: Path, attack: str
) -> None:
    store = FileStore(tmp_path)
    real = five_versions(store)
    forger = Backend("file", store, lambda: FileStore(tmp_path), root=tmp_path)
    forger.rewrite_index(IN_PLACE[attack](real[-2]))
    head = FileStore(tmp_path).head(HASHED)  # a reader that verified nothing
    assert head is not None and head.revision == real[-1]
    assert (head.version, head.recent, head.parent) == (5, MESSAGES, real[-2])
    published = FileStore(tmp_path).publish(HASHED, FILES, message="m6", parent=real[-1])
    after = FileStore(tmp_path).head(HASHED)
    assert after is not None and after.revision == published.revision
    assert (after.version, after.recent) == (6, ("m6", *MESSAGES))


def test_an_honest_index_still_vouches_for_a_long_history(backend: Backend) -> None:
    """Past VERIFY_DEPTH versions the index counts, when history and the index agree."""
    total = MAX_SERVED + 3
    for version in range(1, total + 1):
        backend.writer.publish(HASHED, FILES, message=f"event={version}")
    head = backend.reader().head(HASHED)
    assert head is not None and head.version == total
    assert head.recent == tuple(f"event={v}" for v in range(total, 3, -1))


def handler(store: ModelStore) -> RequestHandler:
    return RequestHandler(
        store=store,
        store_uri=store.uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SMALL_SEARCH),
        replay=lambda request: tenant_rows(),
        topics=OutcomeTopics(models="m", failures="f", decisions="d"),
    )


def test_a_forged_index_neither_rolls_consumers_back_nor_lets_a_request_be_served_twice(
    backend: Backend,
) -> None:
    request = request_for("acme")
    first = handler(backend.writer).handle(request).events[0][2]
    assert isinstance(first, ModelPublished) and first.model_version == 1
    model = {
        kind: backend.writer.read(path, revision=first.revision)
        for kind, path in model_paths(HASHED).items()
    }
    for n in range(2, 6):  # four more versions of the same model
        backend.writer.publish(HASHED, model, message=f"slaops model for request other{n}")
    # The attack: a version whose index says it is the first and served nothing else.
    live = backend.writer.latest(HASHED)
    assert live is not None
    backend.forge_version("forged", forged(1, ("forged",), live.revision))

    consumer = ModelAuthority(store=backend.reader(), store_uri=backend.writer.uri, tenant_key=KEY)
    seen = consumer.newest("acme")
    assert seen is not None and seen.version == 6  # newer than the live version 5
    # A retrainer that just started gets the first request again (a redelivery).
    outcome = handler(backend.reader()).handle(request)
    assert outcome.kind == "duplicates" and outcome.events == []  # served: not retrained
    messages = backend.writer.revision_messages(HASHED)
    assert len(messages) == 6 and messages.count(commit_message(request, KEY)) == 1
    backend.writer.publish(HASHED, model, message="slaops model for request seven")
    newer = consumer.newest("acme", live_revision=seen.revision)
    assert newer is not None and newer.version == 7
