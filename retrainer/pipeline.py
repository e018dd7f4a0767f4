"""One retrain, without Kafka or a store: rows in, a decided and serialised forecaster out.

Dataset (a breach within the horizon) → blocked time folds → the candidates (the
searched network and the learned rules, `retrainer.forecasters`) out of fold → each
one's warning policy → the gate (`retrainer.selection`) → the champion judged on the
same folds → decision → artifacts. The service feeds it replayed rows and the champion
it loaded, and takes care of publishing and announcing. `train_and_decide` is the
one-call form, for offline use (benchmarks, evaluations, backtests); the service calls
`train` and `judge` apart.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernel.artifacts import ModelArtifacts, ModelCard, predict_proba, serialize_model
from kernel.early_warning import score_segments
from kernel.features import FeatureSpec
from kernel.mlp import SlaMLP
from kernel.model_report.summary import best_rule
from retrainer.baselines import BaselineForecasts, as_card, oof_baselines, skill
from retrainer.cancel import CancelToken
from retrainer.curves import pr_curve
from retrainer.dataset import DEFAULT_MIN_ROWS, SupervisedSet, build_pairs, pairs_for_model
from retrainer.errors import DatasetError
from retrainer.estimator import torch_threads
from retrainer.forecasters import (
    Candidate,
    CandidateRows,
    Folds,
    blocked_folds,
    calibrate,
    network_candidate,
    rule_candidates,
)
from retrainer.metrics import evaluate_proba, reliability_table
from retrainer.replay import TenantRows as ReplayedRows
from retrainer.search import SearchConfig, SearchResult, run_search
from retrainer.selection import (
    Choice,
    EvidenceRule,
    choose,
    log_loss,
    paired_confidence,
    worse_than_base_confidence,
)
from retrainer.slices import (
    Alerting,
    JudgedRows,
    change_time,
    evaluate_slices,
    load_edges,
    standard_slices,
)
from retrainer.warning_policy import warnings_of
from schemas import ChampionDecision, RetrainRequested

CHAMPION_RULE = "fresh onsets warned at lead >= 1 within budget, out of fold"
_VERSIONED = ("slaops", "torch", "scikit-learn", "skorch", "numpy")


@dataclass(frozen=True)
class TrainingConfig:
    search: SearchConfig
    #: A breach within the next `horizon` intervals is what is forecast.
    horizon: int = 6
    features: FeatureSpec = FeatureSpec()
    min_rows: int = DEFAULT_MIN_ROWS
    evidence: EvidenceRule = EvidenceRule()


@dataclass(frozen=True, eq=False)
class Champion:
    """The tenant's current published model, loaded through the safe loader."""

    module: SlaMLP
    card: ModelCard
    revision: str


@dataclass(frozen=True, eq=False)
class Trained:
    """A finished training: every candidate judged out of fold, before any champion."""

    data: SupervisedSet
    #: The replayed events the pairs were built from (the champion is scored on them).
    replayed: ReplayedRows
    rows: CandidateRows
    folds: Folds
    choice: Choice
    #: The network search (None when the evidence did not justify one).
    result: SearchResult | None
    baselines: BaselineForecasts
    skill: dict[str, float]
    #: The evidence was sufficient, so a network was searched and may be published.
    sufficient: bool


@dataclass(frozen=True, eq=False)
class TrainingOutcome:
    trained: Trained
    decision: ChampionDecision
    champion_metrics: dict[str, float] | None
    artifacts: ModelArtifacts | None  # only when the challenger is to be published

    @property
    def data(self) -> SupervisedSet:
        return self.trained.data

    @property
    def result(self) -> SearchResult | None:
        return self.trained.result

    @property
    def metrics(self) -> dict[str, float]:
        return finite(self.trained.choice.best.metrics)


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics as strict JSON can carry them (ROC-AUC is NaN on one class)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _network(
    data: SupervisedSet, rows: CandidateRows, folds: Folds, config: TrainingConfig
) -> tuple[SearchResult | None, Candidate | None]:
    """The search on the quiet rows, on the same folds, and its out-of-fold candidate."""
    quiet = np.flatnonzero(rows.quiet)
    position = np.full(len(rows), -1, np.int64)
    position[quiet] = np.arange(len(quiet))
    splits = []
    for train, valid in folds.splits:
        t, v = position[train[rows.quiet[train]]], position[valid[rows.quiet[valid]]]
        if len(t) and len(v):
            splits.append((t, v))
    if len(splits) < 2:
        return None, None
    try:
        result = run_search(data, config.search, rows=quiet, splits=splits)
    except DatasetError:
        return None, None
    return result, network_candidate(rows, folds, result.best, result.module)


