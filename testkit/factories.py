"""Settings for one test or benchmark run, every topic and consumer group named uniquely.

Plain functions, so `bench/` imports them as the tests do; `tests/conftest.py` binds
them to the session's broker as fixtures. A run that names its topics here shares no
state with any other run on the same broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from consumer.settings import ConsumerSettings
from retrainer.settings import RetrainerSettings

Namer = Callable[[str], str]
#: Topic and group names, as keyword arguments of a settings class (values are str).
Names = dict[str, Any]


def unique_name(prefix: str) -> str:
    """`prefix` plus a random suffix: a topic or group name no other run shares."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def consumer_names(
    make: Namer = unique_name, *, models: bool = False, group: str = "group"
) -> Names:
    """The consumer's topics and group; with `models`, the topics it follows and feeds too."""
    names = {
        "telemetry_topic": make("telemetry"),
        "dlq_topic": make("dlq"),
        "retrain_topic": make("retrain"),
        "checkpoint_topic": make("checkpoints"),
    }
    if models:
        names |= {
            "models_topic": make("models"),
            "forecasts_topic": make("forecasts"),
            "warnings_topic": make("warnings"),
            "failures_topic": make("failures"),
            "decisions_topic": make("decisions"),
        }
    names["group_id"] = make(group)
    return names


def answer_names(make: Namer = unique_name) -> Names:
    """The topics a request and its answers travel on (what `slaops watch` reads)."""
    return {
        "models_topic": make("models"),
        "retrain_topic": make("retrain"),
        "failures_topic": make("failures"),
        "decisions_topic": make("decisions"),
    }


def retrainer_names(make: Namer = unique_name, *, group: str = "retrainer") -> Names:
    """The retrainer's topics (telemetry it replays included) and group."""
    return {**answer_names(make), "telemetry_topic": make("telemetry"), "group_id": make(group)}


def consumer_settings(
    bootstrap: str, names: Names | None = None, **tuning: Any
) -> ConsumerSettings:
    """Consumer settings on `bootstrap`, named by `names` (unique ones by default).

    The tests' streams are recorded telemetry sent at speed, shorter than a day and with
    no daily cycle: unless a test says otherwise, cooldowns run on event time alone
    (`wall_cooldown`) and the data monitor keeps one reference (`drift_seasonal`).
    """
    tuning.setdefault("wall_cooldown", False)
    tuning.setdefault("drift_seasonal", False)
    return ConsumerSettings(bootstrap_servers=bootstrap, **(names or consumer_names()), **tuning)


def retrainer_settings(
    bootstrap: str, names: Names | None = None, **tuning: Any
) -> RetrainerSettings:
    """Retrainer settings on `bootstrap`, named by `names` (unique ones by default)."""
    return RetrainerSettings(bootstrap_servers=bootstrap, **(names or retrainer_names()), **tuning)
