"""One retrain, without Kafka or a store: rows in, a decided and serialised model out.

Dataset → search → the current champion scored on the same holdout → decision →
artifacts. The service feeds it replayed rows and the champion it loaded, and takes
care of publishing and announcing. `train_and_decide` is the one-call form, for
offline use (benchmarks, evaluations); the service calls `train` and `judge` apart.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from dataclasses import dataclass
from typing import Any

from kernel.artifacts import ModelArtifacts, ModelCard, predict_proba, serialize_model
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP
from retrainer.baselines import BaselineForecasts, as_card, losing_baseline, score_baselines, skill
from retrainer.cancel import CancelToken
from retrainer.curves import pr_curve
from retrainer.dataset import DEFAULT_MIN_ROWS, SupervisedSet, build_pairs
from retrainer.metrics import evaluate, reliability_table
from retrainer.replay import TenantRows
from retrainer.search import SearchConfig, SearchResult, run_search
from schemas import ChampionDecision, RetrainRequested

CHAMPION_RULE = "holdout_log_loss"
_VERSIONED = ("slaops", "torch", "scikit-learn", "skorch", "numpy")


@dataclass(frozen=True)
class TrainingConfig:
    search: SearchConfig
    horizon: int = 1
    features: FeatureSpec = FeatureSpec()
    min_rows: int = DEFAULT_MIN_ROWS
    champion_margin: float = 0.0


@dataclass(frozen=True, eq=False)
class Champion:
    """The tenant's current published model, loaded through the safe loader."""

    module: SlaMLP
    card: ModelCard
    revision: str


@dataclass(frozen=True, eq=False)
class TrainingOutcome:
    data: SupervisedSet
    result: SearchResult
    decision: ChampionDecision
    champion_metrics: dict[str, float] | None
    baselines: BaselineForecasts
    skill: dict[str, float]
    artifacts: ModelArtifacts | None  # only when the challenger is to be published

    @property
    def metrics(self) -> dict[str, float]:
        return finite(self.result.holdout_metrics)


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics as strict JSON can carry them (ROC-AUC is NaN on a one-class holdout)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _jsonable_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return [clean(row) for row in rows]


def score_champion(
    champion: Champion | None, data: SupervisedSet, result: SearchResult
) -> dict[str, float] | None:
    """The champion's holdout metrics on the challenger's holdout, if it is comparable.

    A champion trained with other features or horizon answers another question, so
    it is not compared (and the challenger wins unless a baseline beats it).
    """
    if champion is None:
        return None
    card = champion.card
    if (card.features, card.horizon, tuple(card.feature_order)) != (
        data.spec,
        data.horizon,
        data.feature_names,
    ):
        return None
    holdout = result.holdout_idx
    return evaluate(champion.module, data.X[holdout], data.y[holdout], card.threshold)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    margin: float,
    skills: dict[str, float],
) -> ChampionDecision:
    """Publish only a challenger with skill over the gated baselines that beats the champion."""
    score = float(challenger["log_loss"])
    best = None if champion is None else float(champion["log_loss"])
    rule = CHAMPION_RULE if margin == 0 else f"{CHAMPION_RULE} margin={margin:g}"
    lost = losing_baseline(skills)
    if lost is not None:
        baseline, why = lost
        return ChampionDecision(
            published=False,
            rule=f"{rule}; skill over prior and persistence",
            challenger_score=score,
            champion_score=best,
            verdict="baseline_better",
            baseline=baseline,  # type: ignore[arg-type]
            detail=why,
        )
    if best is None:
        return ChampionDecision(published=True, rule=rule, challenger_score=score)
    won = score < best * (1.0 - margin)
    return ChampionDecision(
        published=won,
        rule=rule,
        challenger_score=score,
        champion_score=best,
        verdict="published" if won else "champion_better",
        detail="" if won else f"champion log_loss {best:.4f} <= challenger {score:.4f}",
    )


@dataclass(frozen=True, eq=False)
class Trained:
    """A finished search: the challenger and what it is judged by, before any champion."""

    data: SupervisedSet
    result: SearchResult
    baselines: BaselineForecasts
    skill: dict[str, float]