def train(
    replayed: ReplayedRows, config: TrainingConfig, *, cancel: CancelToken | None = None
) -> Trained:
    """Dataset, candidates and their out-of-fold judgement: the costly part, run once.

    The network is searched only when the rules' evidence is sufficient (below it, no
    network may be published anyway). Raises `DatasetError` when the rows cannot make a
    usable training set, and `Cancelled` once `cancel` is (every fit checks it).
    """
    # Hundreds of small forwards: one intra-op thread each (more only contend, tenfold
    # slower on a busy machine); the fits run in their own worker processes.
    with torch_threads(1):
        return _train(replayed, config, cancel)


def _train(replayed: ReplayedRows, config: TrainingConfig, cancel: CancelToken | None) -> Trained:
    data = build_pairs(
        replayed.ts,
        replayed.features,
        replayed.labels,
        horizon=config.horizon,
        spec=config.features,
        min_rows=config.min_rows,
    )
    rows = CandidateRows.of(data)
    folds = blocked_folds(rows, config.search.n_splits, data.spec.history + config.horizon)
    out_of_fold = bool(folds.splits)
    if not out_of_fold:
        # Too few quiet rows to hold any back (a tenant that is nearly always breaching):
        # the rules are fitted and judged on every row, which is no evidence, so only
        # a rule can go live, and the tenant still gets a forecaster.
        everything = np.arange(len(rows), dtype=np.int64)
        folds = Folds(((everything, everything),))
    candidates = [calibrate(c, rows, folds) for c in rule_candidates(rows, folds)]
    choice = choose(candidates, rows, folds, config.evidence)
    sufficient = out_of_fold and choice.evidence.sufficient(config.evidence)
    result = None
    if sufficient:
        search = (
            config.search if cancel is None else dataclasses.replace(config.search, cancel=cancel)
        )
        result, network = _network(data, rows, folds, dataclasses.replace(config, search=search))
        if network is not None:
            candidates.append(calibrate(network, rows, folds))
            choice = choose(candidates, rows, folds, config.evidence)
    baselines = oof_baselines(rows, folds, seed=config.search.seed)
    return Trained(
        data=data,
        replayed=replayed,
        rows=rows,
        folds=folds,
        choice=choice,
        result=result,
        baselines=baselines,
        skill=skill(choice.best.metrics, baselines.metrics),
        sufficient=sufficient,
    )


def train_and_decide(
    rows: ReplayedRows,
    request: RetrainRequested,
    config: TrainingConfig,
    champion: Champion | None,
    *,
    request_ref: str | None = None,
    cancel: CancelToken | None = None,
) -> TrainingOutcome:
    """`train`, then `judge` against `champion`. Raises `DatasetError` (see `train`).

    The documented one-call form for offline use; the service calls the two apart, so
    that a champion published meanwhile is judged without a second search.
    """
    trained = train(rows, config, cancel=cancel)
    return judge(trained, request, config, champion, request_ref=request_ref)


def champion_view(champion: Champion, trained: Trained) -> tuple[np.ndarray, np.ndarray] | None:
    """The champion's probabilities and warnings on the folds' rows, or None if it has none.

    It is scored with its own features (an older spec too) on the same events; rows it
    cannot forecast (a longer history than the challenger's) get the base rate and no
    warning.
    """
    card = champion.card
    valid = trained.folds.valid
    events = trained.replayed
    try:
        own = pairs_for_model(
            events.ts, events.features, events.labels, spec=card.features, horizon=card.horizon
        )
    except (DatasetError, ValueError):
        return None
    at = {float(t): i for i, t in enumerate(own.ts.tolist())}
    index = np.array([at.get(float(t), -1) for t in trained.rows.ts[valid].tolist()])
    p = np.full(len(valid), float(trained.rows.y[valid].mean()))
    known = index >= 0
    if known.any():
        p[known] = predict_proba(champion.module, own.X[index[known]]).astype(np.float64)
    on = warnings_of(p, trained.rows, valid, card.threshold if card.threshold < 1.0 else math.inf)
    on &= known
    return p, on


