"""What a notebook works on: a study's data, model and runs (CIFAKE_STUDY), or its own runs folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifake_lib.app.notebook import NotAStudy, notebook_context
from cifake_lib.core.errors import CifakeError


@pytest.fixture
def study_dir(tmp_path, monkeypatch) -> Path:
    """A study folder as `cifake run` leaves it: study.json and one finished run (the probe)."""
    out = tmp_path / "study"
    (out / "probe").mkdir(parents=True)
    (out / "probe" / "metrics.json").write_text("{}")
    record = {"preset": "smoke", "config_file": None, "data": "/data/cifake", "model": str(out / "tiny_model"),
              "config": {"run": {"stages": ["data", "probe"]},
                         "data": {"subset": "400:100", "val_fraction": 0.25, "seed": 3},
                         "report": {"n_boot": 50, "embeddings": 30}},
              "layout": {"report_runs": ["probe", "evaluate/probe"], "trained_runs": ["probe"],
                         "evaluated": ["evaluate/probe"], "seeds": [3], "main_runs": {"probe": "probe"}}}
    (out / "study.json").write_text(json.dumps(record))
    monkeypatch.setenv("CIFAKE_STUDY", str(out))
    monkeypatch.delenv("CIFAKE_RUNS", raising=False)
    return out


def test_a_study_gives_its_data_model_runs_and_report_settings(study_dir):
    ctx = notebook_context()
    assert ctx.reads_study and ctx.study == study_dir and ctx.runs == study_dir
    # The notebook's own subset is not used: the study's data, as the study loaded it.
    cfg = ctx.data_config(subset=(2000, 1000), val_fraction=0.1, seed=0)
    assert (cfg.data, cfg.subset, cfg.val_fraction, cfg.seed) == ("/data/cifake", (400, 100), 0.25, 3)
    assert ctx.source == "/data/cifake" and ctx.clip_model() == str(study_dir / "tiny_model")
    assert ctx.report_inputs() == [study_dir / "probe", study_dir / "evaluate" / "probe"]
    settings = ctx.report_config(n_boot=7, gallery=2)
    assert (settings.n_boot, settings.embeddings, settings.gallery) == (50, 30, 8)  # the study's, else defaults
    assert ctx.study_run("probe") == study_dir / "probe"
    assert "nothing is trained or written" in ctx.describe() and str(study_dir) in ctx.describe()


def test_a_run_the_study_lacks_is_a_clear_error(study_dir):
    with pytest.raises(CifakeError, match=r"no 'finetune' run folder .*trained runs: probe"):
        notebook_context().study_run("finetune")


def test_a_folder_without_study_json_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAKE_STUDY", str(tmp_path))
    with pytest.raises(NotAStudy, match=str(tmp_path)):
        notebook_context()


def test_on_its_own_the_notebook_chooses_and_writes_under_cifake_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAKE_STUDY", raising=False)
    monkeypatch.setenv("CIFAKE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CIFAKE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CIFAKE_SMOKE", "1")
    ctx = notebook_context()
    assert not ctx.reads_study and ctx.runs == tmp_path / "runs" and ctx.source == str(tmp_path / "data")
    cfg = ctx.data_config(subset=(400, 200), val_fraction=0.2, seed=1)
    assert (cfg.subset, cfg.val_fraction, cfg.seed) == ((400, 200), 0.2, 1)
    assert ctx.report_config(n_boot=7).n_boot == 7 and ctx.report_inputs() == [tmp_path / "runs"]
    with pytest.raises(ValueError, match="CIFAKE_STUDY"):
        ctx.study_run("probe")
    # Smoke mode: a tiny CLIP under the runs folder, written once and then reused as it is.
    model = Path(ctx.clip_model())
    assert model == tmp_path / "runs" / "tiny_clip" and (model / "config.json").is_file()
    stamp = (model / "config.json").stat().st_mtime_ns
    assert Path(notebook_context().clip_model()) == model and (model / "config.json").stat().st_mtime_ns == stamp


def test_load_data_loads_the_studys_subset(study_dir, sample_dir):
    record = json.loads((study_dir / "study.json").read_text())
    (study_dir / "study.json").write_text(json.dumps({**record, "data": str(sample_dir)}))
    data = notebook_context().load_data(subset=(2000, 1000), progress=False)
    assert (len(data.train) + len(data.val), len(data.test)) == (400, 100)
    assert len(data.val) == 100  # the study's validation fraction, 0.25


def test_a_relative_or_moved_study_finds_its_own_model_and_its_seed_runs(study_dir):
    """study.json may record the smoke model as `smoke/tiny_model` (a relative --out) or as an absolute
    path that no longer exists (a moved study): the model folder inside the study is used."""
    (study_dir / "tiny_model").mkdir()
    (study_dir / "tiny_model" / "config.json").write_text("{}")
    record = json.loads((study_dir / "study.json").read_text())
    for recorded in ("smoke/tiny_model", "/gone/elsewhere/tiny_model"):
        (study_dir / "study.json").write_text(json.dumps({**record, "model": recorded}))
        assert notebook_context().clip_model() == str(study_dir / "tiny_model")
    (study_dir / "study.json").write_text(json.dumps({**record, "model": "openai/clip-vit-base-patch32"}))
    assert notebook_context().clip_model() == "openai/clip-vit-base-patch32"  # a Hub id stays one
    # --seeds 1,2: the first seed's probe is probe_seed1, as study.json's layout says
    (study_dir / "probe_seed1").mkdir()
    layout = {**record["layout"], "main_runs": {"probe": "probe_seed1"}}
    (study_dir / "study.json").write_text(json.dumps({**record, "layout": layout}))
    ctx = notebook_context()
    assert ctx.run_dir("probe") == ctx.study_run("probe") == study_dir / "probe_seed1"
    assert ctx.run_dir("cnn") == study_dir / "runs" / "cnn"  # not in main_runs: the grid's folder rule


def test_a_study_without_a_model_is_never_written_into(study_dir):
    record = json.loads((study_dir / "study.json").read_text())
    (study_dir / "study.json").write_text(json.dumps({**record, "model": None}))
    with pytest.raises(CifakeError, match="records no model"):
        notebook_context().clip_model()
    assert not (study_dir / "tiny_clip").exists()
