"""Live models in the consumer: safe loading of announcements, forecasts, performance drift."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from confluent_kafka import Message

from consumer.live_model import LiveModel
from consumer.performance import PerformanceConfig
from kernel.artifacts import CARD_FORMAT_VERSION
from kernel.early_warning import QUIET, warning_on
from kernel.errors import ModelRefused
from kernel.tenant_hash import tenant_hash
from testkit.live_models import KEY, LEARNT_MS, Published, core_with, load, messages
from testkit.paths import ROOT
from testkit.retrain_data import tenant_rows

NO_EVENTS = (np.empty(0), np.empty((0, 6), np.float32), np.empty(0, bool))
#: A changed concept: the same metrics breach at a lower p99 (twice as often as learnt).
CHANGED_MS = 150.0


def test_an_announced_model_loads_and_forecasts_like_its_card_says(published: Published) -> None:
    model = load(published)
    card = model.card
    assert (model.tenant, model.version, model.horizon) == ("acme", 1, card.horizon)
    # Format 3: P(a breach within the next `horizon` intervals), horizon 6 by default.
    assert (card.format_version, card.target, card.horizon) == (CARD_FORMAT_VERSION, "within", 6)
    rows = tenant_rows(600, seed=11, threshold_ms=LEARNT_MS)  # unseen rows of the same rule
    proba = model.forecast(NO_EVENTS, (rows.ts, rows.features, rows.labels)).astype(np.float64)
    assert proba.shape == (600,) and ((proba >= 0) & (proba <= 1)).all()
    # Scored as the card says (any breach in t+1 .. t+horizon, complete rows only), the
    # forecasts earn about the card's log loss, far better than what a single interval
    # `horizon` later would make of them.
    made = np.arange(model.features.history, 600 - model.horizon)
    breaches = np.concatenate(([0], np.cumsum(rows.labels)))
    within = breaches[made + model.horizon + 1] - breaches[made + 1] > 0
    at = rows.labels[made + model.horizon]
    assert log_loss(proba[made], within) < 1.5 * card.metrics["log_loss"]
    assert log_loss(proba[made], within) < log_loss(proba[made], at) / 2


def log_loss(proba: np.ndarray, outcome: np.ndarray) -> float:
    p = np.clip(proba, 0.01, 0.99)
    return float(-np.mean(np.where(outcome, np.log(p), np.log1p(-p))))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"store_uri": "file:///elsewhere"}, "not ours"),
        ({"tenant_hash": tenant_hash("globex", KEY)}, "not this tenant's"),
        ({"tenant": "globex"}, "not this tenant's"),
        ({"paths": {"safetensors": "../../etc/passwd", "pt": "x", "card": "y"}}, "paths"),
        ({"sha256": {"safetensors": "0" * 64, "pt": "0" * 64, "card": "0" * 64}}, "sha256"),
        ({"revision": "0" * 40}, "is not the store's newest"),
        ({"revision": "0" * 40, "model_version": 2**62}, "is not the store's newest"),
    ],
)
def test_hostile_announcements_are_refused(
    published: Published, changes: dict, reason: str
) -> None:
    with pytest.raises(ModelRefused, match=reason):
        load(published, **changes)


def test_tampered_weights_are_refused(published: Published, tmp_path: Path) -> None:
    uri, store, event = published
    root = Path(uri.removeprefix("file://"))
    (weights,) = root.glob(f".revisions/*/{event.revision}/*.safetensors")
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ModelRefused, match="sha256"):
            load(published)
    finally:
        weights.write_bytes(original)


def stream_ts(message: Message) -> float:
    return datetime.fromisoformat(json.loads(message.value() or b"")["ts"]).timestamp()


def test_concept_drift_raises_one_performance_drift_request(published: Published) -> None:
    core = core_with(load(published))
    before = messages(4, LEARNT_MS, 1_500)  # the rule the model learnt
    after = messages(5, CHANGED_MS, 1_500, start=1_500)  # the same metrics breach more often
    requests = []
    for batch in (before[:700], before[700:], after[:700], after[700:]):
        requests += core.process(batch).requests
    assert [r.reason for r in requests] == ["performance_drift"]
    request = requests[0]
    assert 1_500 <= request.source[0].end_offset - 1 < 2_400
    assert request.detector == "cusum" and request.details.features == ["log_loss"]
    stats = request.details.statistic
    # Recently worse than its out-of-fold record (the excess is the live loss minus what
    # the card's record says each forecast earns), where it used to earn it, and worse
    # than the record's log loss.
    assert stats["log_loss_excess_recent"] > max(0.0, stats["log_loss_excess"])
    assert stats["log_loss_recent"] > stats["card_log_loss"]


def test_a_tenant_with_a_model_gets_no_cold_start_and_stable_data_no_request(
    published: Published,
) -> None:
    core = core_with(load(published), cold_start=True, cold_start_min_events=100)
    stream = messages(6, LEARNT_MS, 2_000)
    requests = [r for i in range(0, 2_000, 500) for r in core.process(stream[i : i + 500]).requests]
    assert requests == []
    cold = core_with(None, cold_start=True, cold_start_min_events=100)
    assert [r.reason for r in cold.process(stream).requests] == ["cold_start"]


def test_hot_swap_switches_forecasts_between_batches(published: Published) -> None:
    model = load(published)
    # The forecaster's own probabilities: the live offset (test_recalibration) is off.
    core = core_with(model, publish_forecasts=True, recalibration_events=0)
    stream = messages(7, LEARNT_MS, 400)
    first = core.process(stream[:200])
    newer = LiveModel(
        tenant="acme",
        revision="f" * 40,
        version=2,
        request_event_id="0" * 32,
        module=model.module,
        card=model.card,
    )
    core.apply_model(newer)
    second = core.process(stream[200:])
    records = [json.loads(v) for _k, v in first.forecasts + second.forecasts]
    revisions = [record["model_revision"] for record in records]
    forecast = records[0]
    assert sorted(forecast) == sorted(
        [
            "tenant",
            "ts",
            "horizon",
            "probability",
            "breach_expected",
            "model_revision",
            "model_version",
        ]
    )
    assert datetime.fromisoformat(forecast["ts"]).timestamp() == stream_ts(stream[0])
    assert (forecast["tenant"], forecast["horizon"], forecast["model_version"]) == (
        "acme",
        model.horizon,
        1,
    )
    assert len(revisions) == 400  # every event forecast: no gap across the swap
    assert set(revisions[:200]) == {model.revision} and set(revisions[200:]) == {"f" * 40}
    # Each forecast is the one the model makes of the stream, and `breach_expected` says
    # whether the warning is on: the tenant quiet (no breach in the last QUIET events)
    # and the forecast at the card's threshold, on both sides of the swap.
    events = tenant_rows(400, seed=7, threshold_ms=LEARNT_MS)
    proba = model.forecast(NO_EVENTS, (events.ts, events.features, events.labels))
    published_proba = np.array([record["probability"] for record in records])
    np.testing.assert_allclose(published_proba, proba, atol=2e-6)
    quiet = np.convolve(events.labels.astype(np.float64), np.ones(QUIET))[:400] == 0
    on = warning_on(proba, quiet, model.threshold)
    expected = np.array([record["breach_expected"] for record in records])
    assert (expected == on).all() and on[:200].any() and on[200:].any() and not on.all()
    assert ((proba >= model.threshold) & ~expected).any()  # high, but not quiet: no warning
    core.apply_model(model)  # an older version never replaces a newer one
    assert core.model("acme") is newer


@pytest.mark.parametrize("settle", [0, 240])
def test_performance_request_waits_settle_events_after_the_alarm_whatever_the_batching(
    published: Published,
    settle: int,
) -> None:
    stream = messages(4, LEARNT_MS, 1_500) + messages(5, CHANGED_MS, 1_500, start=1_500)
    runs = []
    for size in (700, 137):
        core = core_with(
            load(published), performance=PerformanceConfig(performance_settle_events=settle)
        )
        runs.append(
            [
                r
                for i in range(0, len(stream), size)
                for r in core.process(stream[i : i + size]).requests
            ]
        )
    assert runs[0] == runs[1] and len(runs[0]) == 1
    (request,) = runs[0]
    alarm_ts = request.details.statistic["alarm_ts"]
    assert request.detected_at.timestamp() - alarm_ts == pytest.approx(60.0 * settle)
    assert request.details.statistic["settle_events"] == settle


def readme_snippet(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        rf"<!-- snippet:{name} -->\n```python\n(.+?)```\n<!-- /snippet:{name} -->", readme, re.S
    )
    assert match is not None, f"README.md lacks the {name} snippet"
    return match.group(1)


def test_the_readme_loading_snippets_give_the_live_models_probabilities(
    published: Published,
) -> None:
    _uri, store, event = published
    events = tenant_rows(300, seed=9, threshold_ms=LEARNT_MS)
    events.features[-60:, :3] *= 3.0  # latencies never seen in training: shrunk to the prior
    model = load(published)
    expected = model.forecast(NO_EVENTS, (events.ts, events.features, events.labels))
    rows = model.features.transform(events.ts, events.features, events.labels)
    # Every path of the gated module is taken: the quiet head, the incident head (the
    # gate column is the `quiet` feature), and the out-of-distribution shrinkage.
    quiet = np.convolve(events.labels.astype(np.float64), np.ones(QUIET))[:300] == 0
    assert model.card.architecture["gated"] and quiet.any() and not quiet.all()
    assert (model.module.ood_score(torch.as_tensor(rows)).numpy() > 0).any()
    warning = warning_on(expected, quiet, model.threshold)
    assert warning.any() and not warning.all()

    with_slaops: dict[str, Any] = {
        "message_value": event.model_dump_json().encode(),
        "STORE_URI": _uri,  # the consumer's configured store, never the event's
        "TENANT_KEY": KEY,
        "ts": events.ts,
        "metrics": events.features,
        "breached": events.labels,
    }
    exec(compile(readme_snippet("load-with-slaops"), "README", "exec"), with_slaops)  # noqa: S102
    np.testing.assert_allclose(with_slaops["proba"], expected, rtol=1e-6, atol=1e-7)
    assert with_slaops["model"].revision == event.revision
    assert (with_slaops["breach_expected"] == warning).all()  # the consumer's warning

    # A forged announcement of another (old, or unknown) revision with a huge version
    # changes nothing: the snippet asks the store, whose newest is still `event`.
    forged = event.model_copy(update={"revision": "0" * 40, "model_version": 2**62})
    again: dict[str, Any] = {**with_slaops, "message_value": forged.model_dump_json().encode()}
    exec(compile(readme_snippet("load-with-slaops"), "README", "exec"), again)  # noqa: S102
    assert again["model"].revision == event.revision
    np.testing.assert_allclose(again["proba"], expected, rtol=1e-6, atol=1e-7)

    head = store.latest(tenant_hash("acme", KEY))
    assert head is not None and head.revision == event.revision
    plain: dict[str, Any] = {
        "card_bytes": store.read(head.paths["card"], revision=head.revision),
        "weights_bytes": store.read(head.paths["safetensors"], revision=head.revision),
        "rows": rows,
    }
    exec(compile(readme_snippet("load-without-slaops"), "README", "exec"), plain)  # noqa: S102
    np.testing.assert_allclose(plain["proba"], expected, rtol=0, atol=1e-6)
    assert (plain["breach_expected"] == with_slaops["breach_expected"]).all()
