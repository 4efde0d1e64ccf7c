"""report.md is generated from tiny runs: the sections, tables and generated discussion are
there, and every image it links exists and opens with PIL. Also the gallery helpers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from analysis_helpers import make_run, scores, synthetic_split
from PIL import Image

from cifake_lib.analysis import report
from cifake_lib.analysis.robustness import run_battery, write_robustness
from cifake_lib.evaluation.runs import write_run
from cifake_lib.methods.cnn import WEIGHTS_FILE, CifakeCNN, CNNConfig, CNNDetector, save_cnn_weights
from cifake_lib.viz import gallery


@pytest.fixture(scope="module")
def study(tmp_path_factory, sample_dir):
    """Runs on real sample images: a CNN with weights (so saliency works) and score-only runs."""
    from cifake_lib.data.load import load_cifake

    root = tmp_path_factory.mktemp("report")
    data = load_cifake(sample_dir, subset=(80, 40), val_fraction=0.25, seed=0, progress=False)
    torch.manual_seed(0)
    model = CifakeCNN(CNNConfig()).eval()
    (root / "runs" / "cnn").mkdir(parents=True)
    save_cnn_weights(model, root / "runs" / "cnn" / WEIGHTS_FILE)
    det = CNNDetector(model, device="cpu")
    write_run(root / "runs" / "cnn", test=data.test, p_test=det.predict_proba(data.test.images), val=data.val,
              p_val=det.predict_proba(data.val.images),
              detector={"kind": "cnn", "detector": "cnn", "weights": WEIGHTS_FILE,
                        "architecture": CNNConfig().to_dict()},
              model="cifake-cnn", data=data.source, seed=0, args={"epochs": 1, "lr": 0.002}, seconds=1.0, n_boot=100)
    make_run(root / "runs" / "probe", "probe", strength=2.0, test=data.test)
    make_run(root / "runs" / "zeroshot" / "plain", "zeroshot:plain", strength=0.3, kind="clip", test=data.test)
    make_run(root / "runs" / "zeroshot" / "ensemble", "zeroshot:ensemble", strength=0.2, val_strength=0.05,
             kind="clip", test=data.test)
    rows = run_battery({"cnn": det}, data.test.take(np.arange(20)), perturbations=["blur"], progress=False)
    write_robustness(root / "runs" / "robustness", rows, meta={"n": 20, "seed": 0})
    return root, data


def test_report_from_tiny_runs(study):
    root, data = study
    path = report.build_report([root / "runs"], root / "out", data=data, n_boot=100, gallery_k=4, device="cpu")
    text = path.read_text()
    for section in ("## Quantitative results", "## Qualitative results", "## Analysis", "## Discussion"):
        assert section in text
    assert "### Published results (not ours)" in text and "| CIFAKE paper CNN | Bird & Lotfi 2024 |" in text
    assert "## References" in text and "arXiv:2303.14126" in text
    assert "| zeroshot:plain |" in text and "| zeroshot:ensemble |" not in text  # one prompt set, on val
    assert "chosen among 2 on validation" in text
    assert "### Robustness" in text and "blur sigma=1.5" in text
    assert "Temperature scaling fitted on validation" in text
    assert "Settings: epochs planned 1, learning rate 0.002" in text  # methods from run.json
    # No leak-free evaluation among these runs: the caption says so instead of claiming it, says how to
    # get one from a notebook too, and explains the mark on every row.
    assert "not leak-free" in text and "Leak-free test split" not in text
    assert "`report.leak_free_evaluations(RUNS, data)`" in text
    assert "| cnn † |" in text and "† the test split as loaded: this detector has no leak-free evaluation" in text
    # 40 test images: a subset of CIFAKE, which says so at the top, under every table and figure, in the
    # Discussion, and beside the published results
    assert text.split("\n")[2].startswith("> **A subset of CIFAKE.** These detectors were trained and tested on "
                                          "40 of CIFAKE's 20,000 test images")
    caption = "_Subset of CIFAKE: 40 test images: not the whole of CIFAKE._"
    lines = [line for line in text.split("\n") if line.strip()]
    for i, line in enumerate(lines[:-1]):
        ends_table = line.startswith("|") and not lines[i + 1].startswith("|")
        if line.startswith("![") or ends_table:
            assert lines[i + 1] == caption, (line, lines[i + 1])
    assert "**Context only, not a comparison:**" in text and "- These detectors were trained and tested on 40" in text
    images = report.linked_images(path)
    names = {p.name for p in images}
    assert {"roc.png", "per_class.png", "reliability.png", "robustness.png", "gallery_cnn.png",
            "saliency_cnn.png"} <= names
    for p in images:
        assert p.is_file(), p
        with Image.open(p) as im:
            im.verify()
    for csv in ("comparison.csv", "per_class.csv", "calibration.csv", "paired_comparisons.csv"):
        assert (root / "out" / csv).is_file()


def test_leak_free_evaluations_make_the_headline_leak_free(study, tmp_path):
    """What notebook 04 does on its own: each run's predictions kept to the leak-free test images (here a
    test image planted as a copy of a training image is dropped), paired with the run by load_study."""
    import shutil

    from cifake_lib.analysis.leak_free import leak_free_evaluations
    from cifake_lib.analysis.study import load_study

    root, data = study
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    planted = data.test.images.copy()
    planted[0] = data.train.images[0]  # test image 0 now also occurs in train: a leak
    leaky = replace(data, test=replace(data.test, images=planted))
    written = leak_free_evaluations(runs, leaky, n_boot=0, note=lambda m: None)
    assert len(written) == 4 and leak_free_evaluations(runs, leaky, note=lambda m: None) == []  # once
    s = load_study([runs])
    assert s.leak_free and all(r["metrics"]["n"] == len(data.test) - 1 for r in s.runs)
    assert {v["n"] for v in s.removed.values()} == {1}
    assert data.test.ids[0] not in set(s.runs[0]["predictions"]["id"].tolist())
    text = report.build_report([runs], tmp_path / "out", n_boot=0, saliency=False).read_text()
    assert "**Leak-free test split:**" in text and "†" not in text


def test_report_cli_without_data(study, tmp_path):
    from cifake_lib.app.cli import main

    root, _ = study
    assert main(["report", "--runs", str(root / "runs" / "probe"), "--out", str(tmp_path), "--n-boot", "0"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "no image galleries" in text and "No robustness results" in text
    assert all(p.is_file() for p in report.linked_images(tmp_path / "report.md"))
    assert main(["report", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2


def test_gallery_picks_the_most_confident():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.02, 0.9, 0.95, 0.3, 0.6, 0.7, 0.01])
    g = gallery.confident_examples(y, p, threshold=0.5, k=2)
    assert g["real_right"].tolist() == [1, 0]  # lowest p first
    assert g["real_wrong"].tolist() == [2, 6]  # highest p first
    assert g["fake_right"].tolist() == [3, 5]
    assert g["fake_wrong"].tolist() == [7, 4]
    assert gallery.match_ids(["b", "x", "a"], np.array(["a", "b"])).tolist() == [1, -1, 0]
    im = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    up = gallery.upsample_nearest(im, 3)
    assert up.shape == (6, 6, 3) and set(np.unique(up)) == set(np.unique(im))


def test_gallery_figure_from_a_run(tmp_path):
    split = synthetic_split(40, seed=5)
    make_run(tmp_path / "r", "probe", n=40, test=split)
    from cifake_lib.evaluation.runs import read_run

    run = read_run(tmp_path / "r")
    fig = gallery.run_gallery(run, split, k=3)
    assert fig is not None and len(fig.axes) == 4 * 3
    assert gallery.run_gallery(run, synthetic_split(10, seed=1, prefix="other")) is None
    assert scores(split, 1.0, 0).shape == (40,)


def test_models_before_after(tmp_path, tiny_model_dir):
    from cifake_lib.analysis.compare import load_runs
    from cifake_lib.analysis.embeddings import models_before_after

    make_run(tmp_path / "zs", "zeroshot:plain", kind="clip", model=str(tiny_model_dir), n=20)
    assert list(models_before_after(load_runs(tmp_path).copy()).values()) == [str(tiny_model_dir)]
    make_run(tmp_path / "ft", "finetune:both", kind="clip", model=str(tiny_model_dir), n=20)
    make_run(tmp_path / "fti", "finetune:image", kind="clip", model="/no/such/model", n=20)
    pairs = models_before_after(load_runs(tmp_path))
    assert list(pairs.values()) == [str(tiny_model_dir), str((tmp_path / "ft").resolve())]
    assert list(pairs) == ["random weights (model)", "fine-tuned (finetune:both)"]  # a tiny CLIP is not "pretrained"


# --------------------------------------------------------------------------- leak-free headline, paired tests


def _leak_free_copy(src, dst, keep):
    """What `cifake evaluate --dedup` writes: the original's test scores on the images kept, args.dedup true."""
    import json

    from cifake_lib.evaluation.metrics import metrics_record, read_predictions, write_predictions

    p = read_predictions(src / "predictions.csv")
    m = json.loads((src / "metrics.json").read_text())
    idx = np.flatnonzero(keep(p))
    rec = metrics_record(p["label"][idx], p["p_fake"][idx], threshold=m["threshold"], classes=p["cifar_class"][idx],
                         detector=m["detector"], model=str(src), data="synthetic", split="test", seed=0, n_boot=50,
                         threshold_source="detector", args={"model": str(src), "dedup": True})
    dst.mkdir(parents=True)
    write_predictions(dst / "predictions.csv", p["id"][idx], p["label"][idx], p["cifar_class"][idx], p["p_fake"][idx])
    (dst / "metrics.json").write_text(json.dumps(rec))
    return rec


