"""The figures and tables of a run folder: ROC, precision-recall, confusion, p_fake histogram and
reliability from a detector's scores (shared by the zero-shot, probe and fine-tuning stages), and
`table`, which notebooks display."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cifake_lib.core.files import read_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cifake_lib.data.load import Split


FIGURES = ("roc", "pr", "confusion", "histogram", "reliability")


def run_figures(labels: np.ndarray, p_fake: np.ndarray, metrics: Mapping[str, Any], *,
                val_labels: np.ndarray | None = None, p_val: np.ndarray | None = None,
                name: str = "detector") -> dict[str, Figure]:
    """The five figures of a run, {key: Figure} in FIGURES order (a figure that cannot be drawn,
    e.g. ROC on a one-class subset, is left out with a warning).

    roc, pr; confusion and histogram at the run's threshold (metrics["threshold"], from val);
    reliability, with the scores after temperature scaling fitted on validation when given.
    """
    import warnings

    from cifake_lib.evaluation.metrics import apply_temperature, fit_temperature
    from cifake_lib.viz import plots

    y, p = np.asarray(labels), np.asarray(p_fake, dtype=np.float64)
    threshold = float(metrics.get("threshold", 0.5))
    p_cal = None
    if val_labels is not None and p_val is not None and len(np.unique(val_labels)) == 2:
        p_cal = apply_temperature(p, fit_temperature(val_labels, p_val))
    makers = {
        "roc": lambda: plots.roc_figure({name: (y, p)}, title=f"ROC — {name} (test)"),
        "pr": lambda: plots.pr_figure({name: (y, p)}, title=f"Precision-recall — {name} (test)"),
        "confusion": lambda: plots.confusion_figure(metrics, title=f"{name}: threshold {threshold:.3f} (from val)"),
        "histogram": lambda: plots.histogram_figure(y, p, threshold=threshold, title=f"p_fake — {name} (test)"),
        "reliability": lambda: plots.reliability_figure(y, p, p_calibrated=p_cal, title=f"Reliability — {name}"),
    }
    figs: dict[str, Figure] = {}
    for key in FIGURES:
        try:
            figs[key] = makers[key]()
        except ValueError as e:
            warnings.warn(f"{name}: no {key} figure ({e})", stacklevel=2)
    return figs


def figures_from_run(run_dir: str | os.PathLike, name: str | None = None) -> dict[str, Figure]:
    """`run_figures` for a run folder, from its predictions.csv, predictions_val.csv and metrics.json."""
    from cifake_lib.evaluation.runs import read_run

    run = read_run(run_dir)
    test, val = run["predictions"], run["predictions_val"]
    if test is None:
        raise FileNotFoundError(f"{run['path']}: no predictions.csv")
    return run_figures(test["label"], test["p_fake"], run["metrics"],
                       val_labels=val["label"] if val is not None else None,
                       p_val=val["p_fake"] if val is not None else None,
                       name=name or run["metrics"].get("detector") or run["path"].name)


def save_run_figures(out_dir: str | os.PathLike, *, test: Split, p_test: np.ndarray, metrics: Mapping[str, Any],
                     val: Split | None = None, p_val: np.ndarray | None = None,
                     name: str = "detector") -> list[Path]:
    """Write roc.png, pr.png, confusion.png, histogram.png, reliability.png into `out_dir`."""
    from cifake_lib.viz import plots

    figs = run_figures(test.labels, p_test, metrics, val_labels=val.labels if val is not None else None,
                       p_val=p_val, name=name)
    return [plots.save_figure(fig, Path(out_dir) / f"{key}.png") for key, fig in figs.items()]


class TextTable(str):
    """A plain-text table that notebooks display as itself (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, digits: int = 4):
    """Rows as a pandas DataFrame when pandas is installed, else as a plain-text table (str).

    For notebooks: `display(table(rows))` either way.
    """
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    data = [[r.get(c) for c in columns] for r in rows]
    try:
        import pandas  # noqa: F401  (the DataFrame below needs it)
    except ImportError:
        def fmt(v: Any) -> str:
            return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

        cells = [columns] + [[fmt(v) for v in row] for row in data]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        return TextTable("\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True))
                                   for row in cells))
    return _full_text_frame()(data, columns=columns).round(digits)


@functools.cache
def _full_text_frame() -> type:
    """A DataFrame that shows every cell's whole text (pandas cuts cells at 50 characters)."""
    import pandas as pd

    class FullTextFrame(pd.DataFrame):
        @property
        def _constructor(self):
            return FullTextFrame

        def _repr_html_(self) -> str | None:
            with pd.option_context("display.max_colwidth", None):
                return super()._repr_html_()

        def __repr__(self) -> str:
            with pd.option_context("display.max_colwidth", None):
                return super().__repr__()

    return FullTextFrame


def training_curves_figure(history: Sequence[Mapping[str, Any]] | Mapping[str, Any] | str | os.PathLike,
                           *, title: str = "Fine-tuning") -> Figure:
    """Loss (train, val) and accuracy (train, val) plus val AUC against optimizer steps."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, (str, os.PathLike)):
        path = Path(history)
        history = read_json(path / "history.json" if path.is_dir() else path)
    if isinstance(history, Mapping):
        history = history["records"]
    tr = [r for r in history if r.get("kind") == "train"]
    va = [r for r in history if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    # The training objective (FLYP's contrastive loss over the batch's captions, or a CE) and the
    # validation loss (the two-way head's cross-entropy) are different quantities on different
    # scales: each gets its own y axis.
    ax_val = ax_loss.twinx() if va else None
    lines = []
    if tr:
        lines += ax_loss.plot([r["step"] for r in tr], [r["loss"] for r in tr], color="C0", label="train loss (left)")
        acc = [(r["step"], r["train_accuracy"]) for r in tr if r.get("train_accuracy") is not None]
        if acc:  # FLYP's contrastive batches have no REAL/FAKE decision to count
            ax_acc.plot(*zip(*acc, strict=True), color="C0", label="train accuracy")
    if va:
        steps = [r["step"] for r in va]
        lines += ax_val.plot(steps, [r["val_loss"] for r in va], "o-", color="C1",
                             label="val loss, 2-way cross-entropy (right)")
        ax_val.set_ylabel("validation cross-entropy", color="C1")
        ax_acc.plot(steps, [r["val_accuracy"] for r in va], "o-", color="C1", label="val accuracy (0.5)")
        ax_acc.plot(steps, [r["val_auc"] for r in va], "s--", color="C2", label="val ROC AUC")
        best = [r for r in va if r.get("best")]
        if best:
            ax_acc.axvline(best[-1]["step"], color="grey", linestyle=":", label=f"best (step {best[-1]['step']})")
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title=f"{title}: loss")
    ax_acc.set(xlabel="optimizer step", ylabel="score", ylim=(0, 1.02), title=f"{title}: accuracy / AUC")
    for ax in (ax_loss, ax_acc):  # steps are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if lines:
        ax_loss.legend(lines, [line.get_label() for line in lines], loc="lower left", fontsize="small")  # clear of both falling curves
    if ax_acc.has_data():
        ax_acc.legend(fontsize="small")
    return fig


__all__ = ["FIGURES", "TextTable", "figures_from_run", "run_figures", "save_run_figures", "table", "training_curves_figure"]
