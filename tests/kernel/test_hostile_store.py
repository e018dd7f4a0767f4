"""Hostile readers and writers of the model store (issue 11, items 3, 5 and 6; issue 12).

Each test performs the attack, with nothing but what that attacker holds, and asserts
the outcome: a store reader with a guess list confirms no slug; a store writer's
symlinked, endless, FIFO or oversized file is refused without being read whole; a
NaN or inconsistent model is refused at load and never blocks the tenant's retrains;
a forged, foreign or oversized tenant index never names the newest version (the
card's last commit does) and never blocks a publish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, TimeoutError
from itertools import product
from pathlib import Path
from typing import get_args

import pytest
import torch
from pydantic import SecretStr

from kernel.artifacts import ArtifactError, ModelCard, load_model, serialize_model
from kernel.errors import StoreError
from kernel.store import FileStore, HubStore, PublishedFiles, StoreOptions, model_paths, open_store
from kernel.store.index import MAX_INDEX_BYTES, next_index
from kernel.store.paths import index_path
from kernel.tenant_hash import tenant_hash
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from schemas import ModelPublished, RetrainRequested
from schemas.retrain import RetrainReason, retrain_event_id
from testkit.hub_server import running_hub_server
from testkit.retrain_data import request_for, tenant_rows

KEY = SecretStr("hostile-store-key-0123456789abcdef")
SMALL_SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [8]},
    n_jobs=1,
    max_epochs=5,
    n_splits=3,
)
TENANTS = ("acme", "globex-eu", "initech_2")


def handler(store: FileStore) -> RequestHandler:
    rows = tenant_rows()

    def replay(request: RetrainRequested) -> TenantRows:
        return rows

    return RequestHandler(
        store=store,
        store_uri=store.uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SMALL_SEARCH),
        replay=replay,
        topics=OutcomeTopics(
            models="sla.models", failures="sla.retrain.failed", decisions="sla.retrain.decisions"
        ),
    )


def publish_versions(root: Path) -> FileStore:
    store = FileStore(root)
    serve = handler(store)
    for tenant in TENANTS:
        outcome = serve.handle(request_for(tenant))
        assert isinstance(outcome.events[0][2], ModelPublished), outcome
    return store


# --- item 3: a store reader confirms slugs by guessing ----------------------------------
def guess_list() -> list[str]:
    """1,004 guesses: 1,000 plausible slugs and the three real ones."""
    return [f"tenant-{i:04d}" for i in range(1000)] + [*TENANTS, "umbrella"]


def everything_readable(root: Path) -> str:
    """Every byte in the store, as text: messages, cards, the mirror, the lot."""
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(root.rglob("*")) if p.is_file()
    )


def confirm_slugs(root: Path, guesses: list[str]) -> set[str]:
    """The attack: recompute each guess's request id from what the store says.

    The card's lineage gives the topic, partition and offset ranges (the trigger is
    one of the range's ends); the reason is one of four. A guess whose id (or its
    sha256, in case the store keeps a digest) appears in the store is confirmed.
    """
    text = everything_readable(root)
    tokens = set(re.findall(r"[0-9a-f]{32,64}", text))
    ranges = set(
        re.findall(
            r'"end_offset": (\d+),\s*"partition": (\d+),\s*"start_offset": (\d+),\s*'
            r'"topic": "([^"]+)"',
            text,
        )
    )
    assert ranges, "the lineage no longer names its source ranges: adapt the attack"
    confirmed = set()
    for guess, reason, (end, partition, start, topic) in product(
        guesses, get_args(RetrainReason), ranges
    ):
        for offset in {int(start), int(end) - 1, int(end)}:
            event_id = retrain_event_id(guess, reason, topic, int(partition), offset)
            if event_id in tokens or hashlib.sha256(event_id.encode()).hexdigest() in tokens:
                confirmed.add(guess)
    return confirmed


def test_a_store_reader_with_a_guess_list_confirms_no_slug(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = publish_versions(root)
    for tenant in TENANTS:  # the versions are there and name their request (keyed)
        messages = store.revision_messages(tenant_hash(tenant, KEY))
        assert len(messages) == 1 and request_for(tenant).event_id not in messages[0]
    text = everything_readable(root)
    assert not any(tenant in text for tenant in TENANTS)
    assert confirm_slugs(root, guess_list()) == set()


def test_control_the_same_attack_confirms_every_slug_against_the_unkeyed_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the store held before: the event_id itself where the keyed ref is now.
    monkeypatch.setattr("retrainer.publisher.request_ref", lambda event_id, key: event_id)
    root = tmp_path / "store"
    publish_versions(root)
    assert confirm_slugs(root, guess_list()) == set(TENANTS)


# --- item 5: a store writer plants files that cannot be read safely ---------------------
def one_version(root: Path) -> tuple[FileStore, str, dict[str, str], Path]:
    """A store with one small version; its revision, paths and version directory."""
    store = FileStore(root)
    hashed = tenant_hash("acme", KEY)
    files = {"safetensors": b"w" * 100, "pt": b"p" * 100, "card": b"{}"}
    published = store.publish(hashed, files, message="v1")
    version_dir = root / ".revisions" / hashed / published.revision
    return store, published.revision, published.paths, version_dir


def run_bounded(fn: Callable[[], object], seconds: float = 5.0) -> BaseException | object:
    """`fn()` in a thread; a hang fails the test instead of hanging it."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn)
        try:
            return future.result(timeout=seconds)
        except TimeoutError:
            pytest.fail(f"still blocked after {seconds}s")
        except BaseException as exc:  # the refusal is the result
            return exc


