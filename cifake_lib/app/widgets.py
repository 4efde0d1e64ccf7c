"""The interactive explorer (ipywidgets 7.7, as on Colab, and 8).

Two panes:
- Upload: one or more images; each loaded detector gives its p_fake, its decision at its own
  threshold and a saliency overlay.
- Browse: a run's test predictions filtered by true label, CIFAR class and right/wrong, most
  confident first, with the images when the test split is loaded.

The widgets only call plain functions, which the tests call directly, without a browser:
`uploaded_files(value)` (the one place where ipywidgets 7 and 8 differ: FileUpload.value is
{name: {"metadata": ..., "content": bytes}} in 7 and a tuple of {"name", "content"
(memoryview), ...} dicts in 8), `decode_image`, `score_uploads`, `filter_predictions` and
`prediction_rows`, `empty_filter_text`. `Explorer.on_upload` / `Explorer.on_filter` are the callbacks.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cifake_lib import CIFAR_CLASSES, LABEL_NAMES
from cifake_lib.core.formatting import format_metric
from cifake_lib.methods.predict import REDUCE_ABOVE, REDUCE_TO

TAB_TITLES = ("Upload", "Browse")


# --------------------------------------------------------------------------- plain functions

def uploaded_files(value: Any) -> list[tuple[str, bytes]]:
    """FileUpload.value of ipywidgets 7 or 8 -> [(file name, bytes)], in upload order.

    7: {name: {"metadata": {...}, "content": bytes}}; 8: tuple/list of {"name": ..., "content":
    memoryview | bytes, ...}. None or empty -> [].
    """
    if not value:
        return []
    out = []
    if isinstance(value, Mapping):  # ipywidgets 7
        items = [(name, entry) for name, entry in value.items()]
        for name, entry in items:
            content = entry.get("content") if isinstance(entry, Mapping) else entry
            meta = entry.get("metadata", {}) if isinstance(entry, Mapping) else {}
            out.append((str(meta.get("name") or name), bytes(content)))
        return out
    if isinstance(value, (list, tuple)):  # ipywidgets 8
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping) or "content" not in entry:
                raise ValueError(f"upload entry {i}: expected a dict with 'content', got {type(entry).__name__}")
            out.append((str(entry.get("name") or f"upload {i + 1}"), bytes(entry["content"])))
        return out
    raise TypeError(f"unrecognised FileUpload value of type {type(value).__name__}")


def decode_image(name: str, content: bytes) -> np.ndarray:
    """Bytes of an uploaded image -> (H, W, 3) uint8, as `cifake predict` reads a file: the data
    loader's decoder (`data.decode`, with the decompression-bomb guard; alpha on white) and
    predict's reduction of very large images. Raises ValueError (an `ImageDecodeError`) naming it."""
    from cifake_lib.data.decode import decode_image as decode

    return decode(content, name, reduce_above=REDUCE_ABOVE, reduce_to=REDUCE_TO)


def score_uploads(detectors: Mapping[str, Any], files: Sequence[tuple[str, bytes]], *,
                  saliency: bool = False, method: str | None = None) -> list[dict[str, Any]]:
    """One row per (file, detector): p_fake, decision at the detector's threshold, optional saliency.

    Rows: file, detector, p_fake, label ("FAKE"/"REAL"), threshold, height, width, image,
    saliency (an (H, W) map or None), error (None, or why the file/detector failed). A bad file
    gives one error row and does not stop the others.
    """
    rows: list[dict[str, Any]] = []
    for name, content in files:
        try:
            image = decode_image(name, content)
        except ValueError as e:
            rows.append({"file": name, "detector": None, "p_fake": None, "label": None, "threshold": None,
                         "height": None, "width": None, "image": None, "saliency": None, "error": str(e)})
            continue
        for det_name, det in detectors.items():
            row = {"file": name, "detector": det_name, "threshold": float(det.threshold),
                   "height": image.shape[0], "width": image.shape[1], "image": image, "saliency": None,
                   "error": None}
            try:
                p = float(np.asarray(det.predict_proba(image[None]))[0])
                row.update(p_fake=p, label=LABEL_NAMES[int(p >= det.threshold)])
                if saliency:
                    from cifake_lib.analysis import explain

                    m = method if method in explain.methods_for(det) else None
                    row["saliency"] = explain.saliency(det, image, m)
            except Exception as e:  # one failing detector must not hide the others' answers
                row.update(p_fake=row.get("p_fake"), label=row.get("label"), error=f"{type(e).__name__}: {e}")
            rows.append(row)
    return rows


