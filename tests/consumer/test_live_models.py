"""Live models in the consumer: safe loading of announcements, forecasts, performance drift."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Message

from consumer.live_model import LiveModel
from consumer.performance import PerformanceConfig
from kernel.errors import ModelRefused
from kernel.tenant_hash import tenant_hash
from testkit.live_models import KEY, Published, core_with, load, messages
from testkit.paths import ROOT
from testkit.retrain_data import tenant_rows

NO_EVENTS = (np.empty(0), np.empty((0, 6), np.float32), np.empty(0, bool))


def test_an_announced_model_loads_and_forecasts_like_its_card_says(published: Published) -> None:
    model = load(published)
    assert (model.tenant, model.version, model.horizon) == ("acme", 1, 1)
    rows = tenant_rows(50)
    proba = model.forecast(NO_EVENTS, (rows.ts, rows.features, rows.labels))
    assert proba.shape == (50,) and ((proba >= 0) & (proba <= 1)).all()


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
    before = messages(4, 150.0, 1_500)  # the rule the model learnt
    after = messages(5, 90.0, 1_500, start=1_500)  # the same metrics now breach more often
    requests = []
    for batch in (before[:700], before[700:], after[:700], after[700:]):
        requests += core.process(batch).requests
    assert [r.reason for r in requests] == ["performance_drift"]
    request = requests[0]
    assert 1_500 <= request.source[0].end_offset - 1 < 2_400
    assert request.detector == "cusum" and request.details.features == ["log_loss"]
    stats = request.details.statistic
    # Recently worse than persistence (the excess is the model's loss minus persistence's),
    # where it used to beat it, and worse than its card's holdout.
    assert stats["log_loss_excess_recent"] > max(0.0, stats["log_loss_excess"])
    assert stats["log_loss_recent"] > stats["card_log_loss"]


def test_a_tenant_with_a_model_gets_no_cold_start_and_stable_data_no_request(
    published: Published,
) -> None:
    core = core_with(load(published), cold_start=True, cold_start_min_events=100)
    stream = messages(6, 150.0, 2_000)
    requests = [r for i in range(0, 2_000, 500) for r in core.process(stream[i : i + 500]).requests]
    assert requests == []
    cold = core_with(None, cold_start=True, cold_start_min_events=100)
    assert [r.reason for r in cold.process(stream).requests] == ["cold_start"]


def test_hot_swap_switches_forecasts_between_batches(published: Published) -> None:
    model = load(published)
    core = core_with(model, publish_forecasts=True)
    stream = messages(7, 150.0, 400)
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
    revisions = [json.loads(v)["model_revision"] for _k, v in first.forecasts + second.forecasts]
    forecast = json.loads(first.forecasts[0][1])
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
    assert forecast["breach_expected"] == (forecast["probability"] >= model.threshold)
    assert (forecast["tenant"], forecast["horizon"], forecast["model_version"]) == ("acme", 1, 1)
    assert len(revisions) == 400  # every event forecast: no gap across the swap
    assert set(revisions[:200]) == {model.revision} and set(revisions[200:]) == {"f" * 40}
    core.apply_model(model)  # an older version never replaces a newer one
    assert core.model("acme") is newer


@pytest.mark.parametrize("settle", [0, 240])
def test_performance_request_waits_settle_events_after_the_alarm_whatever_the_batching(
    published: Published,
    settle: int,
) -> None:
    stream = messages(4, 150.0, 1_500) + messages(5, 90.0, 1_500, start=1_500)
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
    events = tenant_rows(40, seed=9)
    model = load(published)
    expected = model.forecast(NO_EVENTS, (events.ts, events.features, events.labels))
    rows = model.features.transform(events.ts, events.features, events.labels)

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
    np.testing.assert_allclose(plain["proba"], expected, rtol=1e-5, atol=1e-6)
    assert (plain["breach_expected"] == with_slaops["breach_expected"]).all()
