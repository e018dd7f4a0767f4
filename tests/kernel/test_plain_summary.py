"""The plain-language summary (`kernel.model_report.summary.plain_summary`): made of the
card's own figures, so its numbers are those of the tables under it."""

from __future__ import annotations

import re
from typing import Any

from kernel.artifacts import ModelCard
from kernel.model_report.markdown import render_markdown
from kernel.model_report.summary import best_rule, plain_summary
from testkit.warning_models import POLICY, p99_artifacts


def record(onsets: int, warned: int, false: int, days: float, median: float | None) -> dict:
    return {
        "fresh_onsets": onsets,
        "warned_lead_1": warned,
        "warned_lead_3": warned // 2,
        "recall_lead_1": warned / onsets if onsets else None,
        "recall_lead_3": (warned // 2) / onsets if onsets else None,
        "notifications": warned + false,
        "false_warnings": false,
        "false_per_day": false / days,
        "days": days,
        "median_lead": median,
    }


def card(own: dict[str, Any], *, sufficient: bool = True, horizon_s: float = 1_800.0) -> ModelCard:
    """A real card (`p99_artifacts`) with an out-of-fold record and rules beside it."""
    base = p99_artifacts().card_model.model_dump()
    base.update(
        horizon=6,
        horizon_s=horizon_s,  # six five-minute intervals
        warning={**POLICY, "out_of_fold": own},
        rules={
            "linear_trend": {
                "input": None,
                "log_loss": 0.3,
                "out_of_fold": record(58, 18, 4, 9.0, 2.0),
            },
            "level": {"input": None, "log_loss": 0.2, "out_of_fold": record(58, 12, 2, 9.0, 1.0)},
            "prior": {"input": None, "log_loss": 0.4, "out_of_fold": record(58, 0, 0, 9.0, None)},
            "mlp": {"input": None, "log_loss": 0.1, "out_of_fold": own},
        },
        evidence={
            "n": 2_600,
            "positives": 300,
            "fresh_onsets": own["fresh_onsets"],
            "sufficient": sufficient,
        },
    )
    return ModelCard.model_validate(base)


def numbers(sentence: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", sentence)]


def test_the_sentence_gives_the_cards_own_figures() -> None:
    own = record(58, 24, 5, 9.2, 3.0)  # 41% warned, 0.54 false warnings a day
    c = card(own)
    sentence = plain_summary(c)
    assert sentence == (
        "Warns of 41% of new incidents at least 5 minutes ahead (typically 15 minutes), "
        "about one false warning every 2 days (0.54 a day); the best rule (linear_trend) "
        "warns of 31%. Judged on 58 incidents in 9.2 days of held-out data."
    )
    # Each number is the card's, as its early-warning table gives it.
    recall, step, median, every, per_day, rule_recall, onsets, days = numbers(sentence)
    rule = c.rules["linear_trend"]["out_of_fold"]
    assert recall == round(100 * c.warning_record["recall_lead_1"])
    assert c.horizon_s is not None and step == c.horizon_s / c.horizon / 60 and median == 3.0 * step
    assert every == round(1 / c.warning_record["false_per_day"])
    assert per_day == round(c.warning_record["false_per_day"], 2)
    assert rule_recall == round(100 * rule["recall_lead_1"])
    assert onsets == c.warning_record["fresh_onsets"] == c.evidence["fresh_onsets"]
    assert days == round(c.warning_record["days"], 1)
    # The best rule warns of the most onsets; neither the network nor the prior is one.
    assert best_rule(c.rules, c.forecaster) == "linear_trend"
    # The Markdown card opens with it, above its tables with the same figures.
    markdown = render_markdown(c, "a" * 64, "b" * 64, {}).decode()
    lead = markdown.index("**In short:** Warns of 41% of new incidents")
    table = markdown.index(f"| model | 58 | {own['recall_lead_1']:.4f} |")
    assert lead < table
    assert f"| linear\\_trend | 58 | {rule['recall_lead_1']:.4f} |" in markdown


def test_a_rule_as_forecaster_is_set_beside_the_best_other_rule() -> None:
    c = card(record(58, 24, 5, 9.2, 3.0)).model_copy(update={"forecaster": "linear_trend"})
    assert best_rule(c.rules, c.forecaster) == "level"
    assert "the best rule (level) warns of 21%" in plain_summary(c)


def test_too_few_incidents_say_insufficient_evidence() -> None:
    few = card(record(3, 2, 0, 2.1, 1.0), sufficient=False)
    assert plain_summary(few) == (
        "Insufficient evidence: 3 incidents in 2.1 days of held-out data, too few to say "
        "how well it warns."
    )
    # Enough incidents, but the gate found the evidence short (too few positives).
    short = card(record(12, 6, 0, 2.1, 1.0), sufficient=False)
    assert plain_summary(short).startswith("Insufficient evidence: 12 incidents in 2.1 days")
    markdown = render_markdown(few, "a" * 64, "b" * 64, {}).decode()
    assert "**In short:** Insufficient evidence: 3 incidents" in markdown


def test_an_older_card_without_a_warning_record_says_so() -> None:
    old = p99_artifacts(target="at").card_model
    assert plain_summary(old) == (
        "This card records no early-warning evaluation (an older card format)."
    )
