"""The metric families the two services export, read from their real registries.

Built the way the services build them (the consumer's with its model follower, whose
families are collected at scrape time), never started: no broker, no store is reached.
The dashboard's and the README's tests check their lists against this one.
"""

from __future__ import annotations

from pydantic import SecretStr

#: A family's series names, by its type (`prometheus_client` names a counter's family
#: without `_total`; `_created` series are turned off, see `kernel.observability`).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exported_families() -> dict[str, str]:
    """Family name -> type, for every family the consumer and the retrainer export."""
    from consumer.core import CoreConfig, IngestCore
    from consumer.follower import AnswerFollower, AnswerTopics
    from consumer.observability import ConsumerMetrics
    from kernel.model_follower import ModelAuthority
    from kernel.store import open_store
    from retrainer.observability import RetrainerMetrics
    from schemas import topics

    store = "file:///nonexistent"
    follower = AnswerFollower(  # built, never started: no connection
        client_config={"bootstrap.servers": "127.0.0.1:9"},
        topics=AnswerTopics(
            models_topic=topics.MODELS,
            failures_topic=topics.RETRAIN_FAILURES,
            decisions_topic=topics.RETRAIN_DECISIONS,
        ),
        authority=ModelAuthority(open_store(store), store, SecretStr("k7Q2x9Lm" * 8)),
    )
    consumer = ConsumerMetrics(core=IngestCore(CoreConfig(telemetry_topic="t")), follower=follower)
    families: dict[str, str] = {}
    for registry in (consumer.registry, RetrainerMetrics().registry):
        for family in registry.collect():
            families[family.name] = family.type
    return families


def series_of(name: str, kind: str) -> tuple[str, ...]:
    """The series names family `name` of type `kind` is queried by."""
    return tuple(name + suffix for suffix in SUFFIXES[kind])
