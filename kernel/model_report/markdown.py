"""The Markdown model card of a version, rendered from its JSON card (Hugging Face style).

YAML metadata first (``model-index`` with the holdout metrics, as the Hub reads it),
then what a reader looks for: intended use, training data by lineage, the training
procedure, evaluation beside the baselines, limitations. Plots are embedded by their
file names, which sit beside the card in ``sla_models/``, so the Hub's page for the file
shows them. The tenant appears only as its HMAC hash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from kernel.artifacts import ModelCard
from kernel.model_report.digests import DIGEST_KEY

_METRIC_NAMES = {
    "log_loss": "log loss",
    "brier": "Brier score",
    "ece": "expected calibration error",
    "pr_auc": "PR-AUC (average precision)",
    "roc_auc": "ROC-AUC",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def front_matter(card: ModelCard, tenant_hash: str, digest: str) -> dict[str, Any]:
    """The YAML metadata: Hub tags plus a ``model-index`` carrying every holdout metric."""
    horizon = card.horizon
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
                            "name": f"SLA breach {horizon} interval(s) ahead",
                        },
                        "dataset": {
                            "type": "slaops-telemetry",
                            "name": "the tenant's newest telemetry (holdout)",
                            "split": "holdout",
                        },
                        "metrics": [
                            {
                                "type": name,
                                "value": float(value),
                                "name": f"holdout {_METRIC_NAMES.get(name, name)}",
                            }
                            for name, value in sorted(card.metrics.items())
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
    lines += [
        f"A {arch.get('hidden_layers')}-hidden-layer MLP (width {arch.get('width')}, "
        f"{arch.get('n_features')} inputs) published by slaops for one tenant, named here "
        f"by the HMAC of its slug (`{tenant_hash}`). This page is rendered from "
        f"`{tenant_hash}_sla_model.json` (sha256 `{digest[:16]}…`), which stays the "
        "machine-readable source.",
        "",
        "## Intended use",
        "",
        f"Forecast, for each telemetry interval of this tenant, the probability that its SLA "
        f"is breached {card.horizon} interval(s) later, and flag a breach when it is at least "
        f"the threshold **{card.threshold:.3f}**. Inputs are computed by slaops' feature "
        f"pipeline (spec version {card.features.version}, {len(card.feature_order)} "
        "columns, in the card's `feature_order`). Not for other tenants, other SLA rules or "
        "other feature pipelines.",
        "",
        "## Training data",
        "",
        f"Retrained for **{lineage.get('reason', '?')}** "
        f"(detector `{lineage.get('detector', '?')}`), from the offset ranges below of the "
        f"telemetry topic: {lineage.get('n_rows', '?')} rows, the newest "
        f"{lineage.get('n_holdout', '?')} held out. Rows sha256 "
        f"`{str(lineage.get('data_sha256', '?'))[:16]}…`.",
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
        f"{lineage.get('strategy', 'grid')} search with time-series cross-validation over "
        f"{len(card.cv_table)} candidate rows, scored by validation log loss; the winner "
        f"(`{lineage.get('best_params')}`) was refit on every training row.",
        "",
    ]
    for kind in ("plot_search", "plot_learning"):
        if kind in plots:
            title, file = plots[kind]
            lines += [f"![{title}]({file})", ""]
    lines += ["## Evaluation", "", "On the holdout (the newest rows, never searched on):", ""]
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
    if card.skill:
        lines += ["", "Skill over the baselines (positive: better):", ""]
        lines += _table(["", "value"], [[k, v] for k, v in sorted(card.skill.items())])
    lines += [""]
    for kind in ("plot_baselines", "plot_pr", "plot_reliability", "plot_confusion"):
        if kind in plots:
            title, file = plots[kind]
            lines += [f"![{title}]({file})", ""]
    lines += [
        "## Limitations",
        "",
        "- Judged on one holdout of the tenant's newest rows: a few hours or days with few "
        "breaches make its metrics noisy.",
        "- It learns the tenant's SLA rule as it was in the window; a changed rule or "
        "traffic pattern (drift) makes it stale until slaops retrains it.",
        "- Probabilities are not re-weighted for class imbalance; the threshold trades "
        "precision for recall by F1 on out-of-fold forecasts, not by the cost of a miss.",
        "- Load only with `kernel.artifacts.load_model` (sha256-checked safetensors) or "
        "`torch.load(weights_only=True)`.",
        "",
    ]
    return "\n".join(lines).encode("utf-8")
