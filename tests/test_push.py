"""`cifake push`: a detector's run folder staged to load on its own, listed by --dry-run, and uploaded
through huggingface_hub (replaced here by a stand-in that keeps the upload on disk: never the network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cifake_lib.app.cli import main as cli_main
from cifake_lib.data.load import CifakeData
from cifake_lib.methods.detectors import load_detector


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory, sample_dir):
    """A zero-shot run of a tiny CLIP that lives beside the runs (as in a smoke study), on real images."""
    from cifake_lib.clip.tiny import write_tiny_clip
    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods import zeroshot
    from cifake_lib.methods.config import ZeroshotConfig

    study = tmp_path_factory.mktemp("push") / "study"
    tiny = write_tiny_clip(study / "tiny_model", seed=0)
    data = load_cifake(sample_dir, subset=(40, 20), val_fraction=0.25, seed=0, progress=False)
    zeroshot.run(data, ZeroshotConfig(model=str(tiny), prompts="plain", progress=False, figures=False),
                 study / "runs" / "zeroshot")
    return study / "runs" / "zeroshot" / "plain", data


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls, keeps each upload in a local folder."""

    uploads = Path()
    calls: list[tuple] = []

    def create_repo(self, repo_id, **kw):
        FakeHub.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, folder_path, repo_id, **kw):
        FakeHub.calls.append(("upload_folder", repo_id, kw))
        shutil.copytree(folder_path, FakeHub.uploads / repo_id)
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def test_dry_run_lists_a_self_contained_folder_and_touches_no_network(zero_shot_run, monkeypatch, capsys):
    import huggingface_hub

    run, _ = zero_shot_run
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any use of the Hub fails the test
    assert cli_main(["push", "--model", str(run), "--repo", "me/cifake-zs", "--dry-run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["url"] is None and "README.md" in result["files"] and "detector.json" in result["files"]
    assert "base_model/config.json" in result["files"] and "base_model/TINY_MODEL.json" in result["files"]
    assert (run / "README.md").read_text().count("Pipeline check, not a detector to use") == 1
    assert json.loads((run / "detector.json").read_text())["model"] == "../../../tiny_model"  # the run is untouched


def test_a_pushed_detector_loads_from_the_download_alone(zero_shot_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    run, data = zero_shot_run
    assert isinstance(data, CifakeData)
    FakeHub.uploads, FakeHub.calls = tmp_path / "hub", []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    assert cli_main(["push", "--model", str(run), "--repo", "me/cifake-zs", "--private"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert FakeHub.calls[0] == ("create_repo", "me/cifake-zs", {"private": True, "exist_ok": True,
                                                                 "repo_type": "model"})
    images = data.test.images[:6]
    want = load_detector(run, device="cpu").predict_proba(images)
    study = run.parent.parent.parent
    away = study.with_name("study_away")
    study.rename(away)  # the download must not need the study's tiny model where it was
    try:
        got = load_detector(FakeHub.uploads / "me" / "cifake-zs", device="cpu").predict_proba(images)
    finally:
        away.rename(study)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_push_refuses_what_it_cannot_push(tmp_path, capsys):
    assert cli_main(["push", "--model", str(tmp_path / "none"), "--repo", "me/x", "--dry-run"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli_main(["push", "--model", str(tmp_path), "--repo", "not-an-id", "--dry-run"]) == 2
    assert "expected an id like you/cifake-probe" in capsys.readouterr().err
    assert cli_main(["push", "--model", str(tmp_path), "--repo", "me/x", "--dry-run"]) == 2
    assert "not a run folder" in capsys.readouterr().err