def _decision(
    trained: Trained, champion: Champion | None, config: TrainingConfig
) -> tuple[ChampionDecision, dict[str, float] | None]:
    choice = trained.choice
    best = choice.best
    proof = choice.evidence
    facts = finite({k: float(v) for k, v in proof.as_card().items()})
    score = best.log_loss
    view = None if champion is None else champion_view(champion, trained)
    valid = trained.folds.valid
    champion_metrics = None if view is None else evaluate_proba(trained.rows.y[valid], view[0], 0.5)
    champion_score = None if champion_metrics is None else champion_metrics["log_loss"]
    if not trained.sufficient:
        detail = (
            f"{proof.positives} positives and {proof.fresh_onsets} fresh onsets out of fold; "
            f"{config.evidence.min_positives} and {config.evidence.min_fresh_onsets} needed"
        )
        # Too little evidence to judge a challenger's edge is still enough to see that
        # a champion forecasting a different tenant than this one has none: then the
        # best rule goes live, as at a cold start (never a network: none was searched).
        # (The budget is not judged here: on so few onsets, the live budget is the check.)
        unfit = (
            None if view is None else champion_unfit(view, trained, config.evidence, budget=False)
        )
        if unfit is not None:
            detail += f"; {unfit}"
        retire = champion is None or unfit is not None
        return (
            _decision_of(
                published=retire,
                rule=CHAMPION_RULE,
                challenger_score=score,
                champion_score=champion_score,
                verdict="insufficient_evidence",
                forecaster=best.kind,
                evidence=facts,
                detail=detail + ("; the best rule goes live" if retire else ""),
            ),
            champion_metrics,
        )
    if champion is None:
        return (
            _decision_of(
                published=True,
                rule=CHAMPION_RULE,
                challenger_score=score,
                forecaster=best.kind,
                evidence=facts,
            ),
            None,
        )
    unfit = None if view is None else champion_unfit(view, trained, config.evidence)
    if view is None:
        gain, confidence = math.inf, 1.0  # a champion that cannot forecast these rows
    elif unfit is not None:
        gain, confidence = math.inf, 1.0  # held to the candidates' standard, it fails it
    else:
        p, on = view
        gain, confidence = paired_confidence(
            best, on, p, trained.rows, trained.folds, config.evidence
        )
    won = config.evidence.confidence == 0 or (confidence >= config.evidence.confidence and gain > 0)
    facts.update({"gain": gain if math.isfinite(gain) else 1e9, "confidence": confidence})
    detail = "" if won else f"gain {gain:+.3g} at confidence {confidence:.2f}"
    return (
        _decision_of(
            published=won,
            rule=f"{CHAMPION_RULE}; paired block bootstrap >= {config.evidence.confidence:g}",
            challenger_score=score,
            champion_score=champion_score,
            verdict="published" if won else "champion_better",
            forecaster=best.kind,
            evidence=facts,
            detail=unfit or detail,
        ),
        champion_metrics,
    )


def champion_unfit(
    view: tuple[np.ndarray, np.ndarray],
    trained: Trained,
    rule: EvidenceRule,
    *,
    budget: bool = True,
) -> str | None:
    """Why the champion, on the new folds, fails what every candidate must meet, or None.

    A candidate must beat the base rate on log loss and warn within the budget; a
    champion that no longer does (its tenant changed under it) has no edge to defend,
    so the best eligible challenger replaces it without a paired bootstrap (its lack of
    skill is itself bootstrapped, at the gate's confidence). Without this, a
    champion warning on every row "warned" of more onsets than any in-budget challenger
    and stayed live with a log loss twice the base rate's (NAB's network-in streams).
    """
    p, on = view
    valid, folds = trained.folds.valid, trained.folds
    proof = trained.choice.evidence
    loss = log_loss(trained.rows.y[valid], p)
    sure = worse_than_base_confidence(p, trained.rows, folds, rule)
    if (
        math.isfinite(proof.base_log_loss)
        and loss >= proof.base_log_loss
        and sure >= rule.confidence
    ):
        return (
            f"champion has no skill on these folds: log loss {loss:.3g} against the base "
            f"rate's {proof.base_log_loss:.3g} (worse at confidence {sure:.2f})"
        )
    if not budget:
        return None
    record = score_segments(on, trained.rows.breach[valid], trained.rows.ts[valid], folds.segments)
    if record.false_per_day > rule.budget_per_day:
        return (
            f"champion is over budget on these folds: {record.false_per_day:.3g} false "
            f"warnings a day against {rule.budget_per_day:g}"
        )
    return None


def _decision_of(**fields: Any) -> ChampionDecision:
    """A decision from plain values (the kind and evidence keys are checked here)."""
    return ChampionDecision.model_validate(fields)


