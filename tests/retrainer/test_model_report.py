"""Each published version carries its report: plots and a Markdown card, in the same commit.

The report is rendered from the JSON card, under the tenant's HMAC name only; a report
that cannot be rendered never costs the version.
"""

from __future__ import annotations

import io
import json
import logging
import math

import matplotlib.image
import numpy as np
import pytest
import yaml
from pydantic import SecretStr

import retrainer.publisher as publisher
from kernel.artifacts import ModelCard, sha256_hex
from kernel.model_report import PLOT_KINDS, build_report, report_card_digest
from kernel.model_report.markdown import MODEL_INDEX_METRICS
from kernel.store import (
    REPORT_KINDS,
    ModelStore,
    StoreNotFound,
    open_store,
    report_paths,
)
from kernel.tenant_hash import tenant_hash
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.search import SearchConfig
from schemas import ModelPublished
from testkit.request_handlers import StoreFixture
from testkit.retrain_data import request_for, tenant_rows

KEY = SecretStr("report-tenant-key-0123456789abcd")
SLUG = "acme-reports"
#: Two learning rates x depths 0 and 1: a landscape with more than one cell.
SEARCH = SearchConfig(
    grid={"lr": [1e-2, 1e-3], "module__hidden_layers": [0, 1], "module__width": [16]},
    n_jobs=1,
    max_epochs=12,
    n_splits=3,
)


def publish(store: StoreFixture) -> ModelPublished:
    uri, model_store = store
    handler = RequestHandler(
        store=model_store,
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SEARCH, min_rows=100),
        replay=lambda request: tenant_rows(900, seed=5),
        topics=OutcomeTopics(models="m", failures="f", decisions="d"),
    )
    event = handler.handle(request_for(SLUG)).events[0][2]
    assert isinstance(event, ModelPublished)
    return event


def read_report(model_store: ModelStore, event: ModelPublished) -> dict[str, bytes]:
    paths = report_paths(event.tenant_hash)
    return {kind: model_store.read(path, revision=event.revision) for kind, path in paths.items()}


def test_a_version_is_published_with_its_plots_and_markdown_card_in_the_same_commit(
    store: StoreFixture,
) -> None:
    _uri, model_store = store
    event = publish(store)
    hashed = tenant_hash(SLUG, KEY)
    card_bytes = model_store.read(event.paths["card"], revision=event.revision)
    files = read_report(model_store, event)  # at the version's own revision: one commit
    assert set(files) == set(REPORT_KINDS)
    digest = sha256_hex(card_bytes)
    for kind, data in files.items():
        assert report_card_digest(kind, data) == digest, kind  # rendered from THIS card
        assert SLUG.encode() not in data, f"{kind} names the slug"
    for path in report_paths(hashed).values():
        assert path.startswith(f"sla_models/{hashed}_sla_model.") and SLUG not in path
    # The announcement still names exactly the model files (consumers check that).
    assert set(event.paths) == {"safetensors", "pt", "card"}


def test_the_plots_are_small_non_blank_pngs() -> None:
    card_bytes = _card_bytes()
    files = build_report(card_bytes, "a" * 64)
    for kind in PLOT_KINDS:
        data = files[kind]
        assert data.startswith(b"\x89PNG"), kind
        assert 2_000 < len(data) < 150_000, (kind, len(data))
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        height, width = pixels.shape[:2]
        assert 200 <= width <= 1000 and 150 <= height <= 600, (kind, pixels.shape)
        assert float(np.asarray(pixels[..., :3]).std()) > 0.05, f"{kind} is blank"


def test_rendering_is_deterministic() -> None:
    card_bytes = _card_bytes()
    assert build_report(card_bytes, "b" * 64) == build_report(card_bytes, "b" * 64)


def test_the_markdown_card_yaml_parses_and_carries_the_json_cards_metrics() -> None:
    card_bytes = _card_bytes()
    card = ModelCard.model_validate_json(card_bytes)
    hashed = "c" * 64
    text = build_report(card_bytes, hashed)["report"].decode()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("\n---\n", 1)[0][4:])
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    scores = {k: v for k, v in card.metrics.items() if k in MODEL_INDEX_METRICS}
    assert metrics == {k: v for k, v in scores.items() if math.isfinite(v)}
    assert {"log_loss", "brier", "f1"} <= set(metrics)
    body = text.split("\n---\n", 1)[1]
    for heading in ("## Intended use", "## Training data", "## Evaluation", "## Limitations"):
        assert heading in body
    for kind, path in report_paths(hashed).items():  # every plot embedded by relative path
        if kind != "report":
            assert f"]({path.rsplit('/', 1)[1]})" in body, kind


