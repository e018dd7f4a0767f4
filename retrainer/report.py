"""A version's report: the plots and the Markdown card, rendered from the JSON card.

Rendering can never cost a version. `report_files` runs before the store commit so the
report lands in the SAME commit as the weights and card; if anything in it raises, the
version is published without report files and the failure is logged (a missing
picture is a cosmetic loss; a lost or delayed model is not). Readers check a report
against its card (`report_card_digest`), so a stale report is never shown as this
version's.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from kernel.artifacts import ModelCard, sha256_hex
from kernel.store import REPORT_KINDS, report_paths
from retrainer.card_markdown import markdown_card_digest, render_markdown
from retrainer.plots import PLOTS, png_card_digest, render_plots

log = logging.getLogger(__name__)

#: Plot kinds, in the order a reader sees them.
PLOT_KINDS: Final = tuple(PLOTS)
PLOT_TITLES: Final = {kind: title for kind, (title, _draw) in PLOTS.items()}


def build_report(card_bytes: bytes, tenant_hash: str) -> dict[str, bytes]:
    """Every report file, by report kind. Raises whatever parsing or drawing raises."""
    card = ModelCard.model_validate_json(card_bytes)
    digest = sha256_hex(card_bytes)
    files = render_plots(card, digest)
    names = {kind: path.rsplit("/", 1)[1] for kind, path in report_paths(tenant_hash).items()}
    plots = {kind: (PLOT_TITLES[kind], names[kind]) for kind in files}
    files["report"] = render_markdown(card, tenant_hash, digest, plots)
    if set(files) != set(REPORT_KINDS):
        raise RuntimeError(f"report kinds {sorted(files)} are not the store's {REPORT_KINDS}")
    return files


def report_files(card_bytes: bytes, tenant_hash: str) -> dict[str, bytes]:
    """The report files to publish with a version, or ``{}`` if rendering failed (logged).

    Never raises: the caller publishes the version either way.
    """
    started = time.perf_counter()
    try:
        files = build_report(card_bytes, tenant_hash)
    except Exception:
        log.exception(
            "tenant_hash=%s report not rendered: the version is published without it",
            tenant_hash,
        )
        return {}
    log.info(
        "tenant_hash=%s report rendered files=%d bytes=%d seconds=%.2f",
        tenant_hash,
        len(files),
        sum(len(data) for data in files.values()),
        time.perf_counter() - started,
    )
    return files


def report_card_digest(kind: str, data: bytes) -> str | None:
    """The card sha256 a report file names (None: not one of ours, or unreadable)."""
    return markdown_card_digest(data) if kind == "report" else png_card_digest(data)
