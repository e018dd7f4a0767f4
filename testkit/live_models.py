"""One tenant's trained model, published to a file store, and a consumer core that serves it.

`published_model` trains and publishes `acme`'s model once (the root `conftest.py` binds
it as the module-scoped `published` fixture); `load` reads it back as the consumer does,
`core_with` is the consumer's pure core holding it, and `messages` the telemetry that
feeds it, its breaches decided by `threshold_ms` (`LEARNT_MS` is the rule the model
was trained on: a stream at another threshold is a changed concept).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from confluent_kafka import Message
from pydantic import SecretStr

from consumer.core import CoreConfig, IngestCore
from consumer.live_model import LiveModel
from consumer.performance import PerformanceConfig
from kernel.store import ModelStore, open_store
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.search import SearchConfig
from schemas import ModelPublished
from testkit.retrain_data import request_for, telemetry_messages, tenant_rows
from testkit.tiny_models import load_live_model

#: `(store uri, store, the ModelPublished announcing acme's model)`.
Published = tuple[str, ModelStore, ModelPublished]

KEY = SecretStr("live-model-tenant-key-0123456789")
#: The p99 latency above which acme's training rows breach (`tenant_rows`' default).
LEARNT_MS = 200.0
SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [16]},
    n_jobs=1,
    max_epochs=15,
    n_splits=3,
)


def published_model(directory: Path) -> Published:
    """Train and publish acme's model into a file store under `directory`."""
    uri = f"file://{directory / 'models'}"
    store = open_store(uri)
    handler = RequestHandler(
        store=store,
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SEARCH, min_rows=100),
        replay=lambda request: tenant_rows(1_500, seed=3, threshold_ms=LEARNT_MS),
        topics=OutcomeTopics(models="m", failures="f", decisions="d"),
    )
    event = handler.handle(request_for("acme")).events[0][2]
    assert isinstance(event, ModelPublished)
    return uri, store, event


def load(published: Published, **changes: object) -> LiveModel:
    uri, store, event = published
    return load_live_model(
        event.model_copy(update=changes), store=store, store_uri=uri, tenant_key=KEY
    )


def messages(rows_seed: int, threshold_ms: float, n: int, start: int = 0) -> list[Message]:
    rows = tenant_rows(n, seed=rows_seed, threshold_ms=threshold_ms)
    rows = replace(rows, ts=rows.ts + 60.0 * start)  # event time goes on across calls
    return [
        Message(topic="sla.telemetry", partition=0, offset=start + i, key=k, value=v)
        for i, (k, v) in enumerate(telemetry_messages("acme", rows))
    ]


def core_with(model: LiveModel | None, **changes: object) -> IngestCore:
    # No retrainer answers here: a request stays in flight for the whole test.
    changes.setdefault("performance", PerformanceConfig(performance_warmup=100))
    config = CoreConfig(telemetry_topic="sla.telemetry", request_timeout_s=1e9, **changes)  # type: ignore[arg-type]
    core = IngestCore(config)
    if model is not None:
        core.apply_model(model)
    return core
