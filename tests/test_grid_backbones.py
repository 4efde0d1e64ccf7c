"""The study grid along its backbones and input sizes: three tiny families (CLIP, SigLIP, DINOv2)
with zero-shot, the probe, FLYP and LoRA; the pairs an image-only encoder cannot make are skipped
with their reason; the report has the backbone table and the paired comparisons."""

from __future__ import annotations

import pytest

from cifake_lib.app.pipeline import load_config, plan_study, run_study
from cifake_lib.evaluation.study import read_index

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = """
[run]
stages = ["data", "zeroshot", "probe", "finetune", "evaluate", "report"]
models = ["tiny", "tiny-siglip", "tiny-dinov2"]
methods = ["zeroshot", "probe", "flyp", "lora"]
[data]
subset = "400:100"
[zeroshot]
prompts = "plain"
figures = false
n_boot = 200
[probe]
figures = false
n_boot = 200
[finetune]
max_steps = 2
batch_size = 32
[evaluate]
n_boot = 200
[report]
embeddings = 0
saliency = false
n_boot = 200
gallery = 2
"""


@pytest.fixture(scope="module")
def study(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone_grid")
    (root / "grid.toml").write_text(GRID)
    lines: list[str] = []
    run_study(preset="smoke", data=str(sample_dir), config_file=root / "grid.toml", out=root / "S", log=lines.append)
    again = run_study(preset="smoke", data=str(sample_dir), config_file=root / "grid.toml", out=root / "S",
                      log=lambda m: None)  # the tiny models exist now: planned from their own config.json
    return {"out": root / "S", "log": lines, "again": again}


def test_impossible_pairs_are_skipped_with_their_reason_and_said_once(study):
    rows = {(r["method"], r["model"]): r for r in read_index(study["out"])}
    assert len(rows) == 12
    skipped = {k for k, r in rows.items() if r["status"] == "skipped"}
    assert skipped == {("zeroshot", "tiny-dinov2"), ("flyp", "tiny-dinov2")}
    assert all(rows[k]["reason"].startswith("no text tower") and not rows[k]["command"] for k in skipped)
    assert all(r["status"] == "complete" for k, r in rows.items() if k not in skipped)
    said = [line for line in study["log"] if line.startswith("skipped, ")]
    assert len(said) == 2 and any("zeroshot on tiny-dinov2" in line for line in said)
    assert not (study["out"] / "runs" / "flyp_m-tiny-dinov2").exists()
    statuses = [s["status"] for s in study["again"]["steps"]]  # the same command again: nothing to do
    assert "ran" not in statuses and statuses.count("skipped") == 22


def test_report_has_the_backbone_table_and_paired_comparisons(study):
    report = (study["out"] / "report" / "report.md").read_text()
    section = report.split("## Along the backbone")[1].split("\n## ")[0]
    assert "| method | tiny | tiny-siglip | tiny-dinov2 |" in section
    assert "| zeroshot (roc auc) |" in section and "skipped\\*" in section and "no text tower" in section
    assert "| tiny-siglip |" in section and "| tiny-dinov2 |" in section and "DeLong" in section
    assert (study["out"] / "report" / "backbone_comparisons.csv").is_file()
    assert (study["out"] / "report" / "grid_model.png").stat().st_size > 5000
    pipeline = report.split("## Pipeline")[1].split("\n## ")[0]  # the data stage's duplicate counts
    assert "validation image(s) with a pixel-identical twin in train were dropped" in pipeline


def test_the_resolution_axis_names_its_runs_and_sets_their_input(tmp_path):
    """image_sizes = [32, 16]: every method with a backbone once per side (r<side> in the folder of
    the sides after the first... and of the first, since the default is the model's own), the CNN once."""
    config = load_config("smoke")
    config["run"].update(methods=["zeroshot", "probe", "flyp", "cnn"], image_sizes=[32, 16])
    p = plan_study(config, tmp_path / "S", "data")
    runs = {s.out.name: s for s in p.steps if s.key is not None}
    assert set(runs) == {"zeroshot_r32", "zeroshot_r16", "probe_r32", "probe_r16", "flyp_r32", "flyp_r16", "cnn"}
    assert runs["flyp_r16"].cfg.image_size == 16 and runs["probe_r32"].cfg.image_size == 32
    assert ["--image-size", "16"] == runs["flyp_r16"].argv[runs["flyp_r16"].argv.index("--image-size"):][:2]
    assert p.layout["main_runs"]["flyp"] == "runs/flyp_r32"  # the main cell: the first input size