def train(
    rows: TenantRows, config: TrainingConfig, *, cancel: CancelToken | None = None
) -> Trained:
    """Dataset, search and baselines: the costly part, run once per request.

    Raises `DatasetError` when the rows cannot make a usable training set, and
    `Cancelled` once `cancel` is (every fit checks it after each epoch).
    """
    data = build_pairs(
        rows.ts,
        rows.features,
        rows.labels,
        horizon=config.horizon,
        spec=config.features,
        min_rows=config.min_rows,
    )
    search = config.search if cancel is None else dataclasses.replace(config.search, cancel=cancel)
    result = run_search(data, search)
    baselines = score_baselines(data, result.train_idx, result.holdout_idx, seed=config.search.seed)
    return Trained(data, result, baselines, skill(result.holdout_metrics, baselines.metrics))


def train_and_decide(
    rows: TenantRows,
    request: RetrainRequested,
    config: TrainingConfig,
    champion: Champion | None,
    *,
    request_ref: str | None = None,
    cancel: CancelToken | None = None,
) -> TrainingOutcome:
    """One retrain in one call: `train`, then `judge` against `champion`.

    The public entry point for running the retrainer's own decision offline, without
    Kafka or a store: rows and the request in, the decided (and, if published,
    serialised) challenger out. The quality benchmark (`bench/bench_quality.py`) and
    the performance monitor's seeded runs use it, so what they measure is exactly what
    the service decides. The service itself calls `train` and `judge` apart: after a
    store race it judges the same trained challenger again without a second search.
    Raises `DatasetError` and `Cancelled` (see `train`).
    """
    trained = train(rows, config, cancel=cancel)
    return judge(trained, request, config, champion, request_ref=request_ref)


def judge(
    trained: Trained,
    request: RetrainRequested,
    config: TrainingConfig,
    champion: Champion | None,
    *,
    request_ref: str | None = None,
) -> TrainingOutcome:
    """Decide a trained challenger against `champion`; serialise it if it is published.

    Cheap: no search. Called again, with the same `trained`, when another writer
    published a new champion meanwhile.

    The card's lineage names the request by `request_ref` (the keyed form the store
    may hold, `kernel.tenant_hash.request_ref`), never by its `event_id`, which is an
    unkeyed hash of the slug; without `request_ref` it names no request at all.
    """
    data, result, baselines, skills = (
        trained.data,
        trained.result,
        trained.baselines,
        trained.skill,
    )
    champion_metrics = score_champion(champion, data, result)
    decision = decide(result.holdout_metrics, champion_metrics, config.champion_margin, skills)
    artifacts = None
    if decision.published:
        lineage = {
            "request_ref": request_ref,
            "reason": request.reason,
            "detector": request.detector,
            "source": [r.model_dump() for r in request.source],
            "data_sha256": data.sha256,
            "n_rows": len(data),
            "n_train": int(len(result.train_idx)),
            "n_holdout": int(len(result.holdout_idx)),
            "seed": config.search.seed,
            "strategy": result.strategy,
            "best_params": result.best_params,
            "calibration": {
                "method": "platt" if not result.calibration.identity else "none",
                "slope": result.calibration.slope,
                "intercept": result.calibration.intercept,
            },
            "decision": decision.model_dump(),
            "champion": None
            if champion is None
            else {
                "revision": champion.revision,
                "holdout_metrics": None if champion_metrics is None else finite(champion_metrics),
            },
            "libraries": library_versions(),
        }
        holdout = result.holdout_idx
        proba = predict_proba(result.module, data.X[holdout])
        artifacts = serialize_model(
            result.module,
            {
                "features": data.spec,
                "feature_order": list(data.feature_names),
                "horizon": data.horizon,
                "threshold": float(result.threshold),
                "metrics": finite(result.holdout_metrics),
                "baselines": as_card(baselines),
                "skill": finite(skills),
                "calibration": reliability_table(data.y[holdout], proba),
                "cv_table": _jsonable_rows(result.cv_table),
                "learning_curve": result.learning_curve,
                "pr_curve": pr_curve(data.y[holdout], proba),
                "lineage": lineage,
            },
        )
    return TrainingOutcome(
        data=data,
        result=result,
        decision=decision,
        champion_metrics=champion_metrics,
        baselines=baselines,
        skill=skills,
        artifacts=artifacts,
    )
