"""`cifake run`: the smoke preset end to end on real images, interrupted and resumed.

One study is run twice (CI time is precious): first paused inside fine-tuning (stop_after),
then re-run; the second run must skip finished stages and resume fine-tuning.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from figure_checks import checked_figures
from PIL import Image

from cifake_lib.app import pipeline
from cifake_lib.app.cli import main as cli_main
from cifake_lib.app.pipeline import PipelineError, load_config, plan, run_study
from cifake_lib.evaluation.runs import read_study

DETECTORS = ("zeroshot", "probe", "flyp", "cnn")


@pytest.fixture(scope="module")
def study(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out = root / "study"
    pause = root / "pause.toml"
    pause.write_text("[finetune]\nstop_after = 10\n")
    first_log: list[str] = []
    with checked_figures() as figures:
        first = run_study(preset="smoke", data=str(sample_dir), config_file=pause, out=out, log=first_log.append)
        finished = {p: p.stat().st_mtime_ns for p in [out / "data" / "summary.json",
                                                      out / "runs" / "zeroshot" / "summary.csv",
                                                      out / "runs" / "probe" / "metrics.json"]}
        time.sleep(0.01)
        second_log: list[str] = []
        second = run_study(preset="smoke", data=str(sample_dir), out=out, log=second_log.append)
    return {"out": out, "first": first, "second": second, "finished": finished,
            "first_log": first_log, "second_log": second_log, "figures": figures}


def _status(record: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in record["steps"]}


def test_first_run_pauses_inside_fine_tuning(study):
    status = _status(study["first"])
    assert status == {"data": "ran", "zeroshot": "ran", "probe": "ran", "flyp": "stopped"}
    assert study["first"]["stopped_at"] == "flyp"
    ft = study["out"] / "runs" / "flyp"
    assert any((ft / "checkpoints").iterdir())


def test_rerun_skips_finished_stages_and_resumes_fine_tuning(study):
    status = _status(study["second"])
    assert [status[s] for s in ("data", "zeroshot", "probe")] == ["skipped"] * 3
    assert status["flyp"] == "ran"
    assert any("flyp: resuming" in line for line in study["second_log"])
    assert all(v == "ran" for k, v in status.items() if k not in ("data", "zeroshot", "probe"))
    for path, mtime in study["finished"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"


def test_every_stage_wrote_its_outputs(study):
    import json

    out = study["out"]
    for det in DETECTORS:
        folder = out / "runs" / det if det != "zeroshot" else next((out / "runs" / "zeroshot").glob("*/metrics.json")).parent
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["split"] == "test" and metrics["n"] == 400
        assert (folder / "predictions.csv").is_file() and (folder / "detector.json").is_file()
    assert (out / "robustness" / "robustness.csv").is_file()
    evaluated = json.loads((out / "evaluate" / "cnn" / "metrics.json").read_text())
    assert evaluated["n"] <= 400  # --dedup: test images that also occur in train are dropped


def test_report_links_only_existing_images(study):
    report = study["out"] / "report" / "report.md"
    text = report.read_text()
    for section in ("Quantitative results", "Qualitative results", "Analysis", "Discussion"):
        assert f"## {section}" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 5
    # pretrained vs fine-tuned CLIP embeddings, from the fine-tuning run's base model
    assert "embeddings.png" in images and "fine-tuned (finetune:both)" in text
    for name in images:
        with Image.open(report.parent / name) as im:
            im.verify()


def test_every_figure_keeps_its_text_inside_and_no_legend_covers_a_bar(study):
    """Each figure the smoke study saves, checked as saved: text inside the image, legends clear of bars."""
    pngs = {str(p) for p in study["out"].rglob("*.png")}
    assert pngs and pngs <= set(study["figures"]), f"saved outside save_figure: {pngs - set(study['figures'])}"
    assert any(p.endswith("compare_auc.png") for p in pngs) and any("saliency" in p for p in pngs)
    problems = {path: found for path, found in study["figures"].items() if found}
    assert not problems, "\n".join(f"{p}: {f}" for p, f in problems.items())


def test_notebooks_read_the_study_and_write_no_runs(study, sample_dir):
    """`cifake run --notebooks` on a finished study: the four notebooks run for real, read the study's
    runs (nothing below OUT/notebooks but the executed copies), rewrite nothing of the study, and
    notebook 04 shows report.md's own tables."""
    import nbformat

    out = study["out"]
    def study_files() -> dict[Path, int]:
        # study.json and pipeline.json are the pipeline's own record of each invocation
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
                and p.name not in ("pipeline.json", "study.json") and "notebooks" not in p.relative_to(out).parts}

    before = study_files()
    record = run_study(preset="smoke", data=str(sample_dir), out=out, notebooks=True, log=lambda m: None)
    assert {s["name"]: s["status"] for s in record["steps"] if s["status"] != "skipped"} == {"notebooks": "ran"}
    written = sorted(p.relative_to(out / "notebooks").as_posix() for p in (out / "notebooks").rglob("*")
                     if p.is_file())
    assert written == ["01_data.ipynb", "02_zero_shot.ipynb", "03_fine_tune.ipynb", "04_analysis.ipynb",
                       "notebooks.json"]
    assert not list((out / "notebooks").rglob("metrics.json"))
    after = study_files()
    assert after == before, f"reading the study, the notebooks wrote or rewrote {sorted(set(after.items()) ^ set(before.items()))}"
    nb = nbformat.read(out / "notebooks" / "04_analysis.ipynb", as_version=4)
    shown = "\n".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb.cells
                      for o in c.get("outputs", []))
    report = (out / "report" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(rows) > 20 and [r for r in rows if r not in shown] == []
    assert "the leak-free test split" in shown.lower() or "Leak-free test split" in shown
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"runs: the study's, in {out.resolve()} (read only" in text


def test_smoke_preset_without_local_data_fails_at_once(tmp_path):
    start = time.perf_counter()
    with pytest.raises(PipelineError, match="Kaggle"):
        run_study(preset="smoke", data="hf", out=tmp_path / "x")
    assert time.perf_counter() - start < 5
    assert cli_main(["run", "--preset", "smoke", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2


def test_config_errors_are_caught_before_anything_runs(tmp_path, sample_dir):
    bad_table = tmp_path / "bad_table.toml"
    bad_table.write_text("[fintune]\nepochs = 1\n")
    with pytest.raises(PipelineError, match=r"unknown table \[fintune\]"):
        load_config("smoke", bad_table)
    for text, message in (("[cnn]\nepochz = 1\n", r"\[cnn\] unknown setting 'epochz' \(did you mean 'epochs'\?\)"),
                          ("[finetune]\nepochs = 'two'\n", r"\[finetune\] \(flyp\) epochs must be an integer"),
                          ("[probe]\nhidden = 0\n", r"\[probe\] hidden must be >= 1"),
                          ("[evaluate]\nmodel = 'x'\n", "set by the study itself")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(PipelineError, match=message):
            run_study(preset="smoke", data=str(sample_dir), config_file=bad, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plan_and_command_lines():
    config = load_config("report")
    assert config["run"]["model"] == "openai/clip-vit-base-patch32"
    steps = plan(config, Path("/tmp/o"), "hf")
    names = [s.name for s in steps]
    assert names[:5] == ["data", "zeroshot", "probe", "layers", "flyp"]
    assert {"image", "text", "ce", "prompt", "lora", "adapter", "cnn", "robustness", "report"} <= set(names)
    ablation = next(s for s in steps if s.name == "text")
    assert ablation.out == Path("/tmp/o/runs/text") and ablation.cfg.wise_ft is None
    assert ablation.argv[ablation.argv.index("--train") + 1] == "text" and ablation.cfg.train == "text"
    assert ablation.cfg.lr == 1e-5 and ablation.cfg.batch_size == 128  # the [finetune] table, then the ablation
    report = next(s for s in steps if s.stage == "report")
    assert report.argv[report.argv.index("--runs") + 1] == "/tmp/o" and report.cfg.runs == ["/tmp/o"]
    evaluate = next(s for s in steps if s.name == "evaluate:cnn")
    assert evaluate.data.dedup and not next(s for s in steps if s.name == "cnn").data.dedup
    assert next(s for s in steps if s.name == "flyp").cfg.wise_ft == [0, 0.25, 0.5, 0.75, 1]
    # Every command line parses back to the same settings.
    from cifake_lib.app import stages
    from cifake_lib.app.cli import build_parser
    from cifake_lib.core.config import build, given

    for step in steps:
        args = build_parser().parse_args(step.argv)
        cls = stages.STAGES[step.stage].classes
        if cls:
            assert build(cls[0], given(args, cls[0])) == step.cfg, step.name


def test_seeds_plan_names_and_training_seed():
    config = load_config("report")
    config["run"]["seeds"] = [0, 1, 2]
    steps = plan(config, Path("/tmp/o"), "hf")
    names = [s.name for s in steps]
    assert names.count("zeroshot") == 1
    for base in ("probe", "flyp", "image", "cnn"):
        assert {base, f"{base}_seed1", f"{base}_seed2"} <= set(names)
    seed2 = next(s for s in steps if s.name == "flyp_seed2")
    assert seed2.cfg.seed == 2 and "--train-seed" in seed2.argv and seed2.data.seed == 0
    assert next(s for s in steps if s.name == "cnn_seed1").cfg.train.seed == 1
    assert next(s for s in steps if s.name == "probe_seed1").cfg.train_seed == 1
    assert "evaluate:cnn_seed2" in names
    robustness = next(s for s in steps if s.stage == "robustness")
    assert not any("seed" in Path(r).name for r in robustness.cfg.runs)  # the first seed's runs only
    # The notebooks and the headline show the first seed's run of each method, whatever its name.
    config["run"]["seeds"] = [2, 0]
    layout = pipeline.plan_study(config, Path("/tmp/o"), "hf").layout
    main = layout["main_runs"]
    assert {k: main[k] for k in ("zeroshot", "probe", "finetune", "flyp", "image", "cnn")} == {
        "zeroshot": "runs/zeroshot", "probe": "runs/probe_seed2", "finetune": "runs/flyp_seed2",
        "flyp": "runs/flyp_seed2", "image": "runs/image_seed2", "cnn": "runs/cnn_seed2"}
    # study.json says where each folder of the layout before the grid went
    assert layout["renamed"]["finetune_image_seed2"] == "runs/image_seed2"
    assert layout["renamed"]["finetune"] == "runs/flyp" and layout["renamed"]["zeroshot"] == "runs/zeroshot"


def test_pipeline_calls_the_stages_not_the_cli():
    source = Path(pipeline.__file__).read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert "cifake_lib.app.cli" not in imported
    code = "import sys, cifake_lib.app.pipeline; assert 'cifake_lib.app.cli' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_study_json_and_old_config_json(study, tmp_path):
    out = study["out"]
    assert not (out / "config.json").exists()  # a study folder must not look like a model folder
    record = read_study(out)
    assert record["preset"] == "smoke" and record["layout"]["report_runs"][0] == "runs/zeroshot"
    assert "robustness" in record["layout"]["report_runs"] and "evaluate/cnn" in record["layout"]["evaluated"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"preset": "smoke", "config": {}, "data": "x", "model": "tiny"}))
    assert read_study(old)["data"] == "x"
    (old / "config.json").write_text(json.dumps({"model_type": "clip"}))  # a model's own config.json
    assert read_study(old) is None
    pipeline_record = json.loads((out / "pipeline.json").read_text())
    commands = {s["name"]: s["command"] for s in pipeline_record["steps"]}
    assert commands["cnn"].startswith("cifake cnn ") and "--epochs 2" in commands["cnn"]
    assert "--runs " + str(out) in commands["report"]


def _recorded_paths(folder: Path) -> list[str]:
    """Every folder the study's detector.json and metrics.json files name (model, base_model, the run scored)."""
    found = []
    for f in [*folder.rglob("detector.json"), *folder.rglob("metrics.json")]:
        record = json.loads(f.read_text())
        found += [str(record[k]) for k in ("model", "base_model") if isinstance(record.get(k), str)]
        found += [str((record.get("args") or {}).get("model") or "")]
    return [p for p in found if p]


def test_a_moved_study_keeps_every_detector_loadable(study, tmp_path, monkeypatch):
    """Copy the finished study, take the original away, and predict with every detector of the copy
    (each run folder, the zero-shot folder, the study itself), through the command and the library;
    the copy's notebooks find its tiny model."""
    import shutil

    from cifake_lib.app.notebook import notebook_context
    from cifake_lib.methods.detectors import load_detector

    out = study["out"]
    assert not [p for p in _recorded_paths(out) if p.startswith(str(out))], "a run recorded an absolute study path"
    copy = tmp_path / "elsewhere" / "copied_study"
    shutil.copytree(out, copy)
    away = out.with_name(out.name + "_away")
    image = next((Path(study["first"]["data"]) / "test" / "FAKE").glob("*.jpg"))
    out.rename(away)
    try:
        models = [copy / "runs" / d for d in ("probe", "flyp", "cnn", "zeroshot")]
        models += sorted(p.parent for p in (copy / "runs" / "zeroshot").glob("*/detector.json")) + [copy]
        for model in models:
            det = load_detector(model, note=lambda m: None)
            p = det.predict_proba(np.asarray(Image.open(image).convert("RGB"))[None])
            assert 0.0 <= float(p[0]) <= 1.0, model
        for name in ("probe", "zeroshot"):
            lines = subprocess.run([sys.executable, "-m", "cifake_lib", "predict", "--model",
                                    str(copy / "runs" / name), str(image)], capture_output=True, text=True)
            assert lines.returncode == 0, lines.stderr
            assert json.loads(lines.stdout)["label"] in ("REAL", "FAKE")
        monkeypatch.setenv("CIFAKE_STUDY", str(copy))
        assert notebook_context().clip_model() == str((copy / "tiny_model").resolve())
    finally:
        away.rename(out)


# --- training seeds, the notebooks stage ----------------------------------------------------------


@pytest.fixture(scope="module")
def seeds_study(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    cfg = root / "seeds.toml"
    cfg.write_text('[run]\nstages = ["data", "cnn"]\nseeds = [0, 1]\n[data]\nsubset = "400:100"\n'
                   '[cnn]\nepochs = 1\n')
    out = root / "study"
    record = run_study(preset="smoke", data=str(sample_dir), config_file=cfg, out=out, log=lambda m: None)
    return out, cfg, record


def test_two_seeds_same_split_different_weights(seeds_study):
    from cifake_lib.analysis.seeds import write_seed_table
    from cifake_lib.evaluation.metrics import read_predictions

    out, _, record = seeds_study
    assert [s["name"] for s in record["steps"]] == ["data", "cnn", "cnn_seed1"]
    a, b = out / "runs" / "cnn", out / "runs" / "cnn_seed1"
    val_a, val_b = read_predictions(a / "predictions_val.csv"), read_predictions(b / "predictions_val.csv")
    assert list(val_a["id"]) == list(val_b["id"]) and list(val_a["label"]) == list(val_b["label"])
    assert (a / "cnn.safetensors").read_bytes() != (b / "cnn.safetensors").read_bytes()
    seeds = [json.loads((d / "metrics.json").read_text())["seed"] for d in (a, b)]
    assert seeds == [0, 1]
    from cifake_lib.analysis.report_stage import study_inputs

    _, trained, _ = study_inputs([str(out)])
    assert trained == [(a, "cnn"), (b, "cnn")]
    trained = [d for d, _ in trained]
    rows = __import__("csv").DictReader(write_seed_table(trained, out / "seeds.csv").open())
    acc = next(r for r in rows if r["metric"] == "accuracy")
    values = [json.loads((d / "metrics.json").read_text())["accuracy"] for d in (a, b)]
    assert acc["n_seeds"] == "2" and float(acc["seed_1"]) == values[1]
    assert float(acc["mean"]) == pytest.approx(sum(values) / 2)


def test_notebooks_stage_runs_with_the_study_and_is_skipped_when_complete(seeds_study, sample_dir, monkeypatch,
                                                                          capsys):
    import nbformat

    out, cfg, _ = seeds_study
    seen: list[dict] = []

    def fake_execute(path, workdir, env, *, timeout):
        seen.append(dict(env))
        return nbformat.v4.new_notebook()

    monkeypatch.setattr(pipeline, "execute_notebook", fake_execute)
    argv = ["run", "--preset", "smoke", "--data", str(sample_dir), "--config", str(cfg), "--out", str(out),
            "--notebooks"]
    assert cli_main(argv) == 0
    # This study trained only CNNs: 02 (zero-shot, probe) and 03 (fine-tuning) have nothing to read.
    assert len(seen) == 2 and all(env["CIFAKE_STUDY"] == str(out.resolve()) for env in seen)
    assert all("CIFAKE_RUNS" not in env for env in seen)  # reading a study, a notebook writes no runs
    assert "1 step(s) ran" in capsys.readouterr().out  # the notebooks; the rest was complete
    done = json.loads((out / "notebooks" / "notebooks.json").read_text())["notebooks"]
    assert {n["name"]: n["status"] for n in done} == {
        "01_data": "ran", "02_zero_shot": "skipped: the study has no zeroshot, probe run",
        "03_fine_tune": "skipped: the study has no finetune run", "04_analysis": "ran"}
    assert cli_main(argv) == 0
    assert "0 step(s) ran, 4 already complete" in capsys.readouterr().out and len(seen) == 2
    # A fine-tuning run appears (a stage added later): the skipped notebook 03 is due, so the stage runs.
    (out / "runs" / "finetune").mkdir()
    (out / "runs" / "finetune" / "metrics.json").write_text("{}")
    try:
        assert cli_main(argv) == 0
        assert "1 step(s) ran" in capsys.readouterr().out and len(seen) == 2 + 3  # 01, 03 and 04
    finally:
        import shutil

        shutil.rmtree(out / "runs" / "finetune")


def test_notebook_kernel_uses_local_sockets(tmp_path):
    km = pipeline._kernel_manager(tmp_path)
    assert km.transport == ("ipc" if sys.platform != "win32" else "tcp")


def test_a_relative_data_path_is_recorded_absolute(sample_dir, tmp_path, monkeypatch):
    """The notebooks read study.json from another working directory: a relative --data must not break them."""
    import os

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "data_only.toml"
    cfg.write_text('[run]\nstages = ["data"]\n[data]\nsubset = "200:100"\n')
    run_study(preset="smoke", data=os.path.relpath(sample_dir, tmp_path), config_file=cfg, out="rel_study",
              log=lambda m: None)
    record = read_study(tmp_path / "rel_study")
    assert record["data"] == str(sample_dir.resolve())
