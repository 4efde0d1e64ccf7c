"""The study grid: axes from [run], one folder and one index row per run, resume at the grid's grain.

One small grid is run end to end (fine-tuning only, two steps a run) and then widened by one
training-set size: the second invocation must run only the new runs.
"""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cifake_lib.app import pipeline
from cifake_lib.app.pipeline import PipelineError, load_config, plan_study, run_study
from cifake_lib.core.files import read_json
from cifake_lib.evaluation.study import RunKey, index_runs, read_index

GRID = """
[run]
stages = ["data", "{stage_a}", "{stage_b}", "evaluate", "report"]
methods = [{methods}]
seeds = [0, 1]
train_sizes = [{sizes}]
[data]
subset = "400:100"
[finetune]
max_steps = 2
batch_size = 32
[cnn]
epochs = 1
[report]
embeddings = 0
saliency = false
"""


def _grid(tmp_path: Path, sizes: str, methods: tuple[str, str] = ("flyp", "ce"),
          stages: tuple[str, str] = ("finetune", "cnn")) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(sizes=sizes, methods=", ".join(f'"{m}"' for m in methods), stage_a=stages[0],
                                stage_b=stages[1]))
    return path


# The end-to-end grid trains the probe and the CNN (seconds each): the grid's logic does not depend
# on the method, and the plan test above checks the fine-tuning grid the issue names.
FAST = {"methods": ("probe", "cnn"), "stages": ("probe", "cnn")}


def test_the_folder_rule_is_stable_when_an_axis_grows():
    default = RunKey("", "tiny", None, 0)
    assert RunKey("flyp", "tiny", None, 0).folder(default) == "flyp"
    assert RunKey("flyp", "tiny", 500, 1).folder(default) == "flyp_n500_seed1"
    assert RunKey("probe", "openai/clip-vit-base-patch16", None, 0).folder(default) == "probe_m-openai-clip-vit-base-patch16"
    assert RunKey("cnn", None, 500, 0).folder(default) == "cnn_n500"  # the CNN has no backbone


def test_plan_of_the_done_when_grid(tmp_path):
    """methods x seeds x train_sizes on the smoke preset: 8 fine-tunes, one folder and key each."""
    config = load_config("smoke", _grid(tmp_path, "500, 2000"))
    config["data"]["subset"] = "5000:400"  # 4,000 training images after validation: room for 2,000
    p = plan_study(config, tmp_path / "S", "data")
    runs = [s for s in p.steps if s.key is not None]
    assert len(runs) == 8 and {s.stage for s in runs} == {"finetune"}
    keys = {(s.key.method, s.key.train_size, s.key.seed) for s in runs}
    assert keys == {(m, n, s) for m in ("flyp", "ce") for n in (500, 2000) for s in (0, 1)}
    assert len({s.out for s in runs}) == 8 and all(s.out.parent == tmp_path / "S" / "runs" for s in runs)
    ce = next(s for s in runs if s.key == RunKey("ce", "tiny", 2000, 1))
    assert ce.cfg.loss == "ce" and ce.cfg.seed == 1 and ce.data.train_size == 2000 and ce.data.seed == 0
    assert ["--train-size", "2000"] == ce.argv[ce.argv.index("--train-size"):][:2]
    # evaluate scores every run on the same (whole-split-deduplicated) test images
    assert all(s.data.train_size is None for s in p.steps if s.stage == "evaluate")


