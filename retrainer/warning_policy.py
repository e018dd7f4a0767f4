"""A tenant's warning policy: the threshold that warns of the most new incidents in budget.

The threshold is tuned on the candidate's out-of-fold probabilities over the training
window (`kernel.early_warning.choose_threshold`, counting re-notifications), then carried
to the module refit on every row by the share of quiet rows it leaves silent: the refit
model's probabilities are not on the scale of the fold models' (it saw more rows), but
the alarm rate the budget allowed is what should carry over. The policy's recall is
also measured on folds it was not tuned on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kernel.early_warning import WarningRecord, choose_threshold, score_segments, warning_on
from retrainer.forecasters import Candidate, CandidateRows, Folds

#: Folds kept back to measure a policy tuned on the earlier ones.
UNSEEN_FOLDS = 2


@dataclass(frozen=True, slots=True)
class TunedPolicy:
    """The threshold to serve, and what it did out of fold."""

    threshold: float
    #: The threshold on the fold models' probabilities that the record was tuned at.
    oof_threshold: float
    budget_per_day: float
    #: The out-of-fold record at the tuned threshold (all folds).
    record: WarningRecord
    #: Tuned on all but the last `UNSEEN_FOLDS` folds, scored on those (None: too few).
    unseen: WarningRecord | None
    #: Share of quiet rows the threshold leaves silent.
    silent_share: float
    within_budget: bool

    def as_card(self) -> dict[str, object]:
        return {
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "budget_per_day": self.budget_per_day,
            "silent_share": self.silent_share,
            "within_budget": self.within_budget,
            "out_of_fold": self.record.as_dict(),
            "unseen_folds": None if self.unseen is None else self.unseen.as_dict(),
        }


def _quiet_scores(p: NDArray[np.float64], quiet: NDArray[np.bool_]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.where(quiet, p, -np.inf)
    return out


def tune_policy(
    candidate: Candidate, rows: CandidateRows, folds: Folds, budget_per_day: float
) -> TunedPolicy:
    """The candidate's policy within `budget_per_day` false warnings per day."""
    valid, segments = folds.valid, folds.segments
    quiet = rows.quiet[valid]
    scores = _quiet_scores(candidate.oof, quiet)
    labels, ts = rows.breach[valid], rows.ts[valid]
    fitted_quiet = candidate.fitted[rows.quiet]
    if len(fitted_quiet) and np.ptp(fitted_quiet) == 0:
        # One value for every quiet row (the prior): a warning would be on always or
        # never; the folds' different rates are no signal to warn on.
        scores = np.full(len(scores), -np.inf)
    policy = choose_threshold(scores, labels, ts, budget_per_day, segments)
    silent = _silent_share(candidate.oof[quiet], policy.threshold)
    threshold = _carried(fitted_quiet, silent, policy.threshold)
    return TunedPolicy(
        threshold=threshold,
        oof_threshold=policy.threshold,
        budget_per_day=budget_per_day,
        record=policy.record,
        unseen=_unseen(scores, labels, ts, segments, budget_per_day),
        silent_share=silent,
        within_budget=policy.within_budget,
    )


def _silent_share(quiet_oof: NDArray[np.float64], threshold: float) -> float:
    if not math.isfinite(threshold) or not len(quiet_oof):
        return 1.0
    return float(np.mean(quiet_oof < threshold))


def _carried(fitted_quiet: NDArray[np.float64], silent: float, fallback: float) -> float:
    """The refit module's threshold that leaves (closest to) the same share of quiet rows silent.

    Thresholds are tried at the values the module gave (and infinity: never warn), so a
    module with few distinct outputs (the prior has one) is never made to warn on every
    row because the share wanted falls between two of them; ties go to the higher one.
    """
    if silent >= 1.0:
        return math.inf
    if not len(fitted_quiet):
        return fallback
    values = np.unique(fitted_quiet)
    options = np.append(values, math.inf)
    # Share of rows strictly below each option: `searchsorted` on the sorted scores.
    below = np.searchsorted(np.sort(fitted_quiet), options, side="left") / len(fitted_quiet)
    gap = np.abs(below - silent)
    best = np.flatnonzero(gap <= gap.min() + 1e-12)[-1]
    return float(options[best])


def _unseen(
    scores: NDArray[np.float64],
    labels: NDArray[np.bool_],
    ts: NDArray[np.float64],
    segments: NDArray[np.int64],
    budget: float,
) -> WarningRecord | None:
    folds = np.unique(segments)
    if len(folds) <= UNSEEN_FOLDS:
        return None
    tuned_on = np.isin(segments, folds[:-UNSEEN_FOLDS])
    early = choose_threshold(
        scores[tuned_on], labels[tuned_on], ts[tuned_on], budget, segments[tuned_on]
    )
    later = ~tuned_on
    on = scores[later] >= early.threshold
    return score_segments(on, labels[later], ts[later], segments[later])


def warnings_of(
    proba: NDArray[np.float64], rows: CandidateRows, index: NDArray[np.int64], threshold: float
) -> NDArray[np.bool_]:
    """The warning series a policy gives on `index` rows (the serving rule)."""
    return warning_on(proba, rows.quiet[index], threshold)