@pytest.fixture(scope="module")
def dedup_study(tmp_path_factory):
    """Three detectors on the same 300 test images; an evaluate/ folder drops 6 FAKE "duplicates" each."""
    root = tmp_path_factory.mktemp("dedup")
    test = synthetic_split(300, seed=100)
    make_run(root / "zeroshot" / "plain", "zeroshot:plain", strength=0.3, kind="clip", test=test)
    make_run(root / "probe", "probe", strength=1.5, test=test)
    make_run(root / "finetune", "finetune:both", strength=1.6, kind="clip", test=test, seed=1)
    dropped = {str(i) for i in test.ids[test.labels == 1][:6]}
    for name, src in (("zeroshot", root / "zeroshot" / "plain"), ("probe", root / "probe"),
                      ("finetune", root / "finetune")):
        _leak_free_copy(src, root / "evaluate" / name, lambda p: ~np.isin(p["id"], list(dropped)))
    return root


def test_headline_is_leak_free_with_duplicates_second(dedup_study, tmp_path):
    import csv

    from cifake_lib.analysis.study import load_study

    study = load_study([dedup_study])
    assert study.leak_free and [r["metrics"]["n"] for r in study.runs] == [294, 294, 294]
    assert all(v == {"n": 6, "fake": 6, "real": 0} for v in study.removed.values())
    assert [r["metrics"]["n"] for r in study.with_duplicates] == [300, 300, 300]
    path = report.build_report([dedup_study], tmp_path, n_boot=50)
    text = path.read_text()
    main = text.split("### Main results")[1].split("### With duplicates")[0]
    assert "**Leak-free test split:**" in main and "6 removed (6 FAKE, 0 REAL)" in main
    assert "| 294 |" in main and "| 300 |" not in main
    assert "| 300 |" in text.split("### With duplicates")[1].split("### Paired")[0]
    assert "acc@0.5" in main
    with open(tmp_path / "paired_comparisons.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == ["detector_a", "detector_b", "metric", "difference", "ci_low", "ci_high", "p_value"]
    pairs = {(r["detector_a"], r["detector_b"]) for r in rows}
    assert {("probe", "zeroshot:plain"), ("finetune:both", "zeroshot:plain"), ("finetune:both", "probe")} <= pairs
    assert all(int(r["n"]) == 294 for r in rows)  # compared on the leak-free images


def test_discussion_follows_the_paired_table(dedup_study, tmp_path):
    import csv

    report.build_report([dedup_study], tmp_path, n_boot=50)
    discussion = report.section_text(tmp_path / "report.md", "Discussion")
    with open(tmp_path / "paired_comparisons.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        lo, hi, p = float(r["ci_low"]), float(r["ci_high"]), float(r["p_value"])
        metric = "ROC AUC" if r["metric"] == "roc_auc" else "accuracy"
        if (lo > 0 or hi < 0) and p < 0.05:
            word = "higher" if float(r["difference"]) > 0 else "lower"
            assert f"{r['detector_a']} has {word} {metric} than {r['detector_b']}" in discussion
        elif lo > 0 or hi < 0:  # interval and test disagree: neither "higher" nor "not distinguishable"
            assert f"{r['detector_a']} vs {r['detector_b']}, {metric}: mixed evidence" in discussion
        else:
            assert f"{r['detector_a']} and {r['detector_b']} are not distinguishable on {metric}" in discussion
    # Unpaired wording is gone; the absence claim is dated.
    assert "CIs overlap" not in discussion and "As of November 2026, we found no published result" in discussion


def test_uninformative_temperature_is_not_called_an_improvement():
    from cifake_lib.analysis.compare import calibration_verdict

    row = {"name": "zeroshot:plain", "temperature": 51.3, "ece_before": 0.26, "ece_after": 0.006,
           "brier_before": 0.31, "brier_after": 0.2498, "sd_after": 0.002}
    row["verdict"] = calibration_verdict(row)
    assert row["verdict"].startswith("uninformative")
    (text,) = report._calibration_statements([row])
    assert "uninformative, not an improvement" in text
    assert calibration_verdict({**row, "sd_after": 0.2}) == "ECE and Brier lower (descriptive: no interval)"


@pytest.mark.parametrize(("lo", "hi", "p", "expected"), [
    (0.01, 0.2, 0.01, "has higher accuracy than"),
    (0.005, 0.155, 0.0519, "mixed evidence, not called a difference"),
    (-0.05, 0.1, 0.3, "are not distinguishable on accuracy"),
    (-0.2, -0.01, 0.001, "has lower accuracy than"),
])
def test_paired_statement_wording(lo, hi, p, expected):
    row = {"detector_a": "a", "detector_b": "b", "metric": "accuracy", "difference": (lo + hi) / 2,
           "ci_low": lo, "ci_high": hi, "p_value": p, "test": "McNemar exact"}
    assert expected in report.paired_statement(row)


def test_scale_of_a_study(tiny_model_dir, tmp_path):
    """A tiny random model or a subset makes a pipeline check; pretrained models on all of CIFAKE do not."""
    from cifake_lib.evaluation.scale import Scale, is_tiny_model, settings_scale, study_scale

    assert is_tiny_model(str(tiny_model_dir)) and not is_tiny_model("openai/clip-vit-base-patch32")
    s = settings_scale([str(tiny_model_dir), "openai/clip-vit-base-patch32"], [1600, 400])
    assert s.reduced and s.tiny_models == (str(tiny_model_dir),) and s.subset == (1600, 400)
    assert s.what() == ("a tiny randomly initialised CLIP (no pretrained weights) and a 1,600/400-image "
                        "(train/test) subset of CIFAKE")
    assert s.record()["pipeline_check"] is True and s.banner().startswith("> **Pipeline check, not a result.**")
    subset = settings_scale(["openai/clip-vit-base-patch32"], [16_000, 4_000])
    assert subset.reduced and not subset.pipeline_check and subset.banner().startswith("> **A subset of CIFAKE.**")
    full = {"path": tmp_path, "metrics": {"model": "openai/clip-vit-base-patch32", "n": 20_000},
            "run": {"args": {"subset": None}}, "detector": {}}
    assert not study_scale([full]).reduced and Scale().banner() == "" and Scale().caption() == ""
    fine_tuned = {"path": tmp_path, "metrics": {"model": "model", "n": 20_000}, "run": {"args": {}},
                  "detector": {"base_model": str(tiny_model_dir)}}
    assert study_scale([full, fine_tuned]).tiny_models == (str(tiny_model_dir),)
    assert study_scale([{**full, "metrics": {"model": "cifake-cnn", "n": 400}}]).test_images == 400
