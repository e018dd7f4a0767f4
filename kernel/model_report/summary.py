"""One sentence an on-call lead can read: what a forecaster warns of, how early, how
often it is wrong, against the best rule, on how much evidence.

Written from the card's own figures (the early-warning record the card's tables show,
the rules judged beside it, the evidence), never from anything else, so the sentence
cannot disagree with the tables under it. The Markdown card opens with it; the fleet
report gives it for each tenant.

>>> _false_rate(0.5), _false_rate(0.0)
('about one false warning every 2 days', 'no false warnings')
>>> _false_rate(2.4), _false_rate(0.1)
('about 2.4 false warnings a day', 'about one false warning every 10 days')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from kernel.artifacts import ModelCard

#: Kinds that are not a rule to set a forecaster beside.
_NOT_RULES: Final = frozenset({"mlp", "prior"})
#: Fewest fresh onsets a summary states a recall on (the gate's default minimum).
MIN_SUMMARY_ONSETS: Final = 5
#: Most characters of a rule's name the sentence gives (a card's keys are input too).
_MAX_NAME: Final = 32


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def best_rule(rules: Mapping[str, Any], forecaster: str) -> str | None:
    """The rule judged beside `forecaster` that warns of the most fresh onsets out of fold.

    A card's `rules` (kind -> its input, log loss and out-of-fold warning record); the
    forecaster's own kind, the network and the prior are not rules to beat. Ties go to
    more onsets warned at lead >= 3, then to the lower log loss. None when there is none.
    """
    best: tuple[tuple[float, float, float], str] | None = None
    for kind, judged in sorted(rules.items()):
        if kind in _NOT_RULES or kind == forecaster or not isinstance(judged, Mapping):
            continue
        record = judged.get("out_of_fold")
        if not isinstance(record, Mapping):
            continue
        loss = _number(judged.get("log_loss"))
        key = (
            _number(record.get("warned_lead_1")) or 0.0,
            _number(record.get("warned_lead_3")) or 0.0,
            -(loss if loss is not None else math.inf),
        )
        if best is None or key > best[0]:
            best = (key, kind)
    return None if best is None else best[1]


def _percent(share: float) -> str:
    return f"{share:.0%}"


def _false_rate(per_day: float) -> str:
    if per_day <= 0:
        return "no false warnings"
    if per_day >= 1:
        return f"about {per_day:.2g} false warning{'s' if per_day >= 1.05 else ''} a day"
    every = round(1 / per_day)
    if every > 1:
        return f"about one false warning every {every} days"
    return "about one false warning a day"


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} minute{'s' if round(minutes) != 1 else ''}"


def interval_s(card: ModelCard) -> float | None:
    """Seconds of one interval of the tenant (the card's horizon in seconds over its length)."""
    seconds = card.horizon_s
    return seconds / card.horizon if seconds else None


def plain_summary(card: ModelCard) -> str:
    """The card in one plain sentence or two (see the module doc); never empty."""
    record = card.warning_record
    onsets = _number(record.get("fresh_onsets"))
    days = _number(record.get("days"))
    evidence = f"{int(onsets)} incidents" if onsets is not None else "no incidents counted"
    span = f" in {days:.1f} days" if days is not None else ""
    if onsets is None:
        return "This card records no early-warning evaluation (an older card format)."
    sufficient = card.evidence.get("sufficient", True) is not False
    if onsets < MIN_SUMMARY_ONSETS or not sufficient:
        return (
            f"Insufficient evidence: {evidence}{span} of held-out data, too few to say "
            "how well it warns."
        )
    recall = _number(record.get("recall_lead_1")) or 0.0
    per_day = _number(record.get("false_per_day")) or 0.0
    step = interval_s(card)
    ahead = f"at least {_minutes(step)} ahead" if step else "at least one interval ahead"
    median = _number(record.get("median_lead"))
    if median is not None and step:
        ahead += f" (typically {_minutes(median * step)})"
    if card.warns:
        head = f"Warns of {_percent(recall)} of new incidents {ahead}, {_false_rate(per_day)}"
    else:
        budget = _number(card.warning.get("budget_per_day"))
        head = "Does not warn: no threshold kept false warnings within the budget" + (
            f" of {budget:g} a day" if budget is not None else ""
        )
    head += f" ({per_day:.2f} a day)" if card.warns else ""
    rule = best_rule(card.rules, card.forecaster)
    if rule is not None:
        rule_record = card.rules[rule].get("out_of_fold") or {}
        rule_recall = _number(rule_record.get("recall_lead_1")) or 0.0
        head += f"; the best rule ({rule[:_MAX_NAME]}) warns of {_percent(rule_recall)}"
    return f"{head}. Judged on {evidence}{span} of held-out data."