def test_model_index_holds_only_scores_and_the_counts_are_in_the_body() -> None:
    card_bytes = _card_bytes()
    card = ModelCard.model_validate_json(card_bytes)
    text = build_report(card_bytes, "d" * 64)["report"].decode()
    head, body = text[4:].split("\n---\n", 1)
    (result,) = yaml.safe_load(head)["model-index"][0]["results"]
    names = {m["type"] for m in result["metrics"]}
    counts = {"tn", "fp", "fn", "tp", "n_rows", "positive_rate", "threshold"}
    assert counts <= set(card.metrics)  # the card has them ...
    assert not names & counts  # ... the model-index does not
    assert all(
        isinstance(m["value"], float) and math.isfinite(m["value"]) for m in result["metrics"]
    )
    m = {k: int(card.metrics[k]) for k in ("tn", "fp", "fn", "tp", "n_rows")}
    row = f"| {m['n_rows']} | {m['tp'] + m['fn']} | {card.metrics['positive_rate']:.4f} | "
    row += f"{card.metrics['threshold']:.4f} | {m['tn']} | {m['fp']} | {m['fn']} | {m['tp']} |"
    assert "| rows | positives | positive rate | threshold | true negatives |" in body
    assert row in body


def test_a_card_carries_compact_report_fields_and_old_cards_still_load() -> None:
    card_bytes = _card_bytes()
    card = ModelCard.model_validate_json(card_bytes)
    assert 1 <= len(card.learning_curve) <= 1000 and card.learning_curve[0].epoch == 1
    assert 2 <= len(card.pr_curve) <= 201
    rows = [r for r in card.cv_table if "mean_val_log_loss" in r]
    assert len(rows) == 4 and all({"lr", "module__hidden_layers"} <= set(r["params"]) for r in rows)
    assert {"tn", "fp", "fn", "tp"} <= set(card.metrics)
    assert len(card_bytes) < 64_000
    old = json.loads(card_bytes)
    del old["learning_curve"], old["pr_curve"]
    old_card = ModelCard.model_validate_json(json.dumps(old))
    assert old_card.learning_curve == [] and old_card.pr_curve == []
    assert set(build_report(json.dumps(old).encode(), "d" * 64)) == set(REPORT_KINDS)
    too_long = {**old, "pr_curve": [{"threshold": 0.5, "precision": 0.5, "recall": 0.5}] * 202}
    with pytest.raises(ValueError, match="pr_curve"):
        ModelCard.model_validate_json(json.dumps(too_long))


def test_a_report_that_cannot_be_rendered_never_costs_the_version(
    store: StoreFixture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Decision: render before the commit; on failure publish the version without it."""

    def broken(card_bytes: bytes, tenant_hash: str) -> dict[str, bytes]:
        raise RuntimeError("the plotting library broke")

    monkeypatch.setattr(publisher, "build_report", broken)
    _uri, model_store = store
    with caplog.at_level(logging.ERROR, logger="retrainer.publisher"):
        event = publish(store)
    assert "report not rendered" in caplog.text and "the plotting library broke" in caplog.text
    latest = model_store.latest(event.tenant_hash)
    assert latest is not None and latest.revision == event.revision
    card = model_store.read(event.paths["card"], revision=event.revision)
    assert sha256_hex(card) == event.sha256["card"]  # the version itself is whole
    for path in report_paths(event.tenant_hash).values():
        with pytest.raises(StoreNotFound):
            model_store.read(path, revision=event.revision)


_CARD: list[bytes] = []


def _card_bytes() -> bytes:
    """One real card, trained once per test session on the file store."""
    if not _CARD:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            uri = f"file://{tmp}"
            event = publish((uri, open_store(uri)))
            _CARD.append(open_store(uri).read(event.paths["card"], revision=event.revision))
    return _CARD[0]


def test_a_store_takes_only_the_model_kinds_and_the_report_kinds(store: StoreFixture) -> None:
    _uri, model_store = store
    files = {"safetensors": b"s", "pt": b"p", "card": b"{}"}
    with pytest.raises(ValueError, match="report kinds"):
        model_store.publish("e" * 64, {**files, "notes": b"x"}, message="m")
    with pytest.raises(ValueError, match="report kinds"):
        model_store.publish("e" * 64, {"card": b"{}", "report": b"r"}, message="m")
    assert model_store.latest("e" * 64) is None
