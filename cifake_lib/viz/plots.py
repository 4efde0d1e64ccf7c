"""Figures for notebooks, reports and the CLI. Each function returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure`, not pyplot: importing this module
changes no backend, nothing is shown or kept in pyplot's registry (so a notebook cell that
returns one displays it once, and loops do not leak memory). Every function also takes
`ax=` to draw into an existing Axes (e.g. a grid of panels) and then returns its Figure.
`save_figure` writes PNG (or PDF/SVG by suffix) atomically.

Labels: 1 = FAKE (the positive class), 0 = REAL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cifake_lib import LABEL_NAMES
from cifake_lib.core.files import atomic_write
from cifake_lib.core.formatting import format_metric, metric_label
from cifake_lib.evaluation.metrics import (
    ECE_BINS,
    _check_inputs,
    compute_metrics,
    expected_calibration_error,
    reliability_bins,
)

COLORS = {0: "tab:blue", 1: "tab:red"}  # REAL, FAKE
Curves = Mapping[str, tuple[Any, Any]]  # {name: (labels, p_fake)}


def _axes(ax: Axes | None, figsize: tuple[float, float] = (5.5, 4.5)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _checked_curves(curves: Curves) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not curves:
        raise ValueError("no curves to plot: pass {name: (labels, p_fake)}")
    out = []
    for name, pair in curves.items():
        try:
            y, p, _ = _check_inputs(*pair)
        except (TypeError, ValueError) as e:
            raise ValueError(f"curve {name!r}: {e}") from None
        if y.min() == y.max():
            raise ValueError(f"curve {name!r}: needs both REAL and FAKE examples")
        out.append((str(name), y, p))
    return out


def roc_figure(curves: Curves, *, title: str = "ROC curve", ax: Axes | None = None) -> Figure:
    """ROC curves of one or several detectors on one axes, AUC in the legend, chance diagonal.

    Lines: one per curve, then the diagonal.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _axes(ax)
    for name, y, p in _checked_curves(curves):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {format_metric(roc_auc_score(y, p), digits=3)})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate (REAL called FAKE)", ylabel="true positive rate (FAKE caught)",
           xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def pr_figure(curves: Curves, *, title: str = "Precision-recall curve (FAKE positive)",
              ax: Axes | None = None) -> Figure:
    """Precision-recall curves, average precision in the legend. Lines: one per curve."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = _axes(ax)
    for name, y, p in _checked_curves(curves):
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, drawstyle="steps-post",
                label=f"{name} (AP {format_metric(average_precision_score(y, p), digits=3)})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def confusion_figure(metrics: Mapping[str, Any] | None = None, *, labels: Any = None, preds: Any = None,
                     title: str | None = None, ax: Axes | None = None) -> Figure:
    """Confusion matrix from a metrics dict ("confusion" [[tn, fp], [fn, tp]]) or labels + 0/1 preds.

    Cells show the count and the share of their true class; colour is that share.
    """
    if (metrics is None) == (labels is None or preds is None):
        raise ValueError("confusion_figure: pass either a metrics dict or both labels and preds")
    if metrics is not None:
        if "confusion" not in metrics:
            raise ValueError("confusion_figure: metrics dict has no 'confusion' field")
        cm = np.asarray(metrics["confusion"], dtype=np.int64)
        if title is None and "threshold" in metrics:
            title = f"Confusion at threshold {metrics['threshold']:.3f}"
    else:
        y, pred, _ = _check_inputs(labels, preds)  # 0/1 preds pass the [0, 1] check
        if not np.isin(pred, (0, 1)).all():
            raise ValueError("confusion_figure: preds must be 0 (REAL) or 1 (FAKE)")
        cm = np.bincount(2 * y + pred.astype(np.int64), minlength=4).reshape(2, 2)
    if cm.shape != (2, 2):
        raise ValueError(f"confusion_figure: confusion must be 2x2, got shape {cm.shape}")
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = _axes(ax, (4.2, 3.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]:,}\n{format_metric(share[i, j], percent=True, digits=3)}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks([0, 1], LABEL_NAMES)
    ax.set_yticks([0, 1], LABEL_NAMES)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    return fig


def histogram_figure(labels: Any, p_fake: Any, *, threshold: float | None = 0.5, bins: int = 50,
                     log: bool = False, title: str = "p_fake by true label", ax: Axes | None = None) -> Figure:
    """Histograms of p_fake for REAL and FAKE images (2 patches), the threshold as a vertical line."""
    y, p, _ = _check_inputs(labels, p_fake)
    fig, ax = _axes(ax, (7.5, 4))
    edges = np.linspace(0, 1, bins + 1)
    for label in (0, 1):
        ax.hist(p[y == label], bins=edges, histtype="stepfilled", alpha=0.5, color=COLORS[label],
                label=f"{LABEL_NAMES[label]} (n={int((y == label).sum()):,})", log=log)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="p_fake (score for FAKE)", ylabel="images", xlim=(0, 1), title=title)
    # Outside the axes: inside, it would sit on the bars of one class or the other.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize="small")
    return fig


def reliability_figure(labels: Any, p_fake: Any, *, p_calibrated: Any = None, n_bins: int = ECE_BINS,
                       calibrated_label: str = "after temperature scaling", title: str = "Reliability",
                       ax: Axes | None = None) -> Figure:
    """Reliability diagram: top-label accuracy against confidence per bin (as ECE counts them).

    Lines: the diagonal, the scores, and `p_calibrated` (e.g. apply_temperature output) when
    given. The title carries ECE (before -> after).
    """
    fig, ax = _axes(ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    series = [("scores", p_fake)] + ([(calibrated_label, p_calibrated)] if p_calibrated is not None else [])
    eces = []
    for name, p in series:
        bins = reliability_bins(labels, p, n_bins)
        full = bins["count"] > 0
        ece = expected_calibration_error(labels, p, n_bins)
        eces.append(ece)
        ax.plot(bins["confidence"][full], bins["accuracy"][full], marker="o", label=f"{name} (ECE {format_metric(ece, digits=3)})")
    ax.set(xlabel="confidence of the predicted label", ylabel="accuracy", xlim=(0.45, 1.0), ylim=(0, 1.02),
           title=f"{title} (ECE {' → '.join(format_metric(e, digits=3) for e in eces)}, {n_bins} bins)")
    ax.legend(loc="best", fontsize="small")  # wherever it covers the fewest points
    return fig


def _lookup(row: Mapping[str, Any], key: str) -> Any:
    """row["a.b"] -> row["a"]["b"]: lets compare_bar use e.g. "natural_threshold.accuracy"."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _approximate(value: str) -> float:
    """A published figure given only approximately ("≈95%", "≈0.95") -> its number, to place a marker."""
    text = value.strip().lstrip("≈~").strip()
    number = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"published anchor {value!r}: not a fraction or a percentage")
    return number


