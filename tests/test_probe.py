"""The linear probe: learns separable features, picks C on validation, matches sklearn, round-trips
through safetensors, and its detector reproduces its own scores after loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifake_lib.clip.features import image_features, l2_normalize
from cifake_lib.clip.models import load_clip
from cifake_lib.methods.detectors import load_detector
from cifake_lib.methods.probe import ProbeDetector, ProbeModel, fit_probe


def _blobs(n: int, dim: int = 32, sep: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clouds, shifted along a random direction, plus a common offset (like CLIP's)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    direction = np.random.default_rng(123).normal(size=dim)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(n, dim)) + 4.0 + sep * np.outer(2 * y - 1, direction)
    return x.astype(np.float32), y


def test_separable_features_high_accuracy_and_c_on_val():
    xtr, ytr = _blobs(600, seed=0)
    xva, yva = _blobs(300, seed=1)
    xte, yte = _blobs(400, seed=2)
    fit = fit_probe(xtr, ytr, xva, yva, progress=False)
    acc = np.mean((fit.probe.predict_proba(xte) >= 0.5) == yte)
    assert acc > 0.95
    assert fit.selection_split == "val" and len(fit.val_log_loss) == len(fit.grid)
    assert fit.best == fit.grid[int(np.argmin(fit.val_log_loss))]
    # The choice follows the validation data: a val set with flipped labels prefers the weakest fit.
    flipped = fit_probe(xtr, ytr, xva, 1 - yva, progress=False)
    assert flipped.best == min(flipped.grid)
    assert fit.probe.hyper == {"C": fit.best}


def test_c_at_the_edge_warns_and_extends_the_grid(caplog):
    """Well separated clouds want weak regularisation: a grid stopping at 1e-2 is extended past it."""
    from cifake_lib.methods.probe_fit import _extension

    xtr, ytr = _blobs(400, seed=0)
    xva, yva = _blobs(200, seed=1)
    with caplog.at_level("WARNING", logger="cifake_lib"):  # the library's logger: the message, no source line
        fit = fit_probe(xtr, ytr, xva, yva, grid=[1e-4, 1e-3, 1e-2], progress=False)
    assert any("at the edge of the grid; extending it" in r.getMessage() for r in caplog.records)
    assert len(fit.grid) > 3 and fit.best > 1e-2 and max(fit.grid) > 1e-2
    assert fit.best == fit.grid[int(np.argmin(fit.val_log_loss))]
    assert fit.at_edge == (fit.best in (fit.grid[0], fit.grid[-1]))
    # Inside the grid nothing is added; a two-value grid has no interior and is never extended.
    assert _extension([1.0, 10.0, 100.0], 10.0) == []
    assert _extension([1.0, 10.0], 10.0) == []
    assert _extension([1.0, 10.0, 100.0], 100.0) == pytest.approx([1e3, 1e4, 1e5])
    assert _extension([1.0, 10.0, 100.0], 1.0) == pytest.approx([0.1, 0.01, 0.001])


def test_matches_sklearn_logistic_regression():
    """Oracle: sklearn on the same (L2-normalised, standardised) features, same C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = _blobs(500, sep=0.6, seed=3)
    xva, yva = _blobs(200, sep=0.6, seed=4)
    fit = fit_probe(xtr, ytr, xva, yva, grid=[0.1], progress=False)
    ntr, nva = (l2_normalize(x).astype(np.float64) for x in (xtr, xva))
    scaler = StandardScaler().fit(ntr)
    clf = LogisticRegression(C=0.1, max_iter=1000, tol=1e-5).fit(scaler.transform(ntr), ytr)
    ref = clf.predict_proba(scaler.transform(nva))[:, 1]
    np.testing.assert_allclose(fit.probe.predict_proba(xva), ref, atol=1e-6)
    np.testing.assert_allclose(fit.probe.weights[0][0], clf.coef_[0], rtol=1e-4, atol=1e-6)


def test_safetensors_round_trip_identical(tmp_path):
    xtr, ytr = _blobs(300)
    xte, _ = _blobs(100, seed=5)
    for mlp in (False, True):
        fit = fit_probe(xtr, ytr, mlp=mlp, grid=[1.0] if not mlp else [1e-3], hidden=(16,), progress=False)
        assert fit.selection_split == "train holdout"
        path = fit.probe.save(tmp_path / f"probe_{mlp}.safetensors")
        loaded = ProbeModel.load(path)
        assert loaded.kind == ("mlp" if mlp else "logreg") and loaded.hyper == fit.probe.hyper
        np.testing.assert_array_equal(loaded.predict_proba(xte), fit.probe.predict_proba(xte))
    assert np.mean((fit.probe.predict_proba(xtr) >= 0.5) == ytr) > 0.9  # the MLP learned too
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        ProbeModel.load(tmp_path / "bad.safetensors")


