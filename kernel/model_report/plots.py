"""The plots of a version's report, drawn from its JSON card only (so they never disagree).

matplotlib's object API on the Agg canvas: no pyplot, hence no global figure state and
no display, safe in a worker thread (the retrainer's, the report server's). A leaf
module: the kernel's one importer of matplotlib, imported only to draw. Each plot is a
small PNG (about 400 x 280 pixels) whose bytes depend only on the card and the
matplotlib version: no timestamp, no "Software" tag; a ``Description`` text chunk names
the sha256 of the card it was drawn from (`kernel.model_report.digests` reads it), so a
reader can tell a plot of this version from a stale one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any, Final

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from kernel.artifacts import ModelCard
from kernel.model_report import PLOT_KINDS
from kernel.model_report.digests import DIGEST_PREFIX

matplotlib.use("Agg")  # no display, whoever imports pyplot later in this process

_SIZE: Final = (5.0, 3.5)
_DPI: Final = 80
_MODEL, _PRIOR, _PERSIST, _LOGISTIC = "#1f6feb", "#8c959f", "#bf8700", "#8250df"


def _figure(ncols: int = 1, width: float | None = None) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width or _SIZE[0], _SIZE[1]), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Figure, digest: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(
        buffer,
        format="png",
        dpi=_DPI,
        metadata={"Software": None, "Description": f"{DIGEST_PREFIX}{digest}"},
    )
    return buffer.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#57606a")
    ax.set_xticks([])
    ax.set_yticks([])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _best_params(card: ModelCard) -> dict[str, Any]:
    """The lineage's winning parameters; {} when a (hostile or old) card has none as a dict."""
    params = card.lineage.get("best_params")
    return params if isinstance(params, dict) else {}


def _candidates(card: ModelCard) -> dict[tuple[float, int, int], float]:
    """(lr, depth, width) -> mean validation log loss; each candidate's newest round."""
    best: dict[tuple[float, int, int], tuple[int, float]] = {}
    for row in card.cv_table:
        params = row.get("params")
        loss = _number(row.get("mean_val_log_loss"))
        if not isinstance(params, dict) or loss is None:
            continue
        lr = _number(params.get("lr", _best_params(card).get("lr")))
        depth = params.get("module__hidden_layers", card.architecture.get("hidden_layers"))
        width = params.get("module__width", card.architecture.get("width"))
        if lr is None or not isinstance(depth, int) or not isinstance(width, int):
            continue
        key = (lr, depth, width)
        rnd = int(row.get("iter", 0)) if isinstance(row.get("iter", 0), int) else 0
        if key not in best or rnd >= best[key][0]:
            best[key] = (rnd, loss)
    return {key: loss for key, (_rnd, loss) in best.items()}


def search_landscape(card: ModelCard, digest: str) -> bytes:
    """Mean validation log loss per learning rate x depth, one panel per width; winner boxed.

    Depth 0 (a linear model) has no width: it is drawn in every panel. A card of a
    Bayesian search (with `trials`) gets `search_trials` instead.
    """
    if card.trials:
        return search_trials(card, digest)
    found = _candidates(card)
    winner_params = _best_params(card)
    winner = (
        _number(winner_params.get("lr")),
        winner_params.get("module__hidden_layers", card.architecture.get("hidden_layers")),
        winner_params.get("module__width", card.architecture.get("width")),
    )
    widths = sorted({w for (_lr, d, w) in found if d != 0}) or sorted({w for *_x, w in found})
    fig, axes = _figure(max(1, len(widths)), width=3.0 + 2.4 * max(1, len(widths)))
    if not found:
        _empty(axes[0], "no search results in this card")
        return _png(fig, digest)
    lrs = sorted({lr for (lr, _d, _w) in found})
    depths = sorted({d for (_lr, d, _w) in found})
    values = list(found.values())
    vmin, vmax = min(values), max(values)
    image = None
    for ax, width in zip(axes, widths, strict=True):
        grid = [[math.nan] * len(lrs) for _ in depths]
        for (lr, depth, w), loss in found.items():
            if w == width or depth == 0:
                grid[depths.index(depth)][lrs.index(lr)] = loss
        image = ax.imshow(grid, cmap="viridis_r", vmin=vmin, vmax=vmax, aspect="auto")
        for i, row in enumerate(grid):
            for j, loss in enumerate(row):
                if not math.isnan(loss):
                    bright = (loss - vmin) < 0.5 * (vmax - vmin)  # viridis_r: low loss is yellow
                    colour = "k" if bright else "w"
                    ax.text(j, i, f"{loss:.3f}", ha="center", va="center", fontsize=8, color=colour)
        if winner[0] in lrs and winner[1] in depths and (winner[2] == width or winner[1] == 0):
            j, i = lrs.index(winner[0]), depths.index(winner[1])
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#cf222e", linewidth=2.5)
            )
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("hidden layers")
        ax.set_title(f"width {width}", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, label="mean validation log loss", shrink=0.9)
    fig.suptitle("Search landscape (winner boxed in red)", fontsize=10)
    return _png(fig, digest)