def test_print_plan_lists_every_run_and_imports_no_torch(sample_dir, tmp_path):
    grid = _grid(tmp_path, "100, 200")  # fine-tuning: planned, not run
    out = tmp_path / "My Drive" / "S"  # a space, as in Colab's Drive: every command is shell-quoted
    code = ("import sys\nfrom cifake_lib.app.cli import main\n"
            f"rc = main(['run', '--preset', 'smoke', '--data', {str(sample_dir)!r}, '--config', {str(grid)!r}, "
            f"'--out', {str(out)!r}, '--print-plan'])\n"
            "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert {len(cells) for cells in lines} == {len(lines[0])}  # every step under the header's columns
    rows = list(csv.DictReader(done.stdout.splitlines(), delimiter="\t"))
    runs = [r for r in rows if r["seed"]]
    assert len(runs) == 8 and all(r["status"] == "planned" for r in runs)
    assert all(r["command"].startswith("cifake finetune ") and "--out" in r["command"] for r in runs)
    argvs = [shlex.split(r["command"]) for r in rows]
    assert all(a[a.index("--out") + 1].startswith(str(out)) for a in argvs if "--out" in a) and len(argvs) > 8
    assert not out.exists()  # nothing ran, nothing was written


def test_bad_axes_are_refused_before_anything_runs(tmp_path):
    config = load_config("smoke")
    config["run"]["methods"] = ["flyp", "lora-typo"]
    with pytest.raises(PipelineError, match="unknown lora-typo"):
        plan_study(config, tmp_path, "data")
    config = load_config("smoke")
    config["run"]["train_sizes"] = [100, 100]
    with pytest.raises(ValueError, match="train_sizes must be distinct"):
        plan_study(config, tmp_path, "data")
    config = load_config("smoke")  # subset 1600:400, val_fraction 0.2: 1,280 training images
    config["run"]["train_sizes"] = [500, 2000]
    with pytest.raises(PipelineError, match=r"train_sizes 2000: more than the 1280 training images that \[data\] "
                                            r"subset = 1600:400 leaves after the validation split"):
        plan_study(config, tmp_path, "data")
    config["run"]["train_sizes"] = [500, 1280]  # the whole training split fits
    assert plan_study(config, tmp_path, "data").sizes == [500, 1280]
    config = load_config("smoke")  # the axes' defaults by name: a study widened keeps its existing runs
    config["run"].update(train_sizes=["all", 500], image_sizes=["own", 16])
    plan = plan_study(config, tmp_path, "data")
    assert (plan.sizes, plan.image_sizes) == ([None, 500], [None, 16])
    folders = {s.out.name for s in plan.steps if s.key is not None and s.key.method == "flyp"}
    assert {"flyp", "flyp_n500", "flyp_r16", "flyp_n500_r16"} <= folders
    config["run"]["train_sizes"] = ["every", 500]
    with pytest.raises(ValueError, match="an integer or 'all', got 'every'"):
        plan_study(config, tmp_path, "data")
    config = load_config("smoke")  # external sets: found at plan time, one results folder each
    config["run"]["external"] = [str(tmp_path / "nowhere")]
    with pytest.raises(PipelineError, match="nowhere' not found"):
        plan_study(config, tmp_path, "data")
    for d in ("a/ext", "b/ext"):
        (tmp_path / d).mkdir(parents=True)
    config["run"]["external"] = [str(tmp_path / "a/ext"), str(tmp_path / "b/ext")]
    with pytest.raises(PipelineError, match="are both named 'ext'"):
        plan_study(config, tmp_path, "data")


@pytest.fixture(scope="module")
def grid_study(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    out = root / "S"
    first = run_study(preset="smoke", data=str(sample_dir), config_file=_grid(root, "100, 200", **FAST), out=out,
                      log=lambda m: None)
    rows_before = read_index(out)
    mtimes = {r["run_dir"]: (out / r["run_dir"] / "metrics.json").stat().st_mtime_ns for r in rows_before}
    second = run_study(preset="smoke", data=str(sample_dir), config_file=_grid(root, "100, 200, 300", **FAST),
                       out=out, log=lambda m: None)
    return {"out": out, "first": first, "second": second, "rows_before": rows_before, "mtimes": mtimes}


def test_index_has_a_row_per_run_with_its_key_and_status(grid_study):
    rows = grid_study["rows_before"]
    assert len(rows) == 8 and all(r["status"] == "complete" for r in rows)
    assert {"method", "model", "train_size", "seed", "run_dir", "status", "seconds", "roc_auc",
            "leak_free_roc_auc"} <= set(rows[0])
    assert {(r["method"], r["train_size"], r["seed"]) for r in rows} == {
        (m, n, s) for m in ("probe", "cnn") for n in ("100", "200") for s in ("0", "1")}
    assert {r["model"] for r in rows if r["method"] == "cnn"} == {""}  # the CNN has no backbone
    out = grid_study["out"]
    for r in rows:  # the row's numbers are its run's
        import json

        m = json.loads((out / r["run_dir"] / "metrics.json").read_text())
        assert float(r["roc_auc"]) == m["roc_auc"] and m["n"] == 100
        assert len(open(out / r["run_dir"] / "predictions_val.csv").readlines()) - 1 == 80  # one val split for all


def test_widening_an_axis_runs_only_the_new_runs(grid_study):
    ran = [s["name"] for s in grid_study["second"]["steps"] if s["status"] == "ran"]
    trained = [n for n in ran if not n.startswith(("evaluate:", "report"))]
    assert sorted(trained) == sorted(["probe_n300", "probe_n300_seed1", "cnn_n300", "cnn_n300_seed1"])
    assert sorted(n for n in ran if n.startswith("evaluate:")) == sorted(f"evaluate:{n}" for n in trained)
    assert "report" in ran  # the report follows the grid
    out = grid_study["out"]
    for run_dir, mtime in grid_study["mtimes"].items():
        assert (out / run_dir / "metrics.json").stat().st_mtime_ns == mtime, f"{run_dir} was re-run"
    assert len(read_index(out)) == 12 and len(index_runs(out, method="cnn", train_size=300)) == 2


def test_report_has_a_table_and_a_figure_along_train_size(grid_study):
    report = (grid_study["out"] / "report" / "report.md").read_text()
    assert "Learning curves" in report
    section = report.split("Learning curves")[1].split("\n## ")[0]
    assert "learning_curves.png" in section and (grid_study["out"] / "report" / "learning_curves.png").is_file()
    for n in ("100", "200", "300"):  # every size of the grid, both methods, both seeds
        assert f"| cnn | {n} | 1 |" in section and f"| probe | {n} | 0 |" in section


def test_report_axes_and_resources_come_from_the_whole_grid(grid_study):
    """The Pipeline's axes and the Computer resources table read the study's index, not only the main
    cell's runs (the report is given those): every size and seed, every run's seconds."""
    from cifake_lib.analysis.report import section_text

    path = grid_study["out"] / "report" / "report.md"
    assert "train size: 100, 200, 300; seed: 0, 1" in section_text(path, "Pipeline")
    resources = section_text(path, "Computer resources")
    rows = read_index(grid_study["out"])
    assert f"{len(rows)} run(s) on " in resources and "from the study's runs.csv" in resources
    assert all(f"| {r['run_dir']} | {r['method']} | {r['train_size']} | {r['seed']} | complete |" in resources
               for r in rows)


def test_axis_table_holds_the_other_axes_and_averages_seeds(tmp_path):
    from cifake_lib.analysis.grid import axis_markdown, axis_rows

    rows = [{"method": m, "model": model, "train_size": "all", "seed": str(s), "status": "complete",
             "run_dir": "x", "roc_auc": str(auc + s / 100), "accuracy": "0.5"}
            for m, model, auc in (("probe", "a", 0.7), ("probe", "b", 0.8), ("cnn", "", 0.6)) for s in (0, 1)]
    table = axis_rows(tmp_path, rows, "model")
    assert {(r["method"], r["value"]) for r in table} == {("probe", "a"), ("probe", "b")}  # the CNN has no backbone
    b = next(r for r in table if r["value"] == "b")
    assert b["n_seeds"] == 2 and b["roc_auc"] == pytest.approx(0.805) and b["roc_auc_sd"] == pytest.approx(0.00707, abs=1e-5)
    assert "| probe (roc auc) | 0.7050 ± 0.0071 | 0.8050 ± 0.0071 |" in axis_markdown(table, "model")


def test_predict_on_a_study_picks_from_the_index(grid_study):
    from cifake_lib.methods.detectors import best_run_on_val

    best, auc = best_run_on_val(grid_study["out"])
    assert best in index_runs(grid_study["out"]) and 0 <= auc <= 1


def test_pipeline_module_is_torch_free():
    code = "import sys, cifake_lib.app.pipeline; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert pipeline.print_plan  # the entry point exists


def test_a_step_that_fails_with_any_error_is_recorded_as_failed(sample_dir, tmp_path, monkeypatch):
    """A write error (or any other) inside a step marks it failed in pipeline.json and runs.csv before
    it propagates with its own message; the steps before it stay complete."""
    real = pipeline.run_step

    def failing(step):
        if step.name == "flyp":
            raise PermissionError(13, "Permission denied", str(step.out))
        return real(step)

    monkeypatch.setattr(pipeline, "run_step", failing)
    out = tmp_path / "S"
    with pytest.raises(PermissionError):
        run_study(preset="smoke", data=str(sample_dir), config_file=None, out=out,
                  run_overrides={"stages": ["data", "finetune"], "methods": ["flyp"]})
    steps = {s["name"]: s["status"] for s in read_json(out / "pipeline.json")["steps"]}
    assert steps == {"data": "ran", "flyp": "failed"}
    assert [r["status"] for r in read_index(out) if r["method"] == "flyp"] == ["failed"]
