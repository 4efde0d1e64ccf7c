"""External test sets: `cifake evaluate --data EXTERNAL` and the cross-dataset table.

The external set is built here from real CIFAKE test images, re-encoded as JPEG at quality 40
and upscaled to 64 px: once as REAL/ + FAKE/ folders, once as a parquet file whose ClassLabel
names are in the opposite order (0 = fake). Detectors: an untrained CNN run and the tiny CLIP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from cifake_lib.analysis.cross_dataset import (
    cross_dataset_pairs,
    cross_dataset_rows,
    cross_dataset_section,
    external_runs,
)
from cifake_lib.app.cli import main
from cifake_lib.data.decode import decode_image
from cifake_lib.data.external import (
    ExternalDataError,
    is_external_source,
    load_external,
    map_label_names,
    set_name,
)
from cifake_lib.evaluation.metrics import read_predictions

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_PER_LABEL = 30
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ext_dir(sample_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ext") / "jpeg40_64"
    for label in ("REAL", "FAKE"):
        (root / label).mkdir(parents=True)
        for p in sorted((sample_dir / "test" / label).iterdir())[:N_PER_LABEL]:
            im = Image.open(p).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
            im.save(root / label / f"{p.stem}.jpg", quality=40)
    return root


@pytest.fixture(scope="module")
def ext_parquet(ext_dir) -> Path:
    """The same images, as parquet, label names in the opposite order (0 = fake, 1 = real)."""
    import datasets

    files = sorted(ext_dir.rglob("*.jpg"))
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=["fake", "real"])})
    ds = datasets.Dataset.from_dict({"img": [{"bytes": f.read_bytes(), "path": None} for f in files],
                                     "kind": [0 if f.parent.name == "FAKE" else 1 for f in files]}, features=features)
    path = ext_dir.parent / "jpeg40_64_parquet.parquet"
    ds.to_parquet(str(path))
    return path


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    from cifake_lib.core.files import write_json
    from cifake_lib.methods.cnn import CifakeCNN, CNNConfig, save_cnn_weights

    out = tmp_path_factory.mktemp("cnn_run")
    torch.manual_seed(0)
    save_cnn_weights(CifakeCNN(CNNConfig()), out / "cnn.safetensors")
    write_json(out / "detector.json", {"kind": "cnn", "detector": "cnn", "weights": "cnn.safetensors",
                                       "architecture": CNNConfig().to_dict(), "threshold": 0.3})
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_folder_set_scored_by_the_cli_at_native_size(ext_dir, cnn_run, tmp_path):
    from cifake_lib.methods.cnn import load_cnn_detector

    out = tmp_path / "external" / "jpeg40_64" / "cnn"
    done = subprocess.run([sys.executable, "-m", "cifake_lib", "evaluate", "--model", str(cnn_run), "--data",
                           str(ext_dir), "--out", str(out)], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "external" and m["n"] == 2 * N_PER_LABEL and m["threshold"] == 0.3
    assert m["external"]["native_size"] == "64x64" and m["external"]["native_sizes"] == {"64x64": 2 * N_PER_LABEL}
    assert m["external"]["label_names"] == {"REAL": ["REAL"], "FAKE": ["FAKE"]}
    pred = read_predictions(out / "predictions.csv")
    # Oracle: the detector on the 64 px images decoded directly (its own preprocessing resizes them).
    images = np.stack([decode_image(ext_dir / i) for i in pred["id"]])
    assert images.shape[1:] == (64, 64, 3)
    expected = load_cnn_detector(cnn_run, device="cpu").predict_proba(images)
    np.testing.assert_allclose(pred["p_fake"], expected, rtol=1e-5, atol=1e-6)
    assert list(pred["label"]) == [int(i.startswith("FAKE/")) for i in pred["id"]]
    assert m["roc_auc"] == pytest.approx(roc_auc_score(pred["label"], pred["p_fake"]))


def test_parquet_with_reversed_label_names_gives_the_same_scores(ext_dir, ext_parquet, tiny_model_dir, tmp_path):
    folder, table = tmp_path / "folder", tmp_path / "table"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(ext_dir), "--out", str(folder)]) == 0
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(ext_parquet), "--out", str(table),
                 "--fake-labels", "fake"]) == 0
    a, b = read_predictions(folder / "predictions.csv"), read_predictions(table / "predictions.csv")
    files = sorted(ext_dir.rglob("*.jpg"))  # the parquet's row order
    order = [str(f.relative_to(ext_dir)) for f in files]
    pos = {i: k for k, i in enumerate(a["id"])}
    ia = [pos[i] for i in order]
    np.testing.assert_array_equal(a["label"][ia], b["label"])  # names mapped, not positions
    np.testing.assert_allclose(a["p_fake"][ia], b["p_fake"], rtol=1e-5, atol=1e-6)
    mb = json.loads((table / "metrics.json").read_text())
    assert mb["external"]["label_names"] == {"REAL": ["real"], "FAKE": ["fake"]} and mb["n_fake"] == N_PER_LABEL
    # Without --fake-labels the names are read as REAL/FAKE too.
    assert load_external(ext_parquet).labels.tolist() == b["label"].tolist()


def test_a_wrong_fake_labels_is_a_clear_error(ext_dir, ext_parquet, cnn_run, tmp_path, capsys):
    assert main(["evaluate", "--model", str(cnn_run), "--data", str(ext_parquet), "--out", str(tmp_path / "x"),
                 "--fake-labels", "AI"]) == 2
    err = capsys.readouterr().err
    assert "--fake-labels 'AI' is not a label of this set" in err and "'fake', 'real'" in err
    assert not (tmp_path / "x" / "metrics.json").exists()
    with pytest.raises(ExternalDataError, match="ambiguous"):
        map_label_names(["Fake", "FAKE", "real"], ["fake"], "x")
    with pytest.raises(ExternalDataError, match="every label maps to FAKE"):
        map_label_names(["ai", "gen"], ["ai", "gen"], "x")
    with pytest.raises(ExternalDataError, match="neither REAL nor FAKE.*--fake-labels"):
        map_label_names(["ai", "photo"], None, "x")


def test_archives_and_split_folders(ext_dir, tmp_path):
    tar = tmp_path / "set.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(ext_dir, arcname="jpeg40_64")
    from_tar, from_dir = load_external(tar), load_external(ext_dir)
    assert from_tar.labels.tolist() == from_dir.labels.tolist() and len(from_tar) == 2 * N_PER_LABEL
    assert from_tar.items[0] == Path(from_dir.items[0]).read_bytes()
    split = tmp_path / "with_splits"
    for name in ("test", "train"):
        for f in ext_dir.rglob("*.jpg"):
            (split / name / f.parent.name).mkdir(parents=True, exist_ok=True)
            (split / name / f.parent.name / f.name).write_bytes(f.read_bytes())
    got = load_external(split)
    assert got.split == "test" and all(i.startswith("test/") for i in got.ids) and len(got) == 2 * N_PER_LABEL
    assert is_external_source(ext_dir) and is_external_source(tar) and not is_external_source(split)
    with pytest.raises(ExternalDataError, match="no 'val' split folder"):
        load_external(split, split="val")


def test_cross_dataset_table_every_detector_on_every_set(ext_dir, ext_parquet, cnn_run, tiny_model_dir, tmp_path):
    root = tmp_path / "study"
    for set_path in (ext_dir, ext_parquet):
        for name, model in (("cnn", cnn_run), ("zeroshot", tiny_model_dir)):
            out = root / "external" / set_name(str(set_path)) / name
            assert main(["evaluate", "--model", str(model), "--data", str(set_path), "--out", str(out)]) == 0
    runs = external_runs(root)
    rows = cross_dataset_rows(runs)
    assert {(r["set"], r["detector"]) for r in rows} == {(s, d) for s in ("jpeg40_64", "jpeg40_64_parquet")
                                                        for d in ("cnn", "zeroshot")}
    pairs = cross_dataset_pairs(runs, n_boot=200)
    auc = next(p for p in pairs if p["set"] == "jpeg40_64" and p["metric"] == "roc_auc")
    a, b = (next(r for r in runs if r["set"] == "jpeg40_64" and r["name"] == n) for n in (auc["detector_a"],
                                                                                         auc["detector_b"]))
    pa, pb = a["predictions"], b["predictions"]
    assert auc["difference"] == pytest.approx(roc_auc_score(pa["label"], pa["p_fake"])
                                              - roc_auc_score(pb["label"], pb["p_fake"]))
    section = cross_dataset_section(root, n_boot=200)
    text = "".join(section.blocks)
    assert section.title == "Cross-dataset results" and "jpeg40_64_parquet" in text and "64x64" in text
    assert len(section.tables["cross_dataset.csv"][0]) == 4
    empty = tmp_path / "no_external_runs"
    empty.mkdir()
    assert cross_dataset_section(empty) is None


def test_run_external_scores_every_main_detector_and_the_report_has_the_table(ext_dir, sample_dir, tmp_path):
    """`[run] external = [SET]`: each main-cell detector scored on the set at its CIFAKE threshold, into
    OUT/external/<set>/<run>/, and report.md's cross-dataset table shows every one, with its own numbers."""
    from cifake_lib.app.pipeline import print_plan, run_study

    grid = tmp_path / "ext.toml"
    grid.write_text(f'[run]\nstages = ["data", "probe", "cnn", "evaluate", "report"]\nmethods = ["probe", "cnn"]\n'
                    f'external = ["{ext_dir}"]\n[data]\nsubset = "400:100"\n[cnn]\nepochs = 1\n'
                    '[report]\nembeddings = 0\nsaliency = false\n')
    out = tmp_path / "S"
    plan = print_plan(preset="smoke", data=str(sample_dir), config_file=grid, out=out)
    assert "external:jpeg40_64:probe" in plan and "--external" in plan
    run_study(preset="smoke", data=str(sample_dir), config_file=grid, out=out, log=lambda m: None)
    report = (out / "report" / "report.md").read_text()
    section = report.split("## Cross-dataset results")[1].split("\n## ")[0]
    for name in ("probe", "cnn"):
        m = json.loads((out / "external" / "jpeg40_64" / name / "metrics.json").read_text())
        assert m["split"] == "external" and m["n"] == 2 * N_PER_LABEL and m["external"]["native_size"] == "64x64"
        own = json.loads((out / "runs" / name / "detector.json").read_text())["threshold"]
        assert m["threshold"] == pytest.approx(own)  # chosen on CIFAKE's validation split, never on the set
        assert f"| jpeg40_64 | {m['detector']} | 64x64 | {2 * N_PER_LABEL} | {m['roc_auc']:.4f}" in section
