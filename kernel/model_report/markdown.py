"""The Markdown model card of a version, rendered from its JSON card (Hugging Face style).

YAML metadata first (``model-index`` with the holdout metrics, as the Hub reads it:
scores only, `MODEL_INDEX_METRICS`; the counts behind them, such as the confusion
matrix and the rows, are in the body's Evaluation section), then what a reader looks
for: intended use, training data by lineage, the training procedure, evaluation beside
the baselines, limitations. Plots are embedded by their file names, which sit beside
the card in ``sla_models/``, so the Hub's page for the file shows them. The tenant
appears only as its HMAC hash.

A card is read back from a store anyone with write access may have written, and its
lineage quotes a retrain request: every word that comes from the card goes through
`text` (HTML and Markdown-active characters escaped, one line, bounded) or `code` (a
code span only for plain text), so nothing in a card becomes markup, a link, an image
or a raw HTML line. Numbers are formatted, never quoted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

from kernel.artifacts import MIN_SLICE_ONSETS, MIN_SLICE_ROWS, ModelCard
from kernel.model_report.digests import DIGEST_KEY
from kernel.model_report.summary import plain_summary

#: The most characters of one card value shown (a longer one is cut, with an ellipsis).
MAX_SHOWN = 200
#: Characters that start Markdown (or GFM table) syntax mid-line: each is shown
#: backslash-escaped. (".", "-" and "+" start syntax only at a line's start, where no
#: card value ever stands: every line starts with our own words.)
_MARKDOWN_ACTIVE = frozenset("\\`*_{}[]()#!|~")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
#: What a code span may hold: a name, a number, a digest, a dict's repr.
_CODE_PLAIN = re.compile(r"[A-Za-z0-9 _.,:;'=+{}/-]*")


def _one_line(value: Any) -> str:
    """``value`` as one printable line: controls, line breaks, bidi and zero-width marks
    become spaces (Python counts none of them printable); cut at `MAX_SHOWN`."""
    raw = str(value)
    line = "".join(c if c.isprintable() else " " for c in raw[: MAX_SHOWN + 1])
    return line[:MAX_SHOWN] + "…" if len(line) > MAX_SHOWN else line


def text(value: Any) -> str:
    """A card value as inert Markdown text: HTML escaped, Markdown syntax backslash-escaped.

    >>> print(text('x`\\n<img src=x onerror=alert(1)>'))
    x\\` &lt;img src=x onerror=alert\\(1\\)&gt;
    """
    out = []
    for c in _one_line(value):
        if c in _HTML:
            out.append(_HTML[c])
        elif c in _MARKDOWN_ACTIVE:
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def code(value: Any) -> str:
    """A card value in a code span if it is plain text, else as `text` (escaped, no span).

    Inside a code span nothing can be escaped (a backslash shows as itself), so only a
    value of letters, digits and a few inert signs (`_CODE_PLAIN`) gets one.
    """
    line = _one_line(value)
    plain = bool(line.strip()) and _CODE_PLAIN.fullmatch(line) is not None
    return f"`{line}`" if plain else text(line)


_METRIC_NAMES = {
    "log_loss": "log loss",
    "brier": "Brier score",
    "ece": "expected calibration error",
    "pr_auc": "PR-AUC (average precision)",
    "roc_auc": "ROC-AUC",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "warning_recall_lead_1": "new incidents warned at lead >= 1",
    "warning_recall_lead_3": "new incidents warned at lead >= 3",
    "median_lead": "median warning lead (intervals)",
    "false_warnings_per_day": "false warnings per day",
}


#: The card metrics that are scores, the only ones in the front matter's ``model-index``
#: (the Hub's metric list); counts (``tn``, ``fp``, ``fn``, ``tp``, ``n_rows``), the
#: positive rate and the threshold go in the body (`_count_lines`).
MODEL_INDEX_METRICS = tuple(_METRIC_NAMES)
#: The counts the body's table shows, in order, with their column titles.
_COUNTS = {
    "n_rows": "rows",
    "positives": "positives",
    "positive_rate": "positive rate",
    "threshold": "threshold",
    "tn": "true negatives",
    "fp": "false positives",
    "fn": "false negatives",
    "tp": "true positives",
}


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, bool):
        return text(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "-"
    if isinstance(value, int):
        return str(value)
    return text(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def front_matter(card: ModelCard, tenant_hash: str, digest: str) -> dict[str, Any]:
    """The YAML metadata: Hub tags plus a ``model-index`` of the card's scores.

    Only `MODEL_INDEX_METRICS` with a finite value: a count is not a metric the Hub
    can rank, and YAML's ``.nan`` is not one it can read.
    """
    horizon = card.horizon
    split = "out-of-fold" if card.target == "within" else "holdout"
    task = (
        f"SLA breach within the next {horizon} interval(s)"
        if card.target == "within"
        else f"SLA breach {horizon} interval(s) ahead"
    )
    return {
        "library_name": "pytorch",
        "pipeline_tag": "tabular-classification",
        "tags": ["slaops", "sla-breach-forecasting", "tabular-classification", "skorch"],
        DIGEST_KEY: digest,
        "model-index": [
            {
                "name": f"sla-model-{tenant_hash[:16]}",
                "results": [
                    {
                        "task": {
                            "type": "tabular-classification",
                            "name": task,
                        },
                        "dataset": {
                            "type": "slaops-telemetry",
                            "name": f"the tenant's telemetry ({split})",
                            "split": split,
                        },
                        "metrics": [
                            {
                                "type": name,
                                "value": float(value),
                                "name": f"{split} {_METRIC_NAMES.get(name, name)}",
                            }
                            for name in MODEL_INDEX_METRICS
                            if isinstance(value := card.metrics.get(name), float)
                            and math.isfinite(value)
                        ],
                    }
                ],
            }
        ],
    }


def render_markdown(
    card: ModelCard, tenant_hash: str, digest: str, plots: Mapping[str, tuple[str, str]]
) -> bytes:
    """The Markdown card; ``plots`` maps report kind -> (title, file name beside it)."""
    meta = yaml.safe_dump(front_matter(card, tenant_hash, digest), sort_keys=False)
    lineage = card.lineage
    arch = card.architecture
    name = tenant_hash[:16]
    lines = ["---", meta.rstrip("\n"), "---", "", f"# SLA-breach forecaster `{name}`", ""]
    lines += [f"**In short:** {_plain(plain_summary(card))}", ""]
    within = card.target == "within"
    head = text(card.forecaster) if card.forecaster != "mlp" else "the searched network"
    lines += [
        f"A gated module (quiet head: {head}"
        + (f" on {code(card.forecaster_input)}" if card.forecaster_input else "")
        + f"; {text(arch.get('hidden_layers'))} hidden layer(s), width "
        f"{text(arch.get('width'))}, "
        f"{text(arch.get('n_features'))} inputs) published by slaops for one tenant, named here "
        f"by the HMAC of its slug (`{tenant_hash}`). This page is rendered from "
        f"`{tenant_hash}_sla_model.json` (sha256 `{digest[:16]}…`), which stays the "
        "machine-readable source.",
        "",
    ]
    target = (
        f"a breach of its SLA within the next {card.horizon} interval(s)"
        + (f" ({card.horizon_s / 60:.0f} minutes)" if card.horizon_s else "")
        if within
        else f"a breach of its SLA {card.horizon} interval(s) later"
    )
    lines += [
        "## Intended use",
        "",
        f"Forecast, for each telemetry interval of this tenant, the probability of {target}, "
        f"and warn while it is at least the threshold **{card.threshold:.3f}**. Inputs are "
        f"computed by slaops' feature pipeline (spec version {text(card.features.version)}, "
        f"{len(card.feature_order)} columns, in the card's `feature_order`). Not for other "
        "tenants, other SLA rules or other feature pipelines.",
        "",
        "## Training data",
        "",
        f"Retrained for **{text(lineage.get('reason', '?'))}** "
        f"(detector {code(lineage.get('detector', '?'))}), from the offset ranges below of "
        f"the telemetry topic: {text(lineage.get('n_rows', '?'))} rows"
        + (
            ", judged on blocked time folds (out of fold)"
            if within
            else f", the newest {text(lineage.get('n_holdout', '?'))} held out"
        )
        + f". Rows sha256 {code(str(lineage.get('data_sha256', '?'))[:16])}….",
        "",
    ]
    source = lineage.get("source")
    sources: list[Any] = source if isinstance(source, list) else []
    lines += _table(
        ["topic", "partition", "from offset", "to offset (excl.)"],
        [
            [s.get("topic"), s.get("partition"), s.get("start_offset"), s.get("end_offset")]
            for s in sources[:50]
            if isinstance(s, dict)
        ],
    )
    lines += ["", "## Training procedure", ""]
    lines += [
        f"{text(lineage.get('strategy', 'grid'))} search with time-series cross-validation "
        f"over {len(card.cv_table)} candidate rows, scored by validation log loss; the winner "
        f"({code(lineage.get('best_params'))}) was refit on every training row.",
        "",
    ]
    for kind in ("plot_search", "plot_learning"):
        if kind in plots:
            title, file = plots[kind]
            lines += [f"![{title}]({file})", ""]
    where = (
        "Out of fold (each row forecast by models that never saw it or its window):"
        if within
        else "On the holdout (the newest rows, never searched on):"
    )
    lines += ["## Evaluation", "", where, ""]
    names = ["model", *card.baselines]
    scores = {"model": card.metrics, **card.baselines}
    lines += _table(
        ["", "log loss", "Brier", "F1", "precision", "recall", "PR-AUC"],
        [
            [n, *(scores[n].get(m, math.nan) for m in ("log_loss", "brier", "f1"))]
            + [scores[n].get(m, math.nan) for m in ("precision", "recall", "pr_auc")]
            for n in names
        ],
    )
    lines += _count_lines(card, "out-of-fold" if within else "holdout")
    if card.skill:
        lines += ["", "Skill over the baselines (positive: better):", ""]
        lines += _table(["", "value"], [[k, v] for k, v in sorted(card.skill.items())])
    lines += [""]
    lines += _warning_lines(card)
    lines += _slice_lines(card)
    for kind in ("plot_baselines", "plot_pr", "plot_reliability", "plot_confusion"):
        if kind in plots:
            title, file = plots[kind]
            lines += [f"![{title}]({file})", ""]
    lines += [
        "## Limitations",
        "",
        "- Judged on the tenant's own window: a few days with few new incidents make its "
        "metrics noisy (the evidence above says how many there were).",
        "- It learns the tenant's SLA rule as it was in the window; a changed rule or "
        "traffic pattern (drift) makes it stale until slaops retrains it.",
        "- Probabilities are not re-weighted for class imbalance; the threshold warns of the "
        "most new incidents within the false-warning budget out of fold, not by the cost "
        "of a miss.",
        "- Load only with `kernel.artifacts.load_model` (sha256-checked safetensors) or "
        "`torch.load(weights_only=True)`.",
        "",
    ]
    return "\n".join(lines).encode("utf-8")


def _count_lines(card: ModelCard, split: str) -> list[str]:
    """The counts behind the model's scores (kept out of ``model-index``): rows,
    positives, positive rate, threshold and the confusion matrix."""
    counts: dict[str, Any] = {
        k: v for k, v in card.metrics.items() if k in _COUNTS and isinstance(v, float)
    }
    if "tp" in counts and "fn" in counts:
        counts["positives"] = counts["tp"] + counts["fn"]
    for k in ("n_rows", "positives", "tn", "fp", "fn", "tp"):  # whole numbers
        if k in counts and math.isfinite(counts[k]) and counts[k] == int(counts[k]):
            counts[k] = int(counts[k])
    shown = [k for k in _COUNTS if k in counts]
    if not shown:
        return []
    lines = ["", f"Counts on the {split} rows (the model, hard forecasts at the threshold):", ""]
    return lines + _table([_COUNTS[k] for k in shown], [[counts[k] for k in shown]])


def _plain(sentence: str) -> str:
    """A summary (made of card values) as inert Markdown, word by word (no length cut)."""
    return " ".join(text(word) for word in sentence.split(" "))


#: How a slice's loss reads in the verdict column.
_LOSS_WORDS = {
    "log_loss": "log loss",
    "recall_lead_1": "incidents warned",
    "false_warnings": "false warnings",
}


def _slice_lines(card: ModelCard) -> list[str]:
    """The evaluation by slice: the model beside the baselines, with sample sizes and flags."""
    if not card.slices:
        return []
    baselines = [n for n in card.slices[0].figures if n != "model"]
    names = ["model", *baselines]
    header = [
        "slice",
        "rows",
        "positives",
        "new incidents",
        *(f"log loss {text(n)}" for n in names),
        *(f"warned at lead >= 1 {text(n)}" for n in names),
        *(f"false / day {text(n)}" for n in names),
        "verdict",
    ]
    rows: list[list[Any]] = []
    for s in card.slices:
        fig = [s.figures.get(n) for n in names]
        if not s.sufficient:
            verdict = "insufficient evidence"
        elif s.loses_to:
            verdict = "**loses to** " + ", ".join(
                f"{text(b)} ({_LOSS_WORDS.get(m, text(m))})"
                for b, _, m in (loss.rpartition(".") for loss in s.loses_to)
            )
        else:
            verdict = "holds"
        rows.append(
            [
                f"{_FAMILY.get(s.family, s.family)} {s.name}",
                s.rows,
                s.positives,
                s.fresh_onsets,
                *(math.nan if f is None or f.log_loss is None else f.log_loss for f in fig),
                *("-" if f is None else _warned(f.warned_lead_1, f.recall_lead_1) for f in fig),
                *(math.nan if f is None else f.false_per_day for f in fig),
                _Raw(verdict),
            ]
        )
    lines = [
        "### By slice",
        "",
        "The same out-of-fold rows, cut by band of the day (UTC), by load tercile (`rps`, "
        "terciles of the training window) and before and after the newest detected change "
        f"(where there is one). A slice with fewer than {MIN_SLICE_ROWS} rows or "
        f"{MIN_SLICE_ONSETS} new incidents is insufficient evidence and is not judged.",
        "",
    ]
    return [*lines, *_table(header, rows), ""]


_FAMILY = {"hour_utc": "hours", "load": "load", "change": "change:"}


class _Raw(str):
    """A cell already made inert (escaped here): `_cell` shows it as it is."""


def _warned(count: int, share: float | None) -> str:
    return f"{count} ({share:.0%})" if share is not None else str(count)


def _warning_lines(card: ModelCard) -> list[str]:
    """The early-warning record of the forecaster and of each rule judged beside it."""
    rows: list[list[Any]] = []
    for name, record in [("model", card.warning_record)] + [
        (kind, r.get("out_of_fold") or {}) for kind, r in sorted(card.rules.items())
    ]:
        if isinstance(record, dict) and record:
            rows.append(
                [name]
                + [record.get(k, math.nan) for k in ("fresh_onsets", "recall_lead_1")]
                + [record.get(k, math.nan) for k in ("recall_lead_3", "false_per_day")]
            )
    if not rows:
        return []
    lines = ["Early warning out of fold (new incidents: no breach in the 12 intervals before):"]
    lines += [""]
    header = ["", "new incidents", "warned at lead >= 1", "at lead >= 3", "false / day"]
    lines += _table(header, rows)
    evidence = card.evidence
    if evidence:
        lines += [
            "",
            f"Evidence: {text(evidence.get('n', '?'))} rows, "
            f"{text(evidence.get('positives', '?'))} "
            f"positives, {text(evidence.get('fresh_onsets', '?'))} new incidents"
            + ("" if evidence.get("sufficient", True) else " (insufficient evidence)")
            + ".",
        ]
    return [*lines, ""]
