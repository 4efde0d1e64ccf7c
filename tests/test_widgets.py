"""The explorer's logic without a browser: both FileUpload value shapes, scoring uploads,
filtering predictions, and the callbacks called directly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from analysis_helpers import make_run, synthetic_split
from PIL import Image

from cifake_lib.app import widgets
from cifake_lib.evaluation.runs import read_run
from cifake_lib.methods.cnn import CifakeCNN, CNNConfig, CNNDetector


def png_bytes(shape=(32, 32), seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files():
    return [("a.png", png_bytes(seed=1)), ("big.png", png_bytes((40, 64), seed=2, mode="RGBA"))]


def v7(files):  # ipywidgets 7.x: {name: {"metadata": {...}, "content": bytes}}
    return {name: {"metadata": {"name": name, "type": "image/png", "size": len(c), "lastModified": 0},
                   "content": c} for name, c in files}


def v8(files):  # ipywidgets 8.x: tuple of dicts, content a memoryview
    return tuple({"name": name, "type": "image/png", "size": len(c), "last_modified": None,
                  "content": memoryview(c)} for name, c in files)


@pytest.fixture(scope="module")
def detectors():
    torch.manual_seed(0)
    return {"cnn": CNNDetector(CifakeCNN(CNNConfig()), threshold=0.4, device="cpu")}


def test_uploaded_files_both_versions(files):
    assert widgets.uploaded_files(v7(files)) == files
    assert widgets.uploaded_files(v8(files)) == files
    assert widgets.uploaded_files(list(v8(files))) == files
    assert widgets.uploaded_files(None) == [] and widgets.uploaded_files(()) == [] and widgets.uploaded_files({}) == []
    with pytest.raises(TypeError):
        widgets.uploaded_files(42)


def test_score_uploads(detectors, files):
    rows = widgets.score_uploads(detectors, files + [("broken.png", b"not an image")], saliency=True)
    assert [r["file"] for r in rows] == ["a.png", "big.png", "broken.png"]
    good = rows[:2]
    want = detectors["cnn"].predict_proba(widgets.decode_image("a.png", files[0][1])[None])[0]
    assert good[0]["p_fake"] == pytest.approx(float(want))
    for r in good:
        assert r["error"] is None and r["label"] == ("FAKE" if r["p_fake"] >= 0.4 else "REAL")
        assert r["saliency"].shape == (r["height"], r["width"]) and r["threshold"] == 0.4
    assert good[1]["height"] == 40 and good[1]["width"] == 64
    assert rows[2]["p_fake"] is None and "broken.png" in rows[2]["error"]
    html = widgets.uploads_html(rows)
    assert html.count("<tr>") == 4 and "data:image/png;base64," in html
    assert "threshold 0.400" in html  # the decision shows the threshold it was made at


def test_tables_pad_every_cell_in_both_widget_versions(detectors, files):
    """Cells carry their own padding: ipywidgets 7 adds none, so unstyled cells ran together."""
    import re

    rows = widgets.score_uploads(detectors, files, saliency=True)
    preds = {"id": np.array(["x/1.jpg"]), "label": np.array([1]), "cifar_class": np.array([2]),
             "p_fake": np.array([0.7])}
    for html in (widgets.uploads_html(rows), widgets.browse_html(widgets.prediction_rows(preds, [0], 0.5))):
        cells = re.findall(r"<t[hd]( [^>]*)?>", html)
        assert cells and all("padding:" in (attrs or "") for attrs in cells), html[:300]
        assert "border-collapse:collapse" in html


def test_blank_saliency_is_said_in_words(detectors, files):
    """An all-zero map (e.g. Grad-CAM of the CNN for a REAL decision) is not drawn as a flat colour."""
    from cifake_lib.analysis.explain import BLANK_MAP_TEXT

    row = widgets.score_uploads(detectors, files[:1], saliency=True)[0]
    html = widgets.uploads_html([{**row, "saliency": np.zeros_like(row["saliency"])}])
    assert BLANK_MAP_TEXT in html and html.count("data:image/png") == 1  # the image, no overlay
    ramp = np.linspace(0, 1, row["saliency"].size).reshape(row["saliency"].shape)
    html = widgets.uploads_html([{**row, "saliency": ramp}])
    assert BLANK_MAP_TEXT not in html and html.count("data:image/png") == 3  # image, overlay, colour scale
    assert "low <img" in html and "> high" in html


def test_filter_predictions():
    preds = {"id": np.array(list("abcdef")), "label": np.array([0, 0, 1, 1, 1, 0]),
             "cifar_class": np.array([3, 3, 3, 5, 3, -1]), "p_fake": np.array([0.1, 0.8, 0.95, 0.2, 0.55, 0.5])}
    assert widgets.filter_predictions(preds).tolist() == [2, 0, 1, 3, 4, 5]  # most confident first
    assert widgets.filter_predictions(preds, label="FAKE").tolist() == [2, 3, 4]
    assert widgets.filter_predictions(preds, label=1, cifar_class="cat").tolist() == [2, 4]
    assert widgets.filter_predictions(preds, correct=False).tolist() == [1, 3, 5]
    assert widgets.filter_predictions(preds, correct=True, threshold=0.9).tolist() == [0, 5, 1, 2]
    rows = widgets.prediction_rows(preds, [1, 5], 0.5)
    assert rows[0] == {"index": 1, "id": "b", "label": "REAL", "cifar_class": "cat", "p_fake": 0.8,
                       "predicted": "FAKE", "correct": False}
    assert rows[1]["cifar_class"] == "unknown"
    with pytest.raises(ValueError):
        widgets.filter_predictions(preds, label="maybe")


def test_explorer_callbacks(detectors, files, tmp_path):
    split = synthetic_split(60, seed=7)
    make_run(tmp_path / "probe", "probe", n=60, test=split)
    run = {**read_run(tmp_path / "probe"), "name": "probe"}
    ex = widgets.Explorer(detectors, [run], split, saliency=False)
    r7 = ex.on_upload({"new": v7(files)})
    r8 = ex.on_upload({"new": v8(files)})
    assert [(r["file"], r["p_fake"]) for r in r7] == [(r["file"], r["p_fake"]) for r in r8]
    assert "a.png" in ex.upload_out.value and "big.png" in ex.upload_out.value
    assert len(ex.browse_rows) == 12  # shown on start
    ex.label_box.value = "FAKE"  # the observer calls on_filter
    assert ex.browse_rows and all(r["label"] == "FAKE" for r in ex.browse_rows)
    ex.correct_box.value = "wrong"
    assert all(not r["correct"] and r["label"] == "FAKE" for r in ex.browse_rows)
    ex.label_box.value, ex.correct_box.value, ex.class_box.value = "all", "all", "dog"
    assert ex.browse_rows and all(r["cifar_class"] == "dog" for r in ex.browse_rows)
    assert ex.browse_out.value.count("data:image/png") == len(ex.browse_rows)  # images from the split
    t = run["metrics"]["threshold"]
    assert f"Decisions at this run's threshold {t:.4f}" in ex.browse_out.value
    assert f" ≥ {t:.4f}" in ex.browse_out.value or f" &lt; {t:.4f}" in ex.browse_out.value
    # a filter that matches nothing says why, and how many each filter set back to "all" would show
    preds = {"id": np.array(list("abcdef")), "label": np.array([0, 0, 1, 1, 1, 0]),
             "cifar_class": np.array([5, 3, 3, 5, 3, 5]), "p_fake": np.array([0.1, 0.8, 0.95, 0.2, 0.55, 0.5])}
    filters = {"label": "FAKE", "cifar_class": "dog", "correct": "right"}  # the one FAKE dog (d) is wrong
    assert len(widgets.filter_predictions(preds, label="FAKE", cifar_class="dog", correct=True, threshold=0.5)) == 0
    empty = widgets.empty_filter_text(preds, filters, threshold=0.5)
    assert empty.startswith("No test prediction of this run has label FAKE, class dog, decision right")
    assert empty.endswith("with label “all”: 1; with class “all”: 2; with decision “all”: 1.")
    run["predictions"] = preds
    ex = widgets.Explorer(detectors, [run], None, saliency=False)
    ex.label_box.value, ex.class_box.value, ex.correct_box.value = "FAKE", "dog", "right"
    assert "0 shown of 0 matching" in ex.browse_out.value and "Set a filter back to “all”" in ex.browse_out.value
    titles = [ex.widget.get_title(i) for i in range(2)]
    assert titles == ["Upload", "Browse"] and all(len(t) <= 12 for t in titles)  # never cut
