"""Which forecaster a tenant gets, and on how much evidence: the gate.

Every candidate must beat the base rate on log loss of "a breach within the horizon"
out of fold (and a rule or network must beat the quiet prior on the quiet rows, or it
is noise). Among those, the tenant gets the one that warns of the most fresh onsets at
lead >= 1 within the false-warning budget out of fold; ties go to the lower log loss.
Below a minimum of positives and of fresh onsets the evidence is insufficient: no
network is published, no champion replaced, and at a cold start the best rule goes
live, saying so. A challenger replaces a champion only when a blocked bootstrap of the
paired difference on those folds shows the gain at the set confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from kernel.early_warning import fresh_onsets, leads, score_segments, warning_on
from retrainer.forecasters import Candidate, CandidateRows, Folds
from retrainer.metrics import evaluate_proba
from retrainer.warning_policy import TunedPolicy, tune_policy

#: Contiguous blocks the paired bootstrap resamples, and how many resamples it draws.
BOOTSTRAP_BLOCKS: Final = 10
BOOTSTRAP_DRAWS: Final = 1_000
_EPS: Final = 1e-6


@dataclass(frozen=True)
class EvidenceRule:
    """What a decision needs: settings with defaults (`RetrainerSettings`)."""

    budget_per_day: float = 1.0
    min_positives: int = 20
    min_fresh_onsets: int = 5
    confidence: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class Judged:
    """A candidate with its policy and out-of-fold scores."""

    candidate: Candidate
    policy: TunedPolicy
    log_loss: float
    quiet_log_loss: float
    #: Out-of-fold probability metrics (`retrainer.metrics.evaluate_proba`) at the
    #: policy's out-of-fold threshold, and its warning record.
    metrics: dict[str, float]

    @property
    def kind(self) -> str:
        return self.candidate.kind

    @property
    def key(self) -> tuple[float, ...]:
        record = self.policy.record
        within = record.warned_1 if self.policy.within_budget else 0
        return (within, record.warned_3, -self.log_loss)


@dataclass(frozen=True)
class Evidence:
    """How much the out-of-fold rows can tell."""

    n: int
    positives: int
    fresh_onsets: int
    base_log_loss: float
    quiet_base_log_loss: float

    def sufficient(self, rule: EvidenceRule) -> bool:
        return self.positives >= rule.min_positives and self.fresh_onsets >= rule.min_fresh_onsets

    def as_card(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "positives": self.positives,
            "fresh_onsets": self.fresh_onsets,
            "base_log_loss": self.base_log_loss,
            "quiet_base_log_loss": self.quiet_base_log_loss,
        }


def log_loss(y: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    if not len(y):
        return math.nan
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def base_rate_oof(rows: CandidateRows, folds: Folds) -> NDArray[np.float64]:
    """The base rate each fold's training rows give, on its validation rows."""
    parts = [
        np.full(len(v), float(np.clip(rows.y[t].mean(), _EPS, 1 - _EPS))) for t, v in folds.splits
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def evidence(rows: CandidateRows, folds: Folds, prior: Candidate) -> Evidence:
    valid = folds.valid
    y = rows.y[valid]
    quiet = rows.quiet[valid]
    onsets = 0
    for k in np.unique(folds.segments):
        part = valid[folds.segments == k]
        onsets += len(fresh_onsets(rows.breach[part]))
    return Evidence(
        n=len(valid),
        positives=int(y.sum()),
        fresh_onsets=onsets,
        base_log_loss=log_loss(y, base_rate_oof(rows, folds)),
        quiet_base_log_loss=log_loss(y[quiet], prior.oof[quiet]),
    )


def judge(candidate: Candidate, rows: CandidateRows, folds: Folds, budget: float) -> Judged:
    valid = folds.valid
    y, quiet = rows.y[valid], rows.quiet[valid]
    policy = tune_policy(candidate, rows, folds, budget)
    # Probability metrics with hard forecasts at 1/2 (a breach within the horizon is more
    # likely than not); the warning's own record is beside them.
    metrics = evaluate_proba(y, candidate.oof, 0.5)
    metrics["threshold"] = policy.threshold if math.isfinite(policy.threshold) else 1.0
    record = policy.record
    metrics.update(
        {
            "warning_recall_lead_1": record.recall_1 if record.recall_1 is not None else math.nan,
            "warning_recall_lead_3": record.recall_3 if record.recall_3 is not None else math.nan,
            "false_warnings_per_day": record.false_per_day,
            "median_lead": record.median_lead if record.median_lead is not None else math.nan,
        }
    )
    return Judged(
        candidate=candidate,
        policy=policy,
        log_loss=log_loss(y, candidate.oof),
        quiet_log_loss=log_loss(y[quiet], candidate.oof[quiet]),
        metrics=metrics,
    )


@dataclass(frozen=True)
class Choice:
    """The tenant's best forecaster, the best of each kind, and the evidence."""

    best: Judged
    by_kind: dict[str, Judged]
    evidence: Evidence
    eligible: tuple[str, ...]


def choose(
    candidates: list[Candidate], rows: CandidateRows, folds: Folds, rule: EvidenceRule
) -> Choice:
    """The candidate that warns best in budget among those with skill (see the module)."""
    judged = [judge(c, rows, folds, rule.budget_per_day) for c in candidates]
    prior = next(j for j in judged if j.kind == "prior")
    proof = evidence(rows, folds, prior.candidate)
    by_kind: dict[str, Judged] = {}
    for j in judged:
        if j.kind not in by_kind or j.key > by_kind[j.kind].key:
            by_kind[j.kind] = j
    eligible = [
        j
        for j in judged
        if j.log_loss < proof.base_log_loss
        and (j.kind == "prior" or j.quiet_log_loss < prior.quiet_log_loss)
    ]
    best = max(eligible, key=lambda j: j.key) if eligible else prior
    names = tuple(sorted({j.kind for j in eligible}))
    return Choice(best=best, by_kind=by_kind, evidence=proof, eligible=names)


def onset_outcomes(
    warned_on: NDArray[np.bool_], rows: CandidateRows, folds: Folds
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """Per fresh onset of the folds: its row (in `Folds.valid` order), fold, warned at >= 1."""
    valid, segments = folds.valid, folds.segments
    at_rows, at_folds, warned = [], [], []
    offset = 0
    for k in np.unique(segments):
        part = valid[segments == k]
        found = fresh_onsets(rows.breach[part])
        got = leads(warned_on[offset : offset + len(part)], rows.breach[part], found)
        at_rows.append(found + offset)
        at_folds.append(np.full(len(found), k))
        warned.append(got >= 1)
        offset += len(part)
    if not at_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(at_rows), np.concatenate(at_folds), np.concatenate(warned)


def paired_confidence(
    challenger: Judged,
    champion_on: NDArray[np.bool_],
    champion_p: NDArray[np.float64],
    rows: CandidateRows,
    folds: Folds,
    rule: EvidenceRule,
) -> tuple[float, float]:
    """(gain, confidence) of the challenger over the champion on the same rows.

    The gain is in fresh onsets warned at lead >= 1 (the challenger must be within
    budget); where that is a tie, in log loss. Confidence is the share of blocked
    bootstrap resamples (contiguous blocks of the out-of-fold rows) in which the
    challenger's side of the paired difference stays ahead.
    """
    valid = folds.valid
    y = rows.y[valid]
    chal_p = challenger.candidate.oof
    chal_on = warning_on(chal_p, rows.quiet[valid], challenger.policy.oof_threshold)
    at, _, chal_warned = onset_outcomes(chal_on, rows, folds)
    _, _, champ_warned = onset_outcomes(champion_on, rows, folds)
    block = _blocks(len(valid))
    onset_block = block[at] if len(at) else np.zeros(0, np.int64)
    warned_diff = np.bincount(
        onset_block, weights=(chal_warned.astype(float) - champ_warned), minlength=BOOTSTRAP_BLOCKS
    )
    q_chal, q_champ = (np.clip(p, _EPS, 1 - _EPS) for p in (chal_p, champion_p))
    loss = lambda q: -(y * np.log(q) + (1 - y) * np.log1p(-q))  # noqa: E731
    loss_diff = np.bincount(block, weights=loss(q_champ) - loss(q_chal), minlength=BOOTSTRAP_BLOCKS)
    record = score_segments(chal_on, rows.breach[valid], rows.ts[valid], folds.segments)
    if record.false_per_day > rule.budget_per_day:
        return -math.inf, 0.0
    use_onsets = warned_diff.sum() != 0
    diff = warned_diff if use_onsets else loss_diff
    return float(diff.sum()), _ahead_share(diff, rule)


def _blocks(n: int) -> NDArray[Any]:
    """Each of `n` rows' contiguous block, of `BOOTSTRAP_BLOCKS`."""
    return np.minimum((np.arange(n) * BOOTSTRAP_BLOCKS) // max(n, 1), BOOTSTRAP_BLOCKS - 1)


def _ahead_share(per_block: NDArray[Any], rule: EvidenceRule) -> float:
    """Share of block bootstrap resamples whose summed difference stays above 0."""
    rng = np.random.default_rng(rule.seed)
    draws = rng.integers(0, BOOTSTRAP_BLOCKS, (BOOTSTRAP_DRAWS, BOOTSTRAP_BLOCKS))
    return float(np.mean(per_block[draws].sum(axis=1) > 0))


def worse_than_base_confidence(
    p: NDArray[np.float64], rows: CandidateRows, folds: Folds, rule: EvidenceRule
) -> float:
    """Share of blocked bootstrap resamples in which `p` loses to the base rate on log loss.

    The base rate is each fold's training rows' (`base_rate_oof`), on the same rows;
    blocks as `paired_confidence` draws them.
    """
    valid = folds.valid
    n = len(valid)
    if not n:
        return 0.0
    y = rows.y[valid]
    loss = lambda q: -(y * np.log(q) + (1 - y) * np.log1p(-q))  # noqa: E731
    q_model = np.clip(p, _EPS, 1 - _EPS)
    q_base = np.clip(base_rate_oof(rows, folds), _EPS, 1 - _EPS)
    diff = np.bincount(_blocks(n), weights=loss(q_model) - loss(q_base), minlength=BOOTSTRAP_BLOCKS)
    return _ahead_share(diff, rule)