def param_importances(card: ModelCard) -> dict[str, float]:
    """Each searched parameter's share of the loss's variance over the finished trials
    (Optuna's fANOVA, seeded, so the same card gives the same shares); {} with fewer
    than two finished trials or nothing varied."""
    import optuna  # only to draw a Bayesian search's card
    from optuna.distributions import BaseDistribution, CategoricalDistribution

    done = [t for t in card.trials if not t.pruned and t.loss is not None]
    names = sorted({name for t in done for name in t.params})
    choices = {n: sorted({t.params.get(n) for t in done}, key=repr) for n in names}
    varied = {n: c for n, c in choices.items() if len(c) > 1}
    if len(done) < 2 or not varied:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    space: dict[str, BaseDistribution] = {n: CategoricalDistribution(c) for n, c in varied.items()}
    study.add_trials(
        [
            optuna.trial.create_trial(
                value=t.loss,
                params={n: t.params.get(n) for n in varied},
                distributions=space,
            )
            for t in done
        ]
    )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        shares = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError):
        return {}
    return {name: float(share) for name, share in shares.items()}


def search_trials(card: ModelCard, digest: str) -> bytes:
    """A Bayesian search: each trial's CV loss in order with the best so far (pruned
    trials marked on the axis), and each parameter's importance to the loss."""
    fig, (history, importance) = _figure(2, width=8.0)
    done = [(t.number, t.loss) for t in card.trials if t.loss is not None]
    pruned = [t.number for t in card.trials if t.pruned]
    if done:
        history.scatter(*zip(*done, strict=True), color=_MODEL, s=16, label="trial (CV loss)")
        best, running = math.inf, []
        for number, loss in done:
            best = min(best, loss)
            running.append((number, best))
        history.step(*zip(*running, strict=True), where="post", color="#cf222e", label="best")
    if pruned:
        floor = min((loss for _n, loss in done), default=0.0)
        history.scatter(
            pruned,
            [floor] * len(pruned),
            marker="x",
            color=_PRIOR,
            s=16,
            label=f"pruned ({len(pruned)})",
        )
    history.set_xlabel("trial")
    history.set_ylabel("mean validation log loss")
    fits = sum(t.fits for t in card.trials)
    history.set_title(f"Optimisation history ({len(card.trials)} trials, {fits} fits)", fontsize=9)
    history.legend(fontsize=7)
    shares = param_importances(card)
    if not shares:
        _empty(importance, "too few finished trials for importances")
    else:
        names = sorted(shares, key=lambda n: shares[n])
        importance.barh(
            [n.replace("module__", "").replace("optimizer__", "") for n in names],
            [shares[n] for n in names],
            color=_MODEL,
        )
        importance.set_xlim(0, 1)
        importance.set_xlabel("share of loss variance (fANOVA)")
        importance.set_title("Parameter importance", fontsize=9)
    fig.suptitle("Bayesian search (Optuna TPE, median pruning)", fontsize=10)
    return _png(fig, digest)


