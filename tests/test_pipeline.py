"""`cifake run`: the smoke preset end to end on real images, interrupted and resumed.

One study is run twice (CI time is precious): first paused inside fine-tuning (stop_after),
then re-run; the second run must skip finished stages and resume fine-tuning.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from figure_checks import checked_figures
from PIL import Image

from cifake_lib.app.cli import main as cli_main
from cifake_lib.app.pipeline import PipelineError, load_config, plan, run_study, to_argv

DETECTORS = ("zeroshot", "probe", "finetune", "cnn")


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
                                                      out / "zeroshot" / "summary.csv", out / "probe" / "metrics.json"]}
        time.sleep(0.01)
        second_log: list[str] = []
        second = run_study(preset="smoke", data=str(sample_dir), out=out, log=second_log.append)
    return {"out": out, "first": first, "second": second, "finished": finished,
            "first_log": first_log, "second_log": second_log, "figures": figures}


def _status(record: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in record["steps"]}


def test_first_run_pauses_inside_fine_tuning(study):
    status = _status(study["first"])
    assert status == {"data": "ran", "zeroshot": "ran", "probe": "ran", "finetune": "stopped"}
    assert study["first"]["stopped_at"] == "finetune"
    ft = study["out"] / "finetune"
    assert any((ft / "checkpoints").iterdir())


def test_rerun_skips_finished_stages_and_resumes_fine_tuning(study):
    status = _status(study["second"])
    assert [status[s] for s in ("data", "zeroshot", "probe")] == ["skipped"] * 3
    assert status["finetune"] == "ran"
    assert any("finetune: resuming" in line for line in study["second_log"])
    assert all(v == "ran" for k, v in status.items() if k not in ("data", "zeroshot", "probe"))
    for path, mtime in study["finished"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"


def test_every_stage_wrote_its_outputs(study):
    import json

    out = study["out"]
    for det in DETECTORS:
        folder = out / det if det != "zeroshot" else next((out / "zeroshot").glob("*/metrics.json")).parent
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
    bad_option = tmp_path / "bad_option.toml"
    bad_option.write_text("[cnn]\nepochz = 1\n")
    with pytest.raises(PipelineError, match="stage cnn"):
        run_study(preset="smoke", data=str(sample_dir), config_file=bad_option, out=tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()


def test_config_overrides_and_argv():
    assert to_argv({"batch_size": 64, "dedup": True, "skip_bad": False, "train": ["text", "image"],
                    "subset": None}) == ["--batch-size", "64", "--dedup", "--train", "text,image"]
    config = load_config("report")
    assert config["run"]["model"] == "openai/clip-vit-base-patch32"
    steps = plan(config, Path("/tmp/o"), "hf", "openai/clip-vit-base-patch32")
    names = [s.name for s in steps]
    assert names[:4] == ["data", "zeroshot", "probe", "finetune"]
    assert {"finetune_image", "finetune_text", "cnn", "robustness", "report"} <= set(names)
    ablation = next(s for s in steps if s.name == "finetune_text")
    assert ablation.argv[ablation.argv.index("--train") + 1] == "text"
