"""The report's study sections (related works ... future direction), learning curves, and audit
mends: the best-vs-runner-up pair ranked on validation, calibration verdicts with an interval."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from analysis_helpers import make_run, synthetic_split
from figure_checks import checked_figures

from cifake_lib.analysis import compare, report, report_sections
from cifake_lib.analysis.learning_curves import (
    curve_points,
    learning_curve_records,
    learning_curve_rows,
)
from cifake_lib.analysis.study import main_pairs
from cifake_lib.core.files import read_json, write_json
from cifake_lib.evaluation import published


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A small grid: probe and finetune at three sizes (stronger with more images), runs.csv, one
    finetune_config.json."""
    root = tmp_path_factory.mktemp("grid")
    test = synthetic_split(200, seed=100)
    rows = []
    for method, kind, base in (("probe", "probe", 0.5), ("finetune", "clip", 0.3)):
        for k, size in enumerate((320, 1000, 4000)):
            name = f"{method}_n{size}"
            make_run(root / name, "probe" if method == "probe" else "finetune:both", strength=base + 0.6 * k,
                     kind=kind, test=test)
            rows.append({"method": method, "model": "tiny", "train_size": size, "seed": 0, "run_dir": name,
                         "status": "complete", "seconds": 2.5 + k})
    write_json(root / "finetune_n1000" / "finetune_config.json",
               {"loss": "flyp", "lr": 1e-5, "batch_size": 32, "weight_decay": 0.1, "grad_clip": 1.0,
                "warmup_steps": 5, "eval_every": 2, "patience": 3, "min_lr_ratio": 0.1})
    with open(root / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_learning_curve_rows_and_points_follow_the_runs(grid):
    records = learning_curve_records(grid)
    assert sorted((m, n) for _, m, n, *_ in records) == sorted((m, n) for m in ("probe", "finetune")
                                                          for n in (320, 1000, 4000))
    rows = learning_curve_rows(records)
    for r in rows:  # oracle: each row is its run's own metrics.json
        m = read_json(grid / r["run"] / "metrics.json")
        assert (r["roc_auc"], r["accuracy"], r["roc_auc_ci95"]) == (m["roc_auc"], m["accuracy"], m["roc_auc_ci95"])
    points = curve_points(rows)
    assert len(points) == 6 and all(p["roc_auc_lo"] <= p["roc_auc"] <= p["roc_auc_hi"] for p in points)
    two_seeds = curve_points([*rows[:1], {**rows[0], "roc_auc": rows[0]["roc_auc"] - 0.1, "seed": 1}])
    assert two_seeds[0]["roc_auc"] == pytest.approx(rows[0]["roc_auc"] - 0.05)
    assert (two_seeds[0]["roc_auc_lo"], two_seeds[0]["roc_auc_hi"]) == (rows[0]["roc_auc"] - 0.1, rows[0]["roc_auc"])


def test_learning_curves_hold_the_input_size_and_read_the_leak_free_runs(grid, tmp_path):
    """A run at another input size is off the curve (the main cell's size is held); with every run
    re-evaluated leak-free (`evaluated_dir`), the curve reads those, with runs.csv's training seed."""
    import shutil

    root = tmp_path / "grid"
    shutil.copytree(grid, root)
    with open(root / "runs.csv", newline="") as f:
        rows = [{**r, "image_size": "", "evaluated_dir": f"evaluate/{r['run_dir']}", "seed": "3"}
                for r in csv.DictReader(f)]
    rows.append({**rows[0], "image_size": "64", "run_dir": "probe_r64", "evaluated_dir": "evaluate/probe_r64"})
    for r in rows:
        shutil.copytree(root / r["run_dir"].replace("_r64", "_n320"), root / r["evaluated_dir"])
    with open(root / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    records = learning_curve_records(root)
    assert len(records) == 6 and all(folder.parent.name == "evaluate" for folder, *_ in records)
    assert {r["seed"] for r in learning_curve_rows(records)} == {3}
    assert report_sections.grid_axes(None, [root])["resolution"] == ["64 px", "the model's own input (CIFAKE: 32 px)"]


def test_a_grids_other_tiny_backbones_are_named_and_added_modules_show_their_own_rate(grid, tmp_path):
    """The scale names every tiny model study.json lists (not only the main cell's), and the methods
    text gives LoRA's own learning rate and shape, not the encoders' unused `lr`."""
    from cifake_lib.evaluation.scale import TINY_MARK, Scale, with_study_models

    for name, family in (("tiny_model", "clip"), ("tiny_siglip", "siglip")):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / TINY_MARK, {"family": family})
    write_json(tmp_path / "study.json", {"scale": {"tiny_models": ["tiny_model", "/moved/away/tiny_siglip"]}})
    scale = with_study_models(Scale(tiny_models=(str(tmp_path / "tiny_model"),)), [tmp_path])
    assert "CLIP and SigLIP" in scale.what() and "detectors' performance" in scale.caption()
    args = {"train": "lora", "lr": 1e-5, "lora_lr": 5e-4, "lora_rank": 8, "lora_alpha": 16, "lora_towers": "both"}
    settings = report._settings({"run": {"args": args}, "detector": {}, "path": str(tmp_path)})
    assert "learning rate 0.0005" in settings and "LoRA rank 8" in settings
    flyp = report._settings({"run": {"args": {**args, "train": "both"}}, "detector": {}, "path": str(tmp_path)})
    assert "learning rate 1e-05" in flyp and not any("LoRA" in x for x in flyp)


def test_report_has_the_study_sections_from_what_ran(grid, tmp_path):
    with checked_figures() as figures:
        path = report.build_report([grid], tmp_path, n_boot=50, saliency=False, embeddings=False)
    text = path.read_text()
    titles = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    for a, b in (("Related Works", "Methods"), ("Methods", "Pipeline"), ("Pipeline", "Algorithm"),
                 ("Quantitative results", "Learning curves"), ("Analysis", "Computer resources"),
                 ("Discussion", "Future Direction"), ("Future Direction", "References")):
        assert titles.index(a) + 1 == titles.index(b), titles
    related = report.section_text(path, "Related Works")
    for e in [*published.published_results(), *published.related_works()]:
        assert published.cite(e) in related
    assert "Moskowitz, Gaona & Peterson 2024" in related and "CIFAKE is not among their data" in related
    assert "arXiv:2404.08788" in report.section_text(path, "References")
    algo = report.section_text(path, "Algorithm")
    assert "finetune_n1000" in algo and "lr 1e-05" in algo and "5 linear warm-up steps" in algo
    assert "at each epoch's end and the last step, and every 2 steps: validation ROC AUC" in algo
    resources = report.section_text(path, "Computer resources")
    assert "6 run(s)" in resources and "21 s of wall time" in resources  # 2 x (2.5 + 3.5 + 4.5)
    assert "train size: 320, 1000, 4000" in report.section_text(path, "Pipeline")
    assert "No external test set was scored" in report.section_text(path, "Future Direction")
    assert "| probe | 4,000 |" in report.section_text(path, "Learning curves")
    assert {"learning_curves.png", "pipeline.png"} <= {p.name for p in report.linked_images(path)}
    assert all(not problems for problems in figures.values()), figures
    assert (tmp_path / "learning_curves.csv").is_file() and (tmp_path / "resources.csv").is_file()


def test_best_vs_runner_up_is_ranked_on_validation():
    def run(name, test_auc, val_auc):
        return {"name": name, "metrics": {"detector": "probe", "roc_auc": test_auc},
                "metrics_val": {"roc_auc": val_auc}}

    a, b, c = run("a", 0.99, 0.70), run("b", 0.80, 0.90), run("c", 0.75, 0.85)  # test order a, b, c
    pairs = main_pairs([a, b, c])
    assert [(x["name"], y["name"], why) for x, y, why in pairs] == [("b", "c", "best vs runner-up by validation AUC")]


def test_calibration_verdict_rests_on_a_paired_bootstrap():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 600)
    y = (rng.random(600) < p).astype(int)  # p is calibrated by construction
    overconfident = np.where(p >= 0.5, 0.99, 0.01)
    cis = compare.calibration_change_cis(y, overconfident, p, n_boot=300)
    assert cis["brier_change_ci95"][1] < 0 and cis["ece_change_ci95"][1] < 0  # clearly better after
    same = compare.calibration_change_cis(y, p, p, n_boot=50)
    assert same == {"ece_change_ci95": [0.0, 0.0], "brier_change_ci95": [0.0, 0.0]}
    row = {"ece_before": 0.2, "ece_after": 0.1, "brier_before": 0.3, "brier_after": 0.29, "sd_after": 0.3,
           "ece_change_ci95": [-0.15, -0.05], "brier_change_ci95": [-0.02, 0.01]}
    assert compare.calibration_verdict(row) == "ECE lower, Brier not distinguishable (paired bootstrap 95% CI)"