def _label_value(label: Any) -> int | None:
    if label is None or label == "all":
        return None
    if isinstance(label, str):
        if label.upper() not in LABEL_NAMES:
            raise ValueError(f"label must be REAL, FAKE, 0, 1 or None, got {label!r}")
        return LABEL_NAMES.index(label.upper())
    if int(label) not in (0, 1):
        raise ValueError(f"label must be REAL, FAKE, 0, 1 or None, got {label!r}")
    return int(label)


def _class_value(cifar_class: Any) -> int | None:
    if cifar_class is None or cifar_class == "all":
        return None
    if isinstance(cifar_class, str):
        if cifar_class not in CIFAR_CLASSES:
            raise ValueError(f"cifar_class must be one of {CIFAR_CLASSES}, an index or None, got {cifar_class!r}")
        return CIFAR_CLASSES.index(cifar_class)
    return int(cifar_class)


def filter_predictions(preds: Mapping[str, np.ndarray], *, label: Any = None, cifar_class: Any = None,
                       correct: bool | None = None, threshold: float = 0.5) -> np.ndarray:
    """Indices of predictions.csv rows (read_predictions dict) matching every given filter.

    label: "REAL"/"FAKE"/0/1; cifar_class: a name or 0..9; correct: True (right at `threshold`)
    or False (wrong); None means any. Ordered most confident first (distance of p_fake from
    the threshold), ties in file order.
    """
    y, p, c = np.asarray(preds["label"]), np.asarray(preds["p_fake"], dtype=np.float64), np.asarray(preds["cifar_class"])
    keep = np.ones(len(y), bool)
    lv, cv = _label_value(label), _class_value(cifar_class)
    if lv is not None:
        keep &= y == lv
    if cv is not None:
        keep &= c == cv
    if correct is not None:
        right = (p >= threshold).astype(np.int64) == y
        keep &= right if correct else ~right
    idx = np.flatnonzero(keep)
    return idx[np.argsort(-np.abs(p[idx] - threshold), kind="stable")]


def prediction_rows(preds: Mapping[str, np.ndarray], index: Sequence[int], threshold: float) -> list[dict[str, Any]]:
    """Display rows for the given prediction indices: id, label, class, p_fake, decision, right."""
    rows = []
    for i in index:
        y, p, c = int(preds["label"][i]), float(preds["p_fake"][i]), int(preds["cifar_class"][i])
        pred = int(p >= threshold)
        rows.append({"index": int(i), "id": str(preds["id"][i]), "label": LABEL_NAMES[y],
                     "cifar_class": CIFAR_CLASSES[c] if 0 <= c < len(CIFAR_CLASSES) else "unknown",
                     "p_fake": p, "predicted": LABEL_NAMES[pred], "correct": pred == y})
    return rows


# --------------------------------------------------------------------------- rendering (HTML)