def _anchor_rows(published: Mapping[str, Any]) -> list[tuple[str, float, float, str | None]]:
    """Published anchors as (label, low, high, text); a single value has low == high.

    `published` is e.g. `evaluation.published.published_anchors` ({"NAME (Authors Year)": value}).
    A value may be a number, a (low, high) range, or the text of a figure published only
    approximately ("≈95%": drawn hollow, labelled with that text, never as a precise number); a
    pair of labels "NAME, low" / "NAME, high" (a range given as two numbers) becomes one range
    row "NAME". `text` is None for exact figures.
    """
    rows: dict[str, list[float]] = {}
    texts: dict[str, str] = {}
    for label, value in published.items():
        if isinstance(value, str):
            rows[str(label)] = [_approximate(value)]
            texts[str(label)] = value
            continue
        if isinstance(value, (tuple, list)):
            rows[str(label)] = [float(value[0]), float(value[1])]
            continue
        base, _, end = str(label).rpartition(", ")
        key = base if base and end in ("low", "high") else str(label)
        rows.setdefault(key, []).append(float(value))
    return [(label, min(v), max(v), texts.get(label)) for label, v in rows.items()]


def anchored_title(title: str, published: Mapping[str, Any] | None, *, context_only: bool = False) -> str:
    """`title`, then how published results are drawn, or that none reports this metric (so a
    reader does not look for diamonds that are not there). `context_only`: our numbers check the
    pipeline (a tiny random model, a subset), so the published ones are not a comparison."""
    if not published:
        return f"{title}; no published result for this metric"
    return f"{title}; published results as diamonds" + (": context only" if context_only else "")