@pytest.mark.parametrize(
    ("plant", "match"),
    [
        (lambda p: p.symlink_to("/dev/zero"), "symbolic link"),  # before: MemoryError
        (lambda p: p.symlink_to(p.with_name("meta.json")), "symbolic link"),
        (lambda p: os.mkfifo(p), "not a regular file"),  # before: hung for ever
        (lambda p: p.mkdir(), "not a regular file"),
    ],
    ids=["symlink-to-dev-zero", "symlink-to-a-file", "fifo", "directory"],
)
def test_a_card_that_is_not_a_regular_file_is_refused_unread(
    tmp_path: Path, plant: Callable[[Path], None], match: str
) -> None:
    store, revision, paths, version_dir = one_version(tmp_path)
    card = version_dir / Path(paths["card"]).name
    card.unlink()
    plant(card)
    result = run_bounded(lambda: store.read(paths["card"], revision=revision))
    assert isinstance(result, StoreError) and match in str(result), result


def test_a_head_or_history_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    store, _, _, version_dir = one_version(tmp_path)
    hashed = version_dir.parent.name
    (version_dir / "meta.json").unlink()
    os.mkfifo(version_dir / "meta.json")
    result = run_bounded(lambda: store.revision_messages(hashed))
    assert isinstance(result, StoreError) and "not a regular file" in str(result), result
    head = version_dir.parent / "HEAD"
    head.unlink()
    os.mkfifo(head)
    result = run_bounded(lambda: store.latest(hashed))
    assert isinstance(result, StoreError) and "not a regular file" in str(result), result


def test_an_oversized_card_is_refused_by_its_size_without_being_read(tmp_path: Path) -> None:
    store, revision, paths, version_dir = one_version(tmp_path)
    card = version_dir / Path(paths["card"]).name
    with card.open("r+b") as fh:  # 400 MB, sparse: no disk, and no memory unless read
        fh.truncate(400 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match=r"419430400 bytes, over 67108864"):
            store.read(paths["card"], revision=revision)  # the default: the loader's limit
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024  # before: +400 MB
    with pytest.raises(StoreError, match="100 bytes, over 99"):
        store.read(paths["safetensors"], revision=revision, max_bytes=99)
    assert store.read(paths["safetensors"], revision=revision, max_bytes=100) == b"w" * 100


def test_an_oversized_file_on_the_hub_is_refused_before_it_is_downloaded() -> None:
    with running_hub_server() as hub:
        store = open_store(
            "hf://slaops-test/models",
            StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint, backoff_s=0.01),
        )
        hashed = tenant_hash("acme", KEY)
        big = b"x" * 4096
        published = store.publish(
            hashed, {"safetensors": big, "pt": b"p", "card": b"{}"}, message="v1"
        )
        assert isinstance(store, HubStore)
        path = published.paths["safetensors"]
        with pytest.raises(StoreError, match="4096 bytes, over 1000"):
            store.read(path, revision=published.revision, max_bytes=1000)
        assert store.read(path, revision=published.revision, max_bytes=4096) == big