def png_data_uri(image: np.ndarray, scale: int = 1) -> str:
    """An (H, W, 3) uint8 image as a data: URI (nearest-neighbour enlarged by `scale`)."""
    from PIL import Image

    from cifake_lib.viz.gallery import upsample_nearest

    buf = io.BytesIO()
    Image.fromarray(upsample_nearest(np.asarray(image, dtype=np.uint8), scale)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _scale_for(image: np.ndarray, target: int = 128) -> int:
    return max(1, target // max(image.shape[:2]))


# Explicit styles on every table element: ipywidgets 7 (classic notebook, Colab) gives an HTML
# widget's tables no padding at all, so cells ran together ("p_fakedecision"); 8 (JupyterLab)
# pads them. The same inline styles read the same in both.
TABLE = "border-collapse:collapse;margin:4px 0;font-size:13px"
TH = "padding:4px 12px;text-align:left;border-bottom:2px solid #888;white-space:nowrap"
TD = "padding:4px 12px;text-align:left;vertical-align:middle;border-bottom:1px solid #ddd"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table with explicit padding; cells are HTML already (escape text before)."""
    head = "".join(f"<th style='{TH}'>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else f"<td style='{TD}'>{cell}</td>"
                                    for cell in row) + "</tr>" for row in rows)
    return f"<table style='{TABLE}'><tr>{head}</tr>{body}</table>"


def colour_scale_html(cmap: str = "jet", width: int = 160) -> str:
    """The saliency colour scale: a strip from low to high, as the overlays use it."""
    from matplotlib import colormaps

    strip = (colormaps[cmap](np.linspace(0, 1, width))[None, :, :3] * 255).astype(np.uint8).repeat(12, axis=0)
    return (f"<div style='margin:6px 0;font-size:12px'>saliency (each map scaled to its own range): "
            f"low <img src='{png_data_uri(strip)}' width={width} height=12 style='vertical-align:middle'> high"
            "</div>")


def _saliency_cell(r: Mapping[str, Any], scale: int) -> str:
    from cifake_lib.analysis.explain import BLANK_MAP_TEXT, is_blank, overlay

    if r.get("saliency") is None:
        return html.escape(r["error"]) if r.get("error") else "–"
    if is_blank(r["saliency"]):  # a flat colour square would look like an answer; it is not one
        return f"<i>{BLANK_MAP_TEXT}</i>"
    return f"<img src='{png_data_uri(overlay(r['image'], r['saliency']), scale)}' width=128>"


def uploads_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """A table: file, detector, p_fake, decision at the detector's threshold, image, saliency overlay."""
    if not rows:
        return "<p>No images uploaded yet.</p>"
    body = []
    for r in rows:
        file, det = html.escape(str(r["file"])), html.escape(str(r.get("detector") or ""))
        if r.get("image") is None or r.get("p_fake") is None:
            body.append([file, det, f"<td style='{TD};color:#b00' colspan='4'>{html.escape(str(r['error']))}</td>"])
            continue
        scale = _scale_for(r["image"])
        body.append([file, det, format_metric(r["p_fake"]),
                     f"<b>{r['label']}</b><br><span style='color:#666'>threshold {r['threshold']:.3f}</span>",
                     f"<img src='{png_data_uri(r['image'], scale)}' width=128>", _saliency_cell(r, scale)])
    from cifake_lib.analysis.explain import is_blank

    drawn = any(r.get("saliency") is not None and not is_blank(r["saliency"]) for r in rows if r.get("image") is not None)
    legend = colour_scale_html() if drawn else ""
    return _table(["file", "detector", "p_fake", "decision", "image", "saliency"], body) + legend


FILTER_NAMES = {"label": "label", "cifar_class": "class", "correct": "decision"}


def _filter_words(filters: Mapping[str, Any]) -> str:
    return ", ".join(f"{FILTER_NAMES[k]} {v}" for k, v in filters.items())


def empty_filter_text(preds: Mapping[str, np.ndarray], filters: Mapping[str, Any], threshold: float) -> str:
    """Why no prediction matches `filters` ({"label": "FAKE", "cifar_class": "cat", "correct": "wrong"},
    "all" for none) and what to change: how many would match with each filter set back to "all"."""
    active = {k: v for k, v in filters.items() if v not in (None, "all")}
    if not len(preds["label"]):
        return "This run has no test predictions."
    if not active:
        return "No test prediction to show."

    def count(f: Mapping[str, Any]) -> int:
        return len(filter_predictions(preds, label=f.get("label"), cifar_class=f.get("cifar_class"),
                                      correct={"right": True, "wrong": False}.get(f.get("correct")),
                                      threshold=threshold))

    hints = [f"with {FILTER_NAMES[k]} “all”: {count({**active, k: 'all'}):,}" for k in active]
    return (f"No test prediction of this run has {_filter_words(active)} (decisions at its threshold "
            f"{threshold:.4f}). Set a filter back to “all” to see more: " + "; ".join(hints) + ".")


def threshold_text(threshold: float) -> str:
    """How the Browse pane's decisions are made: at the run's own threshold, not at 0.5."""
    return (f"Decisions at this run's threshold {threshold:.4f} (chosen on validation): p_fake ≥ {threshold:.4f} "
            "→ FAKE, below → REAL.")


def browse_html(rows: Sequence[Mapping[str, Any]], images: Sequence[np.ndarray | None] | None = None,
                total: int | None = None, *, threshold: float | None = None, empty: str = "") -> str:
    """A table of prediction rows, with each image (or "–" when it is not loaded), the run's threshold
    above it, and `empty` (why nothing matches, `empty_filter_text`) when there is no row."""
    head = f"<p>{len(rows)} shown" + (f" of {total} matching" if total is not None else "") + (
        f". {html.escape(threshold_text(threshold), quote=False)}" if threshold is not None else "") + "</p>"
    if not rows:
        return head + (f"<p style='color:#b00'>{html.escape(empty, quote=False)}</p>" if empty else "")
    body = []
    for k, r in enumerate(rows):
        im = images[k] if images is not None else None
        pic = f"<img src='{png_data_uri(im, _scale_for(im, 96))}' width=96>" if im is not None else "–"
        colour = "#070" if r["correct"] else "#b00"
        sign = "" if threshold is None else (" ≥ " if r["predicted"] == "FAKE" else " < ") + f"{threshold:.4f}"
        body.append([html.escape(r["id"]), r["label"], r["cifar_class"], format_metric(r["p_fake"]) + sign,
                     f"<td style='{TD};color:{colour}'>{r['predicted']}</td>", pic])
    return head + _table(["id", "label", "class", "p_fake", "predicted", "image"], body)


# --------------------------------------------------------------------------- the widget

class Explorer:
    """Upload images to every detector; browse each run's test predictions.

    detectors: {name: Detector} for uploads; runs: read_run dicts (e.g. compare.load_runs) to
    browse; split: the test Split whose images the browser shows (optional).
    """

    def __init__(self, detectors: Mapping[str, Any] | None = None, runs: Sequence[Mapping[str, Any]] = (),
                 split: Any = None, *, saliency: bool = True, method: str | None = None, page: int = 24):
        import ipywidgets as w

        self.detectors = dict(detectors or {})
        self.runs = {r.get("name") or r["metrics"]["detector"]: r for r in runs if r.get("predictions") is not None}
        self.split = split
        self.saliency = saliency
        self.method = method
        self.upload_rows: list[dict[str, Any]] = []
        self.browse_rows: list[dict[str, Any]] = []
        self._id_index = ({str(s): i for i, s in enumerate(np.asarray(split.ids).tolist())}
                          if split is not None else {})

        # width auto: JupyterLab 4 gives the button a fixed width and cut "Upload images (4)" to "Upload images...";
        # align_self keeps it as wide as its text rather than the whole pane
        self.upload = w.FileUpload(accept="image/*", multiple=True, description="Upload images",
                                   layout=w.Layout(width="auto", align_self="flex-start"))
        self.upload_out = w.HTML(uploads_html([]))
        self.upload.observe(self.on_upload, names="value")

        self.run_box = w.Dropdown(options=list(self.runs), description="run")
        self.label_box = w.Dropdown(options=[("all", "all"), ("REAL", "REAL"), ("FAKE", "FAKE")],
                                    description="label")
        self.class_box = w.Dropdown(options=[("all", "all")] + [(c, c) for c in CIFAR_CLASSES],
                                    description="class")
        # String values: ipywidgets 7 shows an option whose value is None as an empty box.
        self.correct_box = w.Dropdown(options=[("all", "all"), ("right", "right"), ("wrong", "wrong")],
                                      description="decision")
        self.count_box = w.IntSlider(value=12, min=1, max=max(1, page * 4), description="show")
        self.browse_out = w.HTML()
        for box in (self.run_box, self.label_box, self.class_box, self.correct_box, self.count_box):
            box.observe(self.on_filter, names="value")

        upload_pane = w.VBox([w.HTML(f"<b>Detectors:</b> {html.escape(', '.join(self.detectors) or 'none loaded')}"),
                              self.upload, self.upload_out])
        browse_pane = w.VBox([w.HTML("<b>Test predictions</b> of one run, filtered, the most confident first."),
                              w.HBox([self.run_box, self.label_box]),
                              w.HBox([self.class_box, self.correct_box]), self.count_box, self.browse_out])
        self.widget = w.Tab(children=[upload_pane, browse_pane])
        # Short titles: both versions cut a tab title at about 20 characters.
        for i, title in enumerate(TAB_TITLES):
            self.widget.set_title(i, title)  # ipywidgets 7 and 8 both have set_title
        if self.runs:
            self.on_filter(None)

    # -- callbacks: plain functions in, HTML out
    def on_upload(self, change: Any) -> list[dict[str, Any]]:
        value = change["new"] if isinstance(change, Mapping) and "new" in change else self.upload.value
        self.upload_rows = score_uploads(self.detectors, uploaded_files(value), saliency=self.saliency,
                                         method=self.method)
        self.upload_out.value = uploads_html(self.upload_rows)
        return self.upload_rows

    def on_filter(self, change: Any = None) -> list[dict[str, Any]]:
        run = self.runs.get(self.run_box.value)
        if run is None:
            self.browse_rows = []
            self.browse_out.value = "<p>No run with test predictions.</p>"
            return self.browse_rows
        preds, t = run["predictions"], float(run["metrics"]["threshold"])
        idx = filter_predictions(preds, label=self.label_box.value, cifar_class=self.class_box.value,
                                 correct={"right": True, "wrong": False}.get(self.correct_box.value), threshold=t)
        self.browse_rows = prediction_rows(preds, idx[: self.count_box.value], t)
        images = None
        if self.split is not None:
            images = [self.split.images[self._id_index[r["id"]]] if r["id"] in self._id_index else None
                      for r in self.browse_rows]
        filters = {"label": self.label_box.value, "cifar_class": self.class_box.value,
                   "correct": self.correct_box.value}
        self.browse_out.value = browse_html(self.browse_rows, images, total=len(idx), threshold=t,
                                            empty="" if len(idx) else empty_filter_text(preds, filters, t))
        return self.browse_rows

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
