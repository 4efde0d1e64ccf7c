"""`cifake predict` / `cifake evaluate` on any detector, and bad input to predict (cifake_lib.methods.predict).

The detector here is the tiny CLIP folder itself (a zero-shot detector) and a CNN run folder;
the fine-tuned run is covered in test_finetune.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifake_lib.app.cli import main
from cifake_lib.methods.predict import expand_inputs, predict_paths, read_image


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    """Good images of several sizes and modes, plus the bad inputs predict must survive."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "a_rgb.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(d / "b_rgb.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(d / "c_gray.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(d / "d_rgba.png")
    (d / "e_empty.png").write_bytes(b"")
    (d / "f_text.jpg").write_text("this is not an image\n")
    (d / "notes.txt").write_text("not listed by a folder scan\n")
    # 10000 x 10000: above PIL's decompression-bomb limit, yet a small file (mostly empty, 1-bit).
    Image.new("1", (10000, 10000)).save(d / "g_huge.png")
    # 3000 x 2600: large but allowed; read reduced to a shorter side of >= 1024 pixels.
    big = Image.new("L", (3000, 2600), 128)
    big.paste(255, (1000, 1000, 2000, 1600))
    big.save(d / "h_big.png")
    return d


def test_read_image_errors_name_the_file(images_dir):
    for name, pattern in (("e_empty.png", "empty file"), ("f_text.jpg", "not a readable image"),
                          ("g_huge.png", "too large")):
        with pytest.raises(ValueError, match=pattern) as e:
            read_image(images_dir / name)
        assert name in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(images_dir / "nope.png")
    assert read_image(images_dir / "c_gray.png").shape == (40, 40, 3)
    big = read_image(images_dir / "h_big.png")
    assert big.shape == (1300, 1500, 3) and big.dtype == np.uint8  # reduced by 2, box filter
    assert big[650, 750, 0] == 255 and big[10, 10, 0] == 128


def test_expand_inputs_keeps_order_and_sorts_folders(images_dir, tmp_path):
    files = expand_inputs([images_dir / "b_rgb.jpg", images_dir, tmp_path / "missing.png"])
    names = [f.name for f in files]
    assert names[0] == "b_rgb.jpg" and names[-1] == "missing.png"
    assert names[1:-1] == sorted(names[1:-1]) and "notes.txt" not in names and "e_empty.png" in names


def test_predict_gives_every_input_an_answer_in_order(tiny_model_dir, images_dir, tmp_path, capsys):
    """Bad files get an error line, good ones a score, the run never crashes; exit status 1."""
    missing = tmp_path / "missing.png"
    args = ["predict", "--model", str(tiny_model_dir), str(images_dir / "b_rgb.jpg"), str(images_dir),
            str(missing)]
    assert main(args) == 1
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    names = [Path(x["path"]).name for x in lines]
    assert names == ["b_rgb.jpg", "a_rgb.png", "b_rgb.jpg", "c_gray.png", "d_rgba.png", "e_empty.png",
                     "f_text.jpg", "g_huge.png", "h_big.png", "missing.png"]
    by_name = {Path(x["path"]).name: x for x in lines}
    for bad in ("e_empty.png", "f_text.jpg", "g_huge.png", "missing.png"):
        assert set(by_name[bad]) == {"path", "error"} and bad in by_name[bad]["error"], by_name[bad]
    for good in ("a_rgb.png", "b_rgb.jpg", "c_gray.png", "d_rgba.png", "h_big.png"):
        rec = by_name[good]
        assert 0.0 <= rec["p_fake"] <= 1.0 and rec["label"] in ("REAL", "FAKE")
        assert rec["label"] == ("FAKE" if rec["p_fake"] >= 0.5 else "REAL")  # a plain CLIP folder: 0.5
    assert lines[0]["p_fake"] == lines[2]["p_fake"]  # the same file twice, the same answer
    assert "4 input(s) could not be scored" in captured.err


def test_predict_scores_equal_the_detector_on_the_same_pixels(tiny_model_dir, images_dir):
    from cifake_lib.data.preprocess import load_image_rgb
    from cifake_lib.methods.detectors import load_detector

    det = load_detector(str(tiny_model_dir), device="cpu")
    recs = list(predict_paths(det, [images_dir / "a_rgb.png", images_dir / "c_gray.png"], batch_size=1))
    expected = [det.predict_proba(load_image_rgb(images_dir / n)[None])[0] for n in ("a_rgb.png", "c_gray.png")]
    np.testing.assert_allclose([r["p_fake"] for r in recs], expected, atol=1e-6)


def test_predict_all_good_exits_0_and_bad_model_exits_2(tiny_model_dir, images_dir, tmp_path, capsys):
    assert main(["predict", "--model", str(tiny_model_dir), str(images_dir / "a_rgb.png")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["predict", "--model", str(tmp_path / "no_such_run"), str(images_dir / "a_rgb.png")]) == 2
    assert "no_such_run" in capsys.readouterr().err
    not_a_run = tmp_path / "empty_folder"
    not_a_run.mkdir()
    assert main(["predict", "--model", str(not_a_run), str(images_dir / "a_rgb.png")]) == 2
    bad_meta = tmp_path / "bad_run"
    bad_meta.mkdir()
    (bad_meta / "detector.json").write_text('{"kind": "alien"}')
    assert main(["predict", "--model", str(bad_meta), str(images_dir / "a_rgb.png")]) == 2
    assert "alien" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    """A CNN run folder (untrained weights are enough to check loading and scoring)."""
    from cifake_lib.core.files import write_json
    from cifake_lib.methods.cnn import CifakeCNN, CNNConfig, save_cnn_weights

    out = tmp_path_factory.mktemp("cnn_run")
    torch.manual_seed(0)
    save_cnn_weights(CifakeCNN(CNNConfig()), out / "cnn.safetensors")
    write_json(out / "detector.json", {"kind": "cnn", "detector": "cnn", "weights": "cnn.safetensors",
                                       "architecture": CNNConfig().to_dict(), "threshold": 0.3})
    return out


def test_predict_and_evaluate_work_for_a_cnn_run(cnn_run, images_dir, sample_dir, tmp_path, capsys):
    assert main(["predict", "--model", str(cnn_run), str(images_dir / "b_rgb.jpg"),
                 str(images_dir / "h_big.png")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert all(list(x) == ["path", "p_fake", "threshold", "label"] and x["threshold"] == 0.3 for x in lines)
    assert all(x["label"] == ("FAKE" if x["p_fake"] >= 0.3 else "REAL") for x in lines)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(cnn_run), "--data", str(sample_dir), "--subset", "64:64",
                 "--split", "val", "--val-fraction", "0.5", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "val" and m["detector"] == "cnn" and m["threshold"] == 0.3 and m["n"] == 32
    assert m["threshold_source"] == "detector"
    from cifake_lib.evaluation.metrics import read_predictions

    assert len(read_predictions(out / "predictions.csv")["p_fake"]) == 32


def _copy_run(src: Path, dst: Path, threshold: float, val_auc: float | None) -> Path:
    """A copy of a run folder with its own threshold and (optionally) a validation AUC."""
    import shutil

    from cifake_lib.core.files import read_json, write_json

    shutil.copytree(src, dst)
    write_json(dst / "detector.json", {**read_json(src / "detector.json"), "threshold": threshold})
    if val_auc is not None:
        write_json(dst / "metrics_val.json", {"roc_auc": val_auc, "accuracy": 0.6, "split": "val"})
    return dst


@pytest.mark.parametrize("settings_file", ["study.json", "config.json"])
def test_model_study_folder_takes_the_best_run_on_validation(cnn_run, images_dir, tmp_path, capsys,
                                                             settings_file):
    """`--model STUDY_DIR`: the run with the best validation AUC, said on stderr; the study's own
    settings file (config.json in older studies) is never mistaken for a model's config.json."""
    from cifake_lib.core.files import write_json

    study = tmp_path / "study"
    study.mkdir()
    write_json(study / settings_file, {"preset": "smoke", "data": "x", "config": {"run": {}}})
    _copy_run(cnn_run, study / "cnn", 0.3, 0.61)
    _copy_run(cnn_run, study / "zeroshot" / "plain", 0.42, 0.74)  # best on validation
    _copy_run(cnn_run, study / "evaluate" / "cnn", 0.11, None)  # test-only re-evaluation: not a candidate
    (study / "evaluate" / "cnn" / "metrics.json").write_text('{"roc_auc": 0.99}')
    assert main(["predict", "--model", str(study), str(images_dir / "a_rgb.png")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["threshold"] == 0.42
    assert f"using {study / 'zeroshot' / 'plain'}" in captured.err and "0.7400" in captured.err


def test_model_zeroshot_folder_takes_the_prompt_set_chosen_on_validation(cnn_run, tmp_path):
    from cifake_lib.methods.detectors import load_detector

    zs = tmp_path / "zeroshot"
    _copy_run(cnn_run, zs / "plain", 0.2, 0.55)
    _copy_run(cnn_run, zs / "ensemble", 0.35, 0.66)
    (zs / "summary.csv").write_text("prompt_set,val_roc_auc\nplain,0.55\nensemble,0.66\n")
    notes: list[str] = []
    assert load_detector(zs, device="cpu", note=notes.append).threshold == 0.35
    assert notes == [f"{zs}: zero-shot folder; using {zs / 'ensemble'} (best validation ROC AUC, 0.6600)"]
    empty = tmp_path / "empty_study"
    empty.mkdir()
    (empty / "study.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="chosen on validation"):
        load_detector(empty)


def test_predict_function_takes_paths_arrays_and_pil_images(tiny_model_dir, images_dir):
    """`predict` (the notebook form) gives the same p_fake as `predict_paths` and the detector itself."""
    from cifake_lib.methods.detectors import load_detector
    from cifake_lib.methods.predict import predict

    det = load_detector(str(tiny_model_dir), device="cpu")
    good = [images_dir / n for n in ("a_rgb.png", "b_rgb.jpg", "c_gray.png")]  # two sizes: two batches
    by_records = [r["p_fake"] for r in predict_paths(det, good)]
    np.testing.assert_allclose(predict(det, good), by_records, atol=1e-6)
    np.testing.assert_allclose(predict(str(tiny_model_dir), good, device="cpu"), by_records, atol=1e-6)
    arrays = [read_image(f) for f in good]
    np.testing.assert_allclose(predict(det, arrays), by_records, atol=1e-6)
    np.testing.assert_allclose(predict(det, [Image.open(f) for f in good]), by_records, atol=1e-6)
    same_size = np.stack([arrays[0], arrays[0][::-1]])
    np.testing.assert_allclose(predict(det, same_size), det.predict_proba(same_size), atol=1e-6)
    np.testing.assert_allclose(predict(det, arrays[0]), by_records[:1], atol=1e-6)
    assert predict(det, images_dir / "a_rgb.png").shape == (1,)


def test_predict_function_names_what_it_cannot_read(tiny_model_dir, images_dir, tmp_path):
    from cifake_lib.methods.detectors import load_detector
    from cifake_lib.methods.predict import predict

    det = load_detector(str(tiny_model_dir), device="cpu")
    with pytest.raises(ValueError, match="f_text.jpg"):
        predict(det, [images_dir / "a_rgb.png", images_dir / "f_text.jpg"])
    with pytest.raises(ValueError, match=r"images\[1\]: expected a uint8"):
        predict(det, [np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match="expected uint8"):
        predict(det, np.zeros((2, 32, 32, 3), np.float32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        predict(det, tmp_path / "empty")