def test_mlp_matches_sklearn_mlp():
    from sklearn.neural_network import MLPClassifier

    from cifake_lib.methods.probe_fit import _fit_one, _standardiser

    xtr, ytr = _blobs(300, seed=6)
    fit = fit_probe(xtr, ytr, xtr[:50], ytr[:50], mlp=True, grid=[1e-3], hidden=(8,), progress=False)
    mean, scale = _standardiser(l2_normalize(xtr).astype(np.float64))
    clf = _fit_one((l2_normalize(xtr) - mean) / scale, ytr, 1e-3, True, (8,), 0)
    assert isinstance(clf, MLPClassifier)
    ref = clf.predict_proba((l2_normalize(xtr[:50]) - mean) / scale)[:, 1]
    np.testing.assert_allclose(fit.probe.predict_proba(xtr[:50]), ref, atol=1e-9)


def test_probe_detector_save_and_load(tiny_model_dir, tmp_path):
    model, processor = load_clip(tiny_model_dir, device="cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    images[labels == 1] //= 2  # darker FAKE: learnable
    feats = image_features(model, processor, images, progress=False)
    fit = fit_probe(feats, labels, grid=[1.0], progress=False)
    det = ProbeDetector(model, processor, fit.probe, threshold=0.42)
    p = det.predict_proba(images)
    np.testing.assert_allclose(p, fit.probe.predict_proba(feats))
    det.save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "detector.json").read_text())
    assert meta["kind"] == "probe" and meta["detector"] == "probe" and meta["weights"] == "probe.safetensors"
    assert meta["C"] == 1.0 and meta["threshold"] == 0.42
    loaded = load_detector(tmp_path / "run", device="cpu")
    assert isinstance(loaded, ProbeDetector) and loaded.threshold == 0.42
    np.testing.assert_array_equal(loaded.predict_proba(images), p)


def test_probe_command_end_to_end(sample_dir, tiny_model_dir, tmp_path):
    from cifake_lib.app.cli import main
    from cifake_lib.data.load import load_cifake
    from cifake_lib.evaluation.metrics import read_predictions
    from cifake_lib.evaluation.runs import read_run

    out = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_model_dir), "--data", str(sample_dir), "--subset", "400:200",
                 "--out", str(out), "--device", "cpu", "--batch-size", "128"]) == 0
    run = read_run(out)
    assert run["metrics"]["detector"] == "probe" and run["metrics"]["n"] == 200
    assert run["detector"]["weights"] == "probe.safetensors" and run["detector"]["C"] > 0
    assert run["detector"]["selection"]["split"] == "val"
    assert (out / "probe.safetensors").is_file() and (out / "roc.png").is_file()
    preds = read_predictions(out / "predictions.csv")
    test = load_cifake(str(sample_dir), subset=(400, 200), progress=False).test
    assert len(preds["id"]) == len(test) == 200
    p = load_detector(out, device="cpu").predict_proba(test.images)
    np.testing.assert_allclose(p, preds["p_fake"], atol=1e-9)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_probe_detector_on_cuda(tiny_model_dir, tmp_path):
    model, processor = load_clip(tiny_model_dir, device="cpu")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(64) % 2
    images[labels == 1] //= 2
    fit = fit_probe(image_features(model, processor, images, progress=False), labels, grid=[1.0], progress=False)
    det = ProbeDetector(model, processor, fit.probe)
    det.save(tmp_path / "run")
    gpu = load_detector(tmp_path / "run", device="cuda")
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.predict_proba(images), det.predict_proba(images), atol=2e-2)


def test_read_probe_returns_what_run_probe_returned(sample_dir, tiny_model_dir, tmp_path):
    """A notebook reading a study's probe sees what fitting it returned; nothing is refitted."""
    from cifake_lib.data.config import DataConfig
    from cifake_lib.methods import probe
    from cifake_lib.methods.config import ProbeConfig

    data = DataConfig(data=str(sample_dir), subset=(400, 200), val_fraction=0.2)
    out = tmp_path / "probe"
    fitted = probe.run(data, ProbeConfig(model=str(tiny_model_dir), device="cpu", figures=False, n_boot=50,
                                         progress=False), out)
    weights = (out / "probe.safetensors").stat().st_mtime_ns
    read = probe.read_probe(out)
    fitted.info.pop("feature_seconds")
    assert json.loads(json.dumps(read.metrics)) == json.loads(json.dumps(fitted.metrics))
    assert json.loads(json.dumps(read.info)) == json.loads(json.dumps(fitted.info))
    assert read.info["C"] == fitted.info["selection"]["best"] and (out / "probe.safetensors").stat().st_mtime_ns == weights
    # run.json records the settings once, from the dataclasses: the data's and the probe's
    args = json.loads((out / "run.json").read_text())["args"]
    assert args["command"] == "probe" and args["subset"] == [400, 200] and args["n_boot"] == 50
    assert args["hidden"] == 512 and args["train_seed"] == 0