# --- item 6: an unusable newest version must not block the tenant's retrains ----------
def test_a_nan_newest_version_is_no_champion_and_the_next_retrain_publishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path / "store")
    serve = handler(store)
    first = serve.handle(request_for("acme")).events[0][2]
    assert isinstance(first, ModelPublished)
    hashed = tenant_hash("acme", KEY)
    # The attack: a store writer publishes a NaN copy of the model as the newest version.
    card = ModelCard.model_validate_json(store.read(first.paths["card"], revision=first.revision))
    weights = store.read(first.paths["safetensors"], revision=first.revision)
    module, _ = load_model(
        store.read(first.paths["card"], revision=first.revision), weights, "safetensors"
    )
    with torch.no_grad():
        module.head.bias.fill_(float("nan"))
    poisoned = serialize_model(module, card.model_dump(exclude={"architecture", "files"}))
    with pytest.raises(ArtifactError, match=r"tensor 'head.bias' has 1 non-finite"):
        load_model(poisoned.card, poisoned.safetensors, "safetensors")
    files = {"safetensors": poisoned.safetensors, "pt": poisoned.pt, "card": poisoned.card}
    nan_version = store.publish(hashed, files, message="slaops model for request forged")
    with caplog.at_level(logging.WARNING, logger="retrainer.publisher"):
        outcome = serve.handle(request_for("acme", offset=650))
    assert outcome.kind == "published", outcome
    event = outcome.events[0][2]
    assert isinstance(event, ModelPublished) and event.decision.champion_score is None
    assert f"champion {nan_version.revision} cannot be loaded" in caplog.text
    assert "non-finite" in caplog.text
    assert store.latest(hashed) == PublishedFiles(event.revision, event.paths)  # type: ignore[arg-type]


# --- issue 12: the tenant index is read back from a store anyone may write -------------
def _index_for(thash: str, message: str, version: int = 1) -> bytes:
    data = json.loads(next_index(None, thash, message, "0" * 32))
    return json.dumps({**data, "version": version}).encode()


HOSTILE_INDEX_WRITES: dict[str, Callable[[str, dict[str, str]], tuple[dict[str, bytes], str]]] = {
    # (files written, commit title); the card is rewritten where the writer forges a version
    "index-only commit after the version": lambda h, p: (
        {index_path(h): _index_for(h, "forged", version=999)},
        "forged",
    ),
    "a version without an index": lambda h, p: ({p["card"]: b"{}"}, "foreign"),
    "an index naming another tenant": lambda h, p: (
        {p["card"]: b"{}", index_path(h): _index_for("ab" * 32, "other")},
        "other",
    ),
    "an oversized index": lambda h, p: (
        {p["card"]: b"{}", index_path(h): b" " * (MAX_INDEX_BYTES + 1)},
        "big",
    ),
    "a malformed index": lambda h, p: (
        {p["card"]: b"{}", index_path(h): b'{"format": 1, "version": -1}'},
        "bad",
    ),
}
#: What the lookup then says: which commit is newest ("v2" or the forger's), the count
#: (from the store's history: a forger's commit of the card is a version).
EXPECTED_HEAD = {
    "index-only commit after the version": ("v2", 2, ("m2", "m1")),
    "a version without an index": ("forger", 3, ("foreign", "m2", "m1")),
    "an index naming another tenant": ("forger", 3, ("other", "m2", "m1")),
    "an oversized index": ("forger", 3, ("big", "m2", "m1")),
    "a malformed index": ("forger", 3, ("bad", "m2", "m1")),
}


@pytest.mark.parametrize("attack", list(HOSTILE_INDEX_WRITES))
def test_a_hostile_index_never_names_the_newest_version_nor_blocks_a_publish(
    attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_hub_server() as hub:
        store = open_store(
            "hf://slaops-test/models",
            StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint, backoff_s=0.01),
        )
        hashed = tenant_hash("acme", KEY)
        files = {"safetensors": b"w", "pt": b"p", "card": b"{}"}
        v1 = store.publish(hashed, files, message="m1")
        v2 = store.publish(hashed, files, message="m2", parent=v1.revision)
        written, title = HOSTILE_INDEX_WRITES[attack](hashed, model_paths(hashed))
        forger = hub.push_commit("slaops-test/models", written, title)

        before = len(hub.requests)
        with caplog.at_level(logging.WARNING, logger="kernel.store"):
            head = store.head(hashed)
        looked_up = hub.requests[before:]

        newest, version, recent = EXPECTED_HEAD[attack]
        assert head is not None
        assert head.revision == (v2.revision if newest == "v2" else forger)
        assert (head.version, head.recent) == (version, recent)
        assert len(looked_up) <= 6  # bounded whatever was planted
        if attack == "an oversized index":  # refused by its size, never downloaded
            assert not any(m == "GET" and "index" in path for m, path in looked_up)
        if attack not in ("index-only commit after the version",):
            assert "index" in caplog.text  # every ignored index is logged
        # The tenant's next publish goes on top of whatever the store says is newest.
        v_next = store.publish(hashed, files, message="m-next", parent=head.revision)
        after = store.head(hashed)
        assert after is not None and after.revision == v_next.revision
        assert (after.version, after.recent[0]) == (version + 1, "m-next")
