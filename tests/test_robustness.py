"""The robustness battery runner: one row per (perturbation, severity) per detector, a clean row
that equals the plain evaluation, thresholds from each detector, results files the report reads.

(That each perturbation is deterministic and stronger with severity is tested in test_perturb.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from analysis_helpers import synthetic_split

from cifake_lib.analysis import robustness
from cifake_lib.data.perturb import PERTURBATIONS, battery
from cifake_lib.evaluation.metrics import compute_metrics
from cifake_lib.evaluation.runs import write_run
from cifake_lib.methods.cnn import WEIGHTS_FILE, CifakeCNN, CNNConfig, CNNDetector, save_cnn_weights


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A CNN run folder written exactly as the CNN stage does (untrained weights suffice)."""
    out = tmp_path_factory.mktemp("rob") / "cnn"
    out.mkdir()
    torch.manual_seed(0)
    model = CifakeCNN(CNNConfig()).eval()
    save_cnn_weights(model, out / WEIGHTS_FILE)
    det = CNNDetector(model, device="cpu")
    test, val = synthetic_split(48, seed=1), synthetic_split(24, seed=2, prefix="train")
    write_run(out, test=test, p_test=det.predict_proba(test.images), val=val, p_val=det.predict_proba(val.images),
              detector={"kind": "cnn", "detector": "cnn", "weights": WEIGHTS_FILE,
                        "architecture": CNNConfig().to_dict()},
              model="cifake-cnn", data="synthetic", seed=0, args={}, seconds=0.0, n_boot=0)
    return out, test


class Shifted:
    """A toy detector with its own threshold: p_fake from the mean brightness."""

    kind, detector = "toy", "toy"

    def __init__(self, threshold):
        self.threshold = threshold

    def predict_proba(self, images, batch_size=256):
        return images.mean(axis=(1, 2, 3)) / 255.0


def test_rows_cover_the_battery_and_clean_is_plain_evaluation():
    split = synthetic_split(30, seed=3)
    dets = {"low": Shifted(0.3), "high": Shifted(0.7)}
    rows = robustness.run_battery(dets, split, perturbations=["jpeg", "blur"], progress=False)
    assert len(rows) == len(dets) * (1 + len(battery(["jpeg", "blur"])))
    keys = [(r["detector"], r["perturbation"], r["severity"]) for r in rows]
    assert len(set(keys)) == len(keys)
    for name in ("jpeg", "blur"):
        levels = [r["level"] for r in rows if r["perturbation"] == name and r["detector"] == "low"]
        assert levels == [float(v) for v in PERTURBATIONS[name].severities]  # mild to strong
    for name, det in dets.items():
        clean = next(r for r in rows if r["detector"] == name and r["perturbation"] == robustness.CLEAN)
        m = compute_metrics(split.labels, det.predict_proba(split.images), threshold=det.threshold, n_boot=0)
        assert clean["accuracy"] == m["accuracy"] and clean["roc_auc"] == m["roc_auc"]
        assert clean["threshold"] == det.threshold and clean["severity"] == 0 and clean["accuracy_drop"] == 0
    # each detector's own threshold is used: the same scores, different decisions
    real = {r["detector"]: r["real_accuracy"] for r in rows if r["perturbation"] == robustness.CLEAN}
    assert real == {"low": 0.0, "high": 1.0}


def test_from_run_folders_writes_results(cnn_run, tmp_path):
    run_dir, test = cnn_run
    rows = robustness.robustness_from_runs([run_dir], test, tmp_path / "out", perturbations=["noise", "crop"],
                                           progress=False, device="cpu")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    clean = rows[0]
    assert clean["detector"] == "cnn" and clean["perturbation"] == robustness.CLEAN
    assert clean["accuracy"] == pytest.approx(metrics["accuracy"])  # same detector, data, threshold
    assert clean["roc_auc"] == pytest.approx(metrics["roc_auc"])
    for name in ("csv", "json", "md", "png"):
        assert (tmp_path / "out" / f"robustness.{name}").is_file()
    back = robustness.read_robustness(tmp_path / "out")
    assert back["rows"] == json.loads(json.dumps(rows)) and back["runs"] == {"cnn": str(run_dir.resolve())}
    assert robustness.find_robustness(tmp_path) == [(tmp_path / "out" / "robustness.json").resolve()]
    md = (tmp_path / "out" / "robustness.md").read_text()
    assert md.count("\n") == 2 + 1 + len(battery(["noise", "crop"]))  # header, rule, clean, each level
    fragile = robustness.most_fragile(rows)
    assert set(fragile) == {"cnn"} and fragile["cnn"]["perturbation"] in ("noise", "crop")


def test_most_fragile_says_when_perturbations_tie():
    rows = [{"detector": "d", "perturbation": p, "label": label, "accuracy_drop": drop}
            for p, label, drop in (("clean", "clean", 0.0), ("jpeg", "jpeg quality=90", 0.005),
                                   ("blur", "blur sigma=1", 0.005), ("noise", "noise std=2", 0.001))]
    (worst,) = robustness.most_fragile(rows).values()
    assert worst["label"] == "jpeg quality=90" and worst["tied_with"] == ["blur sigma=1"]


def test_cli(cnn_run, tmp_path, sample_dir):
    """`cifake robustness` on real sample images (the CNN takes any 32x32 data)."""
    from cifake_lib.app.cli import main

    run_dir, _ = cnn_run
    out = tmp_path / "cli"
    code = main(["robustness", "--runs", str(run_dir), "--data", str(sample_dir), "--subset", "100:40",
                 "--limit", "20", "--perturbations", "blur", "--out", str(out)])
    assert code == 0
    rows = robustness.read_robustness(out)["rows"]
    assert len(rows) == 1 + len(PERTURBATIONS["blur"].severities) and rows[0]["n"] == 20
    assert np.isfinite([r["accuracy"] for r in rows]).all()
    assert main(["robustness", "--runs", str(tmp_path / "nothing"), "--data", str(sample_dir),
                 "--out", str(out)]) == 2