def judge(
    trained: Trained,
    request: RetrainRequested,
    config: TrainingConfig,
    champion: Champion | None,
    *,
    request_ref: str | None = None,
) -> TrainingOutcome:
    """Decide the tenant's best forecaster against `champion`; serialise it if published.

    Cheap: no search. Called again, with the same `trained`, when another writer
    published a new champion meanwhile.

    The card's lineage names the request by `request_ref` (the keyed form the store
    may hold, `kernel.tenant_hash.request_ref`), never by its `event_id`, which is an
    unkeyed hash of the slug; without `request_ref` it names no request at all.
    """
    decision, champion_metrics = _decision(trained, champion, config)
    artifacts = None
    if decision.published:
        lineage = {
            "request_ref": request_ref,
            "reason": request.reason,
            "detector": request.detector,
            # The ranges (a request's own offsets in them are many: the replay's business).
            "source": [r.model_dump(exclude={"own_gaps"}) for r in request.source],
            "data_sha256": trained.data.sha256,
            "n_rows": len(trained.data),
            "seed": config.search.seed,
            "decision": decision.model_dump(),
            "champion": None
            if champion is None
            else {
                "revision": champion.revision,
                "metrics": None if champion_metrics is None else finite(champion_metrics),
            },
            "libraries": library_versions(),
            # When the newest detected change began (a drift request's; None otherwise):
            # the card's slices split its evaluation there.
            "change_ts": change_time(
                request.reason,
                request.detected_at.timestamp(),
                request.details.statistic,
                _step_s(trained.data.ts),
            ),
        }
        if trained.result is not None:
            lineage.update(strategy=trained.result.strategy, best_params=trained.result.best_params)
        artifacts = serialize_model(
            trained.choice.best.candidate.module, card_fields(trained, lineage)
        )
    return TrainingOutcome(
        trained=trained,
        decision=decision,
        champion_metrics=champion_metrics,
        artifacts=artifacts,
    )


def card_fields(trained: Trained, lineage: dict[str, Any]) -> dict[str, Any]:
    """Every card field of the chosen forecaster but those the serialiser derives."""
    data, choice = trained.data, trained.choice
    best = choice.best
    valid = trained.folds.valid
    y, oof = trained.rows.y[valid], best.candidate.oof
    step = _step_s(data.ts)
    threshold = best.policy.threshold
    rules = {
        kind: _jsonable(
            {
                "input": j.candidate.column,
                "log_loss": j.log_loss,
                "out_of_fold": j.policy.record.as_dict(),
            }
        )
        for kind, j in choice.by_kind.items()
    }
    change = lineage.get("change_ts")
    return {
        "features": data.spec,
        "feature_order": list(data.feature_names),
        "horizon": data.horizon,
        "horizon_s": data.horizon * step if step > 0 else None,
        "target": "within",
        "threshold": min(threshold, 1.0) if math.isfinite(threshold) else 1.0,
        "forecaster": best.kind,
        "forecaster_input": best.candidate.column,
        "metrics": finite(best.metrics),
        "baselines": as_card(trained.baselines),
        "skill": finite(trained.skill),
        "warning": _jsonable(best.policy.as_card()),
        "rules": rules,
        "evidence": _jsonable({**choice.evidence.as_card(), "sufficient": trained.sufficient}),
        "calibration": reliability_table(y, oof),
        "cv_table": _jsonable([] if trained.result is None else trained.result.cv_table),
        "learning_curve": [] if trained.result is None else trained.result.learning_curve,
        "trials": [] if trained.result is None else trained.result.trials,
        "pr_curve": pr_curve(y, oof),
        "slices": card_slices(
            trained,
            best_rule(rules, best.kind),
            float(change) if isinstance(change, int | float) else None,
        ),
        "lineage": lineage,
    }


def _step_s(ts: np.ndarray) -> float:
    return float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0


def card_slices(
    trained: Trained, rule: str | None, change_ts: float | None
) -> list[dict[str, Any]]:
    """The chosen forecaster by slice (`retrainer.slices`), beside the prior and `rule`.

    On the out-of-fold rows and predictions the card's headline figures come from: each
    one's warning as its policy gives it there (at the out-of-fold threshold), the prior
    as the baselines fitted it on each fold's training rows. Load terciles are of
    `log1p_rps` over the training window's rows.
    """
    rows, folds, choice = trained.rows, trained.folds, trained.choice
    valid = folds.valid
    if not len(valid):
        return []
    judged = JudgedRows.of(rows.ts[valid], rows.breach[valid], rows.y[valid], folds.segments)

    def alerting(kind: str) -> Alerting:
        j = choice.best if kind == "model" else choice.by_kind[kind]
        p = j.candidate.oof
        return Alerting(warnings_of(p, rows, valid, j.policy.oof_threshold), p)

    baselines = {"prior": Alerting(np.zeros(len(valid), bool), trained.baselines.proba["prior"])}
    if rule is not None and rule in choice.by_kind:
        baselines[rule] = alerting(rule)
    load = rows.X[:, rows.column("log1p_rps")] if "log1p_rps" in rows.names else None
    edges = None if load is None else load_edges(load)
    slices = standard_slices(judged.ts, None if load is None else load[valid], edges, change_ts)
    return _jsonable(evaluate_slices(judged, alerting("model"), baselines, slices))
