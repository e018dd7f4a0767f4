"""Hostile readers and writers of the model store (issue 11, items 3, 5 and 6).

Each test performs the attack, with nothing but what that attacker holds, and asserts
the outcome: a store reader with a guess list confirms no slug; a store writer's
symlinked, endless, FIFO or oversized file is refused without being read whole; a
NaN or inconsistent model is refused at load and never blocks the tenant's retrains.
"""

from __future__ import annotations

import hashlib
import re
from itertools import product
from pathlib import Path
from typing import get_args

import pytest
from pydantic import SecretStr

from kernel.store import FileStore
from kernel.tenant_hash import tenant_hash
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import RequestHandler
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig
from schemas import ModelPublished, RetrainRequested
from schemas.retrain import RetrainReason, retrain_event_id
from tests.retrain_data import request_for, tenant_rows

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
        models_topic="sla.models",
        failures_topic="sla.retrain.failed",
        decisions_topic="sla.retrain.decisions",
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