def compare_bar(rows: Sequence[Mapping[str, Any]], metric: str = "roc_auc", *,
                published: Mapping[str, Any] | None = None, title: str | None = None,
                ax: Axes | None = None, context_only: bool = False) -> Figure:
    """Horizontal bars of `metric` for each row (metrics dicts with a "name"), 95% CI whiskers.

    Every bar is labelled with its value (right of its whisker; "n/a" when missing). The CI
    comes from `<metric>_ci95` when the row has it. `published` anchors ({label: value or
    (low, high)}) get rows of their own below ours, as diamonds (a range: a line between two
    diamonds) labelled "(published)", never bars, so nothing covers a bar; a figure published
    only approximately ("≈95%") is a hollow diamond labelled with its text. `context_only`: the
    legend says the published results are context, not a comparison (our numbers check the
    pipeline). The legend sits outside the axes. Patches: one bar per row.
    """
    if not rows:
        raise ValueError("compare_bar: no rows")
    names = [str(r.get("name") or r.get("detector") or f"row {i}") for i, r in enumerate(rows)]
    values = [_lookup(r, metric) for r in rows]
    anchors = _anchor_rows(published or {})
    percent = metric_label(metric).startswith("Accuracy")
    own_figure = ax is None
    fig, ax = _axes(ax, (8.5, 0.4 * (len(rows) + len(anchors)) + 2.1))
    ypos = np.arange(len(rows))
    heights = [v if v is not None else 0.0 for v in values]
    handles = [ax.barh(ypos, heights, color="tab:blue", alpha=0.8, label="ours (bar), 95% CI (whisker)")]
    ends = []
    for i, r in enumerate(rows):
        ci = _lookup(r, f"{metric}_ci95")
        has_ci = values[i] is not None and isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci
        if has_ci:
            ax.errorbar(values[i], i, xerr=[[values[i] - ci[0]], [ci[1] - values[i]]], fmt="none",
                        ecolor="black", capsize=3)
        ends.append(max(heights[i], float(ci[1])) if has_ci else heights[i])
    ay = len(rows) + 0.5 + np.arange(len(anchors))  # half a row of space between ours and theirs
    whose = "published (not ours; context only)" if context_only else "published (not ours)"
    for k, (_, lo, hi, approx) in enumerate(anchors):
        line = ax.plot([lo, hi], [ay[k], ay[k]], color="tab:orange", marker="D", markersize=6, linewidth=2,
                       markerfacecolor="white" if approx else "tab:orange",
                       label=f"{whose}, approximate" if approx else whose)[0]
        if line.get_label() not in [h.get_label() for h in handles]:
            handles.append(line)
        ends.append(hi)
    top = max([1.0] + ends)
    for i, end in enumerate(ends[:len(rows)]):
        text = format_metric(values[i], percent=percent) if values[i] is not None else "n/a"
        ax.text(end + 0.02 * top, ypos[i], text, va="center", fontsize="small")
    for k, (_, lo, hi, approx) in enumerate(anchors):
        text = approx or (format_metric(lo, percent=percent)
                          + ("" if hi == lo else f"–{format_metric(hi, percent=percent)}"))
        ax.text(hi + 0.03 * top, ay[k], text, va="center", fontsize="small", color="tab:orange")
    ax.set_yticks(list(ypos) + list(ay), names + [f"{label} (published)" for label, *_ in anchors])
    for tick in ax.get_yticklabels()[len(rows):]:
        tick.set_color("tab:orange")
    if anchors:
        ax.axhline(len(rows) - 0.25, color="grey", linewidth=0.6)
    ax.invert_yaxis()  # first row on top
    # Room on the right for the value labels, inside the axes: nothing is drawn over them.
    ax.set_xlim(0, top * 1.25)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= top + 1e-9])
    ax.set(xlabel=metric_label(metric), title=title or f"{metric_label(metric)} (95% CI)")
    if percent:
        from matplotlib.ticker import PercentFormatter

        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if own_figure:  # below the axes, across the figure: the bars keep the width
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    else:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize="small")
    return fig


ANCHOR_COLUMNS = {"accuracy": "accuracy", "natural_threshold.accuracy": "acc@0.5", "roc_auc": "roc_auc"}


def anchor_figure(ours: Mapping[str, Mapping[str, Any]], metric: str = "accuracy", *, context_only: bool = False,
                  title: str | None = None) -> Figure:
    """Ours ({name: metrics dict}, as `published.anchor_table` takes them) as bars of `metric` (accuracy
    at the validation threshold, "natural_threshold.accuracy" for `acc@0.5`, or "roc_auc"), with every
    published result that anchor_table sets in that column: the figure shows the table's rows."""
    from cifake_lib.evaluation.published import anchors_beside

    if metric not in ANCHOR_COLUMNS:
        raise ValueError(f"anchor_figure: metric must be one of {', '.join(ANCHOR_COLUMNS)}, got {metric!r}")
    anchors = anchors_beside(ANCHOR_COLUMNS[metric])
    rows = [{**m, "name": name.removesuffix(" (ours)")} for name, m in ours.items()]  # the legend says whose
    return compare_bar(rows, metric, published=anchors, context_only=context_only,
                       title=title or anchored_title(f"{metric_label(metric)}, test split (95% CI)", anchors,
                                                     context_only=context_only))


