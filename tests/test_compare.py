"""The comparison tables read exactly the runs they are given, pick zero-shot prompts on
validation, keep published rows apart, and agree with metrics.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from analysis_helpers import make_run

from cifake_lib import CIFAR_CLASSES
from cifake_lib.analysis import compare
from cifake_lib.evaluation.metrics import (
    apply_temperature,
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    make_run(root / "runs" / "probe", "probe", strength=2.0)
    make_run(root / "runs" / "cnn", "cnn", strength=1.0, kind="cnn")
    # two prompt sets: the better one on VALIDATION is worse on test; validation must win
    make_run(root / "runs" / "zeroshot" / "good_val", "zeroshot:good_val", strength=0.2, val_strength=2.0,
             kind="clip")
    make_run(root / "runs" / "zeroshot" / "good_test", "zeroshot:good_test", strength=2.5, val_strength=0.1,
             kind="clip")
    make_run(root / "runs" / "noval", "finetune:both", strength=1.0, val=False, kind="clip")
    # a decoy outside the given folder, with an unmistakable name
    make_run(root / "decoy", "DECOY", strength=3.0)
    return root


def test_reads_only_the_given_folders(runs_root):
    runs = compare.load_runs(runs_root / "runs")
    names = {r["name"] for r in runs}
    assert names == {"probe", "cnn", "zeroshot:good_val", "zeroshot:good_test", "finetune:both"}
    rows = compare.comparison_rows(runs, n_boot=0)
    assert not any("DECOY" in str(r.get("name")) for r in rows)
    # a decoy copied INTO a given folder but not a test record (split val) is not read either
    shutil.copy(runs_root / "runs" / "probe" / "metrics_val.json", runs_root / "runs" / "metrics.json")
    try:
        assert {r["name"] for r in compare.load_runs(runs_root / "runs")} == names
    finally:
        (runs_root / "runs" / "metrics.json").unlink()


def test_zero_shot_prompt_set_chosen_on_validation(runs_root):
    runs, notes = compare.select_runs(compare.load_runs(runs_root / "runs"))
    names = [r["name"] for r in runs]
    assert "zeroshot:good_val" in names and "zeroshot:good_test" not in names
    assert any("good_val" in n and "validation" in n for n in notes)


def test_comparison_rows_and_published_marked(runs_root):
    runs = compare.load_runs(runs_root / "runs" / "probe")
    rows = compare.comparison_rows(runs, n_boot=200)
    ours = [r for r in rows if r["source"] == "ours"]
    published = [r for r in rows if r["source"] == "published"]
    from cifake_lib.evaluation.published import published_results

    assert len(ours) == 1 and len(published) == len(published_results())
    m = runs[0]["metrics"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece"):
        assert ours[0][key] == m[key]
    assert ours[0]["accuracy_ci95"] == m["accuracy_ci95"]
    assert ours[0]["accuracy_at_0.5"] == m["natural_threshold"]["accuracy"]
    for key in compare.BOOT_METRICS:  # bootstrapped CIs bracket the point estimate
        lo, hi = ours[0][f"{key}_ci95"]
        assert lo - 1e-9 <= m[key] <= hi + 1e-9
    # Published figures keep their published precision and their citation.
    paper = next(r for r in published if r["name"].startswith("CIFAKE paper CNN"))
    assert paper["accuracy"] == "92.98%" and paper["reference"] == "Bird & Lotfi 2024"
    md = compare.markdown_table(rows, compare.COMPARISON_COLUMNS)
    assert md.count("| published |") == len(published) and md.count("| ours |") == 1
    assert "| 92.98% |" in md and "≈95%" in md and "0.9500" not in md
    best = compare.best_by(rows, "roc_auc")
    assert best["source"] == "ours"  # published rows never win


def test_bootstrap_cis_deterministic_and_sane():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 500), 0, 1)
    a = compare.bootstrap_cis(y, p, threshold=0.5, n_boot=300, seed=1)
    assert a == compare.bootstrap_cis(y, p, threshold=0.5, n_boot=300, seed=1)
    m = compute_metrics(y, p, threshold=0.5, n_boot=0)
    for key, (lo, hi) in a.items():
        assert lo <= m[key] <= hi and hi - lo < 0.2, key


def test_per_class_rows_match_a_direct_count(runs_root):
    runs = compare.load_runs(runs_root / "runs" / "probe")
    rows = compare.per_class_rows(runs)
    assert len(rows) == 10 and {r["cifar_class"] for r in rows} == set(CIFAR_CLASSES)
    preds, t = runs[0]["predictions"], runs[0]["metrics"]["threshold"]
    mask = (preds["cifar_class"] == 3) & (preds["label"] == 1)
    want = float(((preds["p_fake"][mask] >= t) == 1).mean())
    assert rows[3]["fake_accuracy"] == pytest.approx(want) and rows[3]["n_fake"] == mask.sum()
    fig = compare.per_class_heatmap(rows)
    assert len(fig.axes[0].images) == 1 and len(fig.axes[1].images) == 1
    wide = compare.per_class_wide(rows)
    assert len(wide) == 2 and wide[1]["label"] == "FAKE" and wide[1]["cat"] == pytest.approx(want)


def test_calibration_fits_on_validation_only(runs_root):
    runs = compare.load_runs(runs_root / "runs")
    rows = {r["name"]: r for r in compare.calibration_rows(runs)}
    assert rows["finetune:both"]["temperature"] is None  # no validation -> no temperature
    probe = next(r for r in runs if r["name"] == "probe")
    t = fit_temperature(probe["predictions_val"]["label"], probe["predictions_val"]["p_fake"])
    assert rows["probe"]["temperature"] == pytest.approx(t)
    y, p = probe["predictions"]["label"], probe["predictions"]["p_fake"]
    assert rows["probe"]["ece_after"] == pytest.approx(expected_calibration_error(y, apply_temperature(p, t)))
    assert rows["probe"]["ece_before"] == pytest.approx(probe["metrics"]["ece"])