def learning_curves(card: ModelCard, digest: str) -> bytes:
    """The winner's training and validation-tail loss per epoch, best epoch marked."""
    fig, (ax,) = _figure()
    points = card.learning_curve
    if not points:
        _empty(ax, "no learning curve in this card")
        return _png(fig, digest)
    epochs = [p.epoch for p in points]
    ax.plot(epochs, [p.train_loss for p in points], color=_MODEL, label="training loss")
    valid = [(p.epoch, p.valid_loss) for p in points if p.valid_loss is not None]
    if valid:
        ax.plot(*zip(*valid, strict=True), color="#cf222e", label="validation loss (newest rows)")
        best_epoch, best_loss = min(valid, key=lambda item: item[1])
        ax.axvline(best_epoch, color="#57606a", linestyle=":", linewidth=1)
        ax.annotate(f"best epoch {best_epoch}", (best_epoch, best_loss), fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("log loss")
    ax.set_title("Learning curves of the winner", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig, digest)


def precision_recall(card: ModelCard, digest: str) -> bytes:
    """The holdout precision-recall curve, the chosen threshold's point marked."""
    fig, (ax,) = _figure()
    if not card.pr_curve:
        _empty(ax, "no precision-recall curve in this card")
        return _png(fig, digest)
    ax.plot([p.recall for p in card.pr_curve], [p.precision for p in card.pr_curve], color=_MODEL)
    rate = card.metrics.get("positive_rate")
    if rate is not None:
        ax.axhline(rate, color=_PRIOR, linestyle="--", linewidth=1, label=f"breach rate {rate:.2f}")
    precision, recall = card.metrics.get("precision"), card.metrics.get("recall")
    if precision is not None and recall is not None:
        ax.scatter(
            [recall],
            [precision],
            color="#cf222e",
            zorder=3,
            label=f"threshold {card.threshold:.2f}: P {precision:.2f} R {recall:.2f}",
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    pr_auc = card.metrics.get("pr_auc", math.nan)
    ax.set_title(f"Precision-recall on the holdout (PR-AUC {pr_auc:.3f})", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig, digest)


def reliability(card: ModelCard, digest: str) -> bytes:
    """Observed breach rate against mean forecast per probability bin (area: rows)."""
    fig, (ax,) = _figure()
    ax.plot([0, 1], [0, 1], color=_PRIOR, linestyle="--", linewidth=1, label="calibrated")
    bins = [b for b in card.calibration if {"mean_proba", "observed_rate", "n"} <= set(b)]
    if not bins:
        _empty(ax, "no reliability table in this card")
        return _png(fig, digest)
    total = sum(b["n"] for b in bins) or 1.0
    ax.plot([b["mean_proba"] for b in bins], [b["observed_rate"] for b in bins], color=_MODEL)
    ax.scatter(
        [b["mean_proba"] for b in bins],
        [b["observed_rate"] for b in bins],
        s=[20 + 300 * b["n"] / total for b in bins],
        color=_MODEL,
        alpha=0.7,
        label="holdout bins (area: rows)",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean forecast probability")
    ax.set_ylabel("observed breach rate")
    ax.set_title(f"Reliability (ECE {card.metrics.get('ece', math.nan):.3f})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig, digest)


def confusion(card: ModelCard, digest: str) -> bytes:
    """Holdout counts at the card's threshold: rows actual, columns forecast."""
    fig, (ax,) = _figure(width=4.2)
    counts = [card.metrics.get(k) for k in ("tn", "fp", "fn", "tp")]
    if any(c is None for c in counts):
        _empty(ax, "no confusion counts in this card")
        return _png(fig, digest)
    tn, fp, fn, tp = (int(c or 0) for c in counts)
    grid = [[tn, fp], [fn, tp]]
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, tn, fp, fn, tp))
    for i in range(2):
        for j in range(2):
            value = grid[i][j]
            dark = value > 0.6 * max(1, tn, fp, fn, tp)
            ax.text(j, i, str(value), ha="center", va="center", color="w" if dark else "k")
    ax.set_xticks([0, 1], ["no breach", "breach"])
    ax.set_yticks([0, 1], ["no breach", "breach"])
    ax.set_xlabel("forecast")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion at threshold {card.threshold:.2f}", fontsize=10)
    return _png(fig, digest)


def beside_baselines(card: ModelCard, digest: str) -> bytes:
    """The model's holdout log loss, Brier and F1 beside the prior, persistence, logistic."""
    fig, axes = _figure(2, width=6.4)
    names = ["model", *[n for n in ("prior", "persistence", "logistic") if n in card.baselines]]
    colours = {"model": _MODEL, "prior": _PRIOR, "persistence": _PERSIST, "logistic": _LOGISTIC}
    scores = {"model": card.metrics, **card.baselines}
    for ax, metrics, title in (
        (axes[0], ("log_loss", "brier"), "lower is better"),
        (axes[1], ("f1",), "higher is better"),
    ):
        step = 1.0 / (len(names) + 1)
        for k, name in enumerate(names):
            values = [scores[name].get(m, math.nan) for m in metrics]
            xs = [i + k * step for i in range(len(metrics))]
            bars = ax.bar(xs, values, width=step, color=colours[name], label=name)
            ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
        ax.set_xticks(
            [i + step * (len(names) - 1) / 2 for i in range(len(metrics))],
            [m.replace("_", " ") for m in metrics],
        )
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.25)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("The model beside its baselines on the holdout", fontsize=10)
    return _png(fig, digest)


#: Plot kind -> what draws it (the kinds of `kernel.model_report.PLOT_TITLES`).
DRAW: Final[dict[str, Callable[[ModelCard, str], bytes]]] = {
    "plot_search": search_landscape,
    "plot_learning": learning_curves,
    "plot_pr": precision_recall,
    "plot_reliability": reliability,
    "plot_confusion": confusion,
    "plot_baselines": beside_baselines,
}


def render_plots(card: ModelCard, digest: str) -> dict[str, bytes]:
    """Every plot of the card's report, by report kind, as PNG bytes."""
    return {kind: DRAW[kind](card, digest) for kind in PLOT_KINDS}
