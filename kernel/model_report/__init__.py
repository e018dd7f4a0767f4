"""A published version's report: its Markdown model card and plots, drawn from the JSON card.

The retrainer publishes a report with every version (in the same store commit); the
fleet report (`slaops report`) shows it, or draws it again from the card when the
store's copy is missing or stale. Both render it here, so the two can never disagree.
Everything is drawn from the JSON card only (`kernel.artifacts.ModelCard`), and every
file names the sha256 of the card it was drawn from (`report_card_digest` reads it
back), so a stale report is never shown as this version's.

| module | owns |
| --- | --- |
| `markdown` | the Hugging Face-style Markdown card (YAML front matter, then prose and tables) |
| `plots` | the PNG plots (matplotlib's object API on the Agg canvas) |
| `digests` | which card a report file was drawn from (reads; imports no matplotlib) |

matplotlib is a leaf dependency: only `kernel.model_report.plots` imports it, and
`build_report` imports that module when it draws, so importing this package (for
`PLOT_KINDS` or the digests, as a service that only reads reports does) never loads it.
"""

from __future__ import annotations

from typing import Final

from kernel.artifacts import ModelCard, sha256_hex
from kernel.model_report.digests import report_card_digest
from kernel.model_report.markdown import render_markdown
from kernel.store import REPORT_KINDS, report_paths

__all__ = ["PLOT_KINDS", "PLOT_TITLES", "build_report", "report_card_digest"]

#: Plot kind (a `kernel.store.REPORT_KINDS` key) -> its title, in the order a reader sees them.
PLOT_TITLES: Final[dict[str, str]] = {
    "plot_search": "Search landscape",
    "plot_learning": "Learning curves",
    "plot_pr": "Precision-recall curve",
    "plot_reliability": "Reliability diagram",
    "plot_confusion": "Confusion matrix",
    "plot_baselines": "Beside the baselines",
}
#: Plot kinds, in the order a reader sees them.
PLOT_KINDS: Final = tuple(PLOT_TITLES)


def build_report(card_bytes: bytes, tenant_hash: str) -> dict[str, bytes]:
    """Every report file, by report kind. Raises whatever parsing or drawing raises.

    Deterministic: the same card gives the same bytes (for one matplotlib version).
    """
    from kernel.model_report.plots import render_plots  # matplotlib: only when drawing

    card = ModelCard.model_validate_json(card_bytes)
    digest = sha256_hex(card_bytes)
    files = render_plots(card, digest)
    names = {kind: path.rsplit("/", 1)[1] for kind, path in report_paths(tenant_hash).items()}
    plots = {kind: (PLOT_TITLES[kind], names[kind]) for kind in files}
    files["report"] = render_markdown(card, tenant_hash, digest, plots)
    if set(files) != set(REPORT_KINDS):
        raise RuntimeError(  # a bug: PLOT_TITLES and the store must name the same kinds
            f"report kinds {sorted(files)} are not the store's {sorted(REPORT_KINDS)}"
        )
    return files