def metrics_figure(labels: Any, p_fake: Any, *, threshold: float = 0.5, name: str = "detector") -> Figure:
    """One overview panel for a single detector: ROC, histogram, confusion at `threshold`, reliability."""
    fig = Figure(figsize=(11, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    roc_figure({name: (labels, p_fake)}, ax=axes[0, 0])
    histogram_figure(labels, p_fake, threshold=threshold, ax=axes[0, 1])
    confusion_figure(compute_metrics(labels, p_fake, threshold=threshold, n_boot=0), ax=axes[1, 0])
    reliability_figure(labels, p_fake, ax=axes[1, 1])
    fig.suptitle(name)
    return fig


def _renderer(fig: Figure) -> Any:
    """Lay the figure out and return a renderer to measure its artists with."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _titles(fig: Figure) -> list[tuple[Any, float]]:
    """(title Text, width in pixels it may take): the suptitle and every axes' titles."""
    out = []
    if fig._suptitle is not None:  # noqa: SLF001  (matplotlib keeps it here; there is no getter)
        out.append((fig._suptitle, 0.96 * fig.bbox.width))  # noqa: SLF001
    for ax in fig.axes:
        box = ax.get_window_extent()
        # A centred title over axes pushed right by long tick labels meets the figure's edge
        # before it is as wide as the figure: its room is twice the distance to the nearer edge.
        centre = (box.x0 + box.x1) / 2
        to_edge = 2 * min(centre - fig.bbox.x0, fig.bbox.x1 - centre) * 0.98
        room = max(min(box.width * 1.15, to_edge), 40.0)
        for t in (ax.title, ax._left_title, ax._right_title):  # noqa: SLF001
            out.append((t, min(room, 0.96 * fig.bbox.width)))
    return out


def fit_text(fig: Figure, rounds: int = 3) -> Figure:
    """Wrap every title wider than its room (the figure for the suptitle, its axes otherwise).

    Constrained layout keeps labels, tick labels and legends inside the figure but not a title
    wider than the figure itself, which a saved PNG would cut at both edges.
    """
    import textwrap

    for _ in range(rounds):
        renderer, changed = _renderer(fig), False
        for t, room in _titles(fig):
            text = t.get_text()
            width = t.get_window_extent(renderer).width if text else 0.0
            if width <= room:
                continue
            longest = max(len(line) for line in text.splitlines())
            chars = max(12, int(longest * room / width) - 1)
            t.set_text("\n".join(textwrap.fill(line, chars) for line in text.splitlines()))
            changed = True
        if not changed:
            break
    return fig


def _legend_clashes(ax: Axes, legend: Any, renderer: Any) -> list[str]:
    box = legend.get_window_extent(renderer)
    out = []
    for patch in ax.patches:  # bars, histogram fills
        if not patch.get_visible():
            continue
        path = patch.get_path().transformed(patch.get_transform())
        if path.intersects_bbox(box, filled=True):
            out.append(f"legend of {ax.get_title()!r} covers a bar")
            break
    for text in ax.texts:  # value labels
        if text.get_visible() and text.get_text() and box.overlaps(text.get_window_extent(renderer)):
            out.append(f"legend of {ax.get_title()!r} covers the label {text.get_text()!r}")
    return out


def _outside(box: Any, bounds: Any, tolerance: float) -> bool:
    return (box.x0 < bounds.x0 - tolerance or box.y0 < bounds.y0 - tolerance
            or box.x1 > bounds.x1 + tolerance or box.y1 > bounds.y1 + tolerance)


def layout_problems(fig: Figure, tolerance: float = 1.0) -> list[str]:
    """Text cut at the figure's edges, and legends that cover a bar or a value label; [] when clean.

    Every drawn text (titles, labels, tick labels, annotations, legends) must lie inside the
    figure, within `tolerance` pixels. An axes' drawn texts are measured through its tight
    box, which counts only the tick labels actually drawn.
    """
    renderer = _renderer(fig)
    bounds, out = fig.bbox, []
    texts = [t for t in fig.texts if t.get_visible() and t.get_text().strip()]
    if fig._suptitle is not None and fig._suptitle.get_text():  # noqa: SLF001
        texts.append(fig._suptitle)  # noqa: SLF001
    for t in texts:
        if _outside(t.get_window_extent(renderer), bounds, tolerance):
            out.append(f"text {t.get_text()[:60]!r} extends beyond the figure")
    for legend in fig.legends:
        if _outside(legend.get_window_extent(renderer), bounds, tolerance):
            out.append("a figure legend extends beyond the figure")
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        box = ax.get_tightbbox(renderer)
        if box is not None and _outside(box, bounds, tolerance):
            parts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
            culprits = [repr(t.get_text()[:60]) for t in parts if t.get_visible() and t.get_text().strip()
                        and _outside(t.get_window_extent(renderer), bounds, tolerance)]
            out.append(f"axes {ax.get_title()[:40]!r}: " + (", ".join(culprits) if culprits else
                                                             "its tick labels or legend") + " extend beyond the figure")
        if ax.get_legend() is not None:
            out += _legend_clashes(ax, ax.get_legend(), renderer)
    return out


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write `fig` atomically, long titles wrapped and every text inside the image (`fit_text`).

    The format follows the suffix (.png, .pdf, .svg; default png).
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    fit_text(fig)
    # "tight" is a safety net for text placed by hand outside the layout's reach.
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                                                      pad_inches=0.05))
