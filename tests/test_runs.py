"""The run folder: files written, threshold chosen on validation only, reading and finding runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifake_lib.evaluation.metrics import RECORD_FIELDS, choose_threshold, read_predictions
from cifake_lib.evaluation.runs import find_runs, package_versions, read_run, write_run


def make_split(labels, classes=None, ids=None):
    """A Split, or a duck-typed stand-in with the same attributes (write_run needs no images)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    classes = np.asarray(classes if classes is not None else np.arange(n) % 10, dtype=np.int64)
    ids = np.asarray(ids if ids is not None else [f"test/{'FAKE' if y else 'REAL'}/{i} ({i % 10 + 1}).jpg"
                                                  for i, y in enumerate(labels)])
    images = np.zeros((n, 32, 32, 3), np.uint8)
    try:
        from cifake_lib.data.load import Split

        return Split(images=images, labels=labels, classes=classes, ids=ids)
    except Exception:  # data.py absent or still changing: the stand-in is all write_run needs
        return SimpleNamespace(images=images, labels=labels, classes=classes, ids=ids)


def shifted_scores(n, shift, seed):
    """Scores whose accuracy-maximising threshold sits near 0.5 + shift."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    p = np.clip(0.5 + shift + 0.2 * (y - 0.5) + rng.normal(0, 0.08, len(y)), 0, 1)
    return y, p


DETECTOR = {"kind": "probe", "detector": "probe", "weights": "probe.safetensors"}


def _write(tmp_path, **kw):
    y_test, p_test = shifted_scores(400, 0.2, seed=0)   # best test threshold near 0.7
    y_val, p_val = shifted_scores(200, -0.2, seed=1)    # best val threshold near 0.3
    args = dict(test=make_split(y_test), p_test=p_test, val=make_split(y_val), p_val=p_val,
                detector=DETECTOR, model="tiny", data="hf", seed=3, args={"lr": 1e-3}, seconds=1.5,
                n_boot=50)
    args.update(kw)
    return write_run(tmp_path / "run", **args), args


def test_write_run_writes_every_file(tmp_path):
    metrics, args = _write(tmp_path, args=argparse.Namespace(data=Path("/x"), subset=(10, 20), _run=print,
                                                             lr=np.float32(0.5)))
    run = tmp_path / "run"
    for name in ("metrics.json", "metrics_val.json", "predictions.csv", "predictions_val.csv", "run.json",
                 "detector.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*tmp"))
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == metrics
    for field in RECORD_FIELDS:
        assert field in on_disk, field
    assert on_disk["split"] == "test" and on_disk["detector"] == "probe" and on_disk["seed"] == 3
    assert on_disk["n"] == 400 and on_disk["threshold_source"] == "val"
    assert len(on_disk["per_class_accuracy"]) == 10
    assert json.loads((run / "metrics_val.json").read_text())["split"] == "val"
    det = json.loads((run / "detector.json").read_text())
    assert det == {**DETECTOR, "threshold": metrics["threshold"]}
    info = json.loads((run / "run.json").read_text())
    assert info["args"] == {"data": "/x", "subset": [10, 20], "lr": 0.5}
    assert info["seconds"] == 1.5 and "T" in info["created"]
    assert info["versions"]["numpy"] == np.__version__ and "cifake_lib" in info["versions"]
    assert "cuda" in info["device"] and info["python"] and info["platform"]
    # the git commit of the source that ran, when it is a git checkout
    import subprocess

    import cifake_lib

    here = Path(cifake_lib.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert (info["git"] or {}).get("commit") == (head.stdout.strip() if head.returncode == 0 else None)
    # the model card: what it is, data and split, metrics with intervals, threshold, how to load it
    card = (run / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: cifake_lib\n") and "# probe: a CIFAKE detector" in card
    assert f"**Threshold.** {metrics['threshold']:.4f} (chosen on validation" in card
    assert "a 10/20-image (train/test) subset" in card and "test 400 images (200 REAL, 200 FAKE)" in card
    assert f"| ROC AUC | {metrics['roc_auc']:.4f} [{metrics['roc_auc_ci95'][0]:.4f}, " in card
    assert "| `acc@0.5` (at p_fake ≥ 0.5) |" in card and "1 = FAKE (AI-generated" in card
    assert 'cl.load_detector("run")' in card and "cifake predict --model run image.png" in card
    assert "## Limitations" in card and "Pipeline check" not in card
    pred = read_predictions(run / "predictions.csv")
    np.testing.assert_array_equal(pred["p_fake"], args["p_test"])
    np.testing.assert_array_equal(pred["id"], args["test"].ids)
    assert len(read_predictions(run / "predictions_val.csv")["id"]) == 200


def test_threshold_comes_from_val_never_test(tmp_path):
    metrics, args = _write(tmp_path)
    t_val = choose_threshold(args["val"].labels, args["p_val"])
    t_test = choose_threshold(args["test"].labels, args["p_test"])
    assert t_val < 0.4 < 0.6 < t_test  # the fixture makes the two splits disagree
    assert metrics["threshold"] == t_val
    # Changing the test scores changes test metrics but never the threshold.
    p_other = np.random.default_rng(5).random(len(args["p_test"]))
    again, _ = _write(tmp_path, p_test=p_other)
    assert again["threshold"] == t_val and again["accuracy"] != metrics["accuracy"]
    assert json.loads((tmp_path / "run" / "detector.json").read_text())["threshold"] == t_val


def test_threshold_without_val_and_given(tmp_path):
    metrics, _ = _write(tmp_path, val=None, p_val=None)
    assert metrics["threshold"] == 0.5 and metrics["threshold_source"] == "default"
    _write(tmp_path)  # now with val, then again without: no stale validation files may remain
    metrics, _ = _write(tmp_path, val=None, p_val=None, threshold=0.42)
    assert metrics["threshold"] == 0.42 and metrics["threshold_source"] == "given"
    assert not (tmp_path / "run" / "predictions_val.csv").exists()  # the earlier run's file is gone
    assert read_run(tmp_path / "run")["metrics_val"] is None


def test_write_run_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="p_test has 3 scores"):
        _write(tmp_path, p_test=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="detector"):
        _write(tmp_path, detector={"kind": "probe"})
    with pytest.raises(ValueError, match="p_val"):
        _write(tmp_path, p_val=None)
    with pytest.raises(TypeError, match="Split"):
        _write(tmp_path, test=np.zeros(400))
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_read_run(tmp_path):
    metrics, args = _write(tmp_path)
    run = read_run(tmp_path / "run")
    assert run["path"] == tmp_path / "run"
    assert run["metrics"] == metrics and run["detector"]["kind"] == "probe"
    assert run["run"]["args"] == {"lr": 1e-3}
    np.testing.assert_array_equal(run["predictions_val"]["p_fake"], args["p_val"])
    assert read_run(tmp_path / "run" / "metrics.json", predictions=False)["predictions"] is None
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        read_run(tmp_path)
    (tmp_path / "run" / "metrics.json").write_text('{"accuracy": 0.5}')
    with pytest.raises(ValueError, match=r"metrics\.json.*missing field"):
        read_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"metrics\.json.*JSON"):
        read_run(tmp_path / "run")


def test_find_runs(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b" / "zeroshot" / "ensemble")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text('{"split": "val"}')
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.json").write_text("not json")
    with pytest.warns(UserWarning, match="skipping"):
        found = find_runs(tmp_path)
    expected = [(tmp_path / "a" / "run").resolve(), (tmp_path / "b" / "zeroshot" / "ensemble" / "run").resolve()]
    assert found == expected
    assert find_runs([tmp_path / "a", str(tmp_path / "a" / "run" / "metrics.json")]) == expected[:1]
    with pytest.raises(FileNotFoundError):
        find_runs(tmp_path / "nope")


def test_package_versions():
    v = package_versions()
    for key in ("python", "cifake_lib", "torch", "transformers", "datasets", "numpy", "sklearn"):
        assert key in v
    assert v["numpy"] == np.__version__


def test_runs_found_note_names_what_is_missing():
    from cifake_lib.evaluation.runs import runs_found_note

    runs = [{"metrics": {"detector": "zeroshot:plain"}}, {"metrics": {"detector": "probe"}}]
    assert runs_found_note(runs) == ("found: zero-shot CLIP, linear probe | not found: fine-tuned CLIP "
                                     "(run notebook 03), CIFAKE paper's CNN (run cifake cnn / smoke mode)")
    assert runs_found_note([]).startswith("found: none | not found: zero-shot CLIP (run notebook 02)")
