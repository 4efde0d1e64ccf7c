"""Zero-shot CLIP: oracle against CLIPModel's own logits, prompt ensembling, class-aware scoring,
the ClipDetector round trip through detector.json, and load_detector's dispatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cifake_lib.clip.features import image_features, l2_normalize, text_features
from cifake_lib.clip.head import ZeroShotHead, build_head
from cifake_lib.clip.models import load_clip
from cifake_lib.clip.prompts import PROMPT_SETS, PromptSet, get_prompt_set, resolve_prompt_sets
from cifake_lib.methods.detectors import load_detector
from cifake_lib.methods.zeroshot import ClipDetector


@pytest.fixture(scope="module")
def clip(tiny_model_dir):
    return load_clip(tiny_model_dir, device="cpu")


def _images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- prompt sets


def test_builtin_prompt_sets_and_texts():
    assert {"plain", "ensemble", "class_aware", "descriptive", "one_word"} <= set(PROMPT_SETS)
    plain = get_prompt_set("plain")
    assert plain.texts(0) == ["a real photo."] and plain.texts(1) == ["an AI-generated image."]
    ca = get_prompt_set("class_aware")
    assert ca.class_aware and not plain.class_aware
    assert ca.texts(0, 3) == [t.replace("{class}", "cat") for t in ca.real]
    assert ca.texts(1, 0)[0] == "an AI-generated image of a airplane."
    assert len(ca.texts(0)) == 10 * len(ca.real)  # unknown class: every class
    assert len(ca.class_texts(1)) == 10
    with pytest.raises(ValueError, match="label"):
        plain.texts(2)
    assert [s.name for s in resolve_prompt_sets("all")] == list(PROMPT_SETS)
    assert [s.name for s in resolve_prompt_sets("plain, ensemble")] == ["plain", "ensemble"]
    with pytest.raises(ValueError, match="unknown prompt set 'nope'"):
        get_prompt_set("nope")


def test_prompt_file_json_and_toml(tmp_path):
    j = tmp_path / "mine.json"
    j.write_text(json.dumps({"REAL": ["a photo."], "FAKE": ["a render.", "a fake."]}))
    ps = get_prompt_set(str(j))
    assert ps.name == "mine" and ps.real == ("a photo.",) and len(ps.fake) == 2
    t = tmp_path / "x.toml"
    t.write_text('name = "tomlset"\nREAL = ["a {class} photo."]\nFAKE = ["a fake {class}."]\n')
    ps = get_prompt_set(str(t))
    assert ps.name == "tomlset" and ps.class_aware
    assert PromptSet.from_dict(ps.to_dict()) == ps
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"REAL": ["x"]}))
    with pytest.raises(ValueError, match="bad.json.*FAKE"):
        get_prompt_set(str(bad))
    with pytest.raises(ValueError, match="placeholder"):
        PromptSet("b", real=("a {clas}.",), fake=("x",))


# --------------------------------------------------------------------------- oracle


def test_logits_equal_clipmodel_logits_per_image(clip):
    """One template per class: our logits are CLIPModel's logits_per_image, p_fake their softmax."""
    from PIL import Image

    model, processor = clip
    images = _images(6)
    prompts = PromptSet("oracle", real=("a real photo.",), fake=("an AI-generated image.",))
    enc = processor(text=[prompts.real[0], prompts.fake[0]], images=[Image.fromarray(im) for im in images],
                    return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=enc["pixel_values"]).logits_per_image.double().numpy()
        feats = model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output.numpy()
    head = build_head(model, processor, prompts)
    np.testing.assert_allclose(head.logits(feats), ref, rtol=1e-5, atol=1e-4)
    p_ref = torch.softmax(torch.from_numpy(ref), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(head.p_fake(feats), p_ref, rtol=1e-6, atol=1e-7)
    # The end-to-end path (tensor preprocessing) agrees with the processor's to within resampling.
    det = ClipDetector(model, processor, prompts)
    np.testing.assert_allclose(det.predict_logits(images), ref, atol=0.05 * np.abs(ref).max())


def test_ensemble_is_normalize_average_normalize(clip):
    model, processor = clip
    ps = get_prompt_set("ensemble")
    head = build_head(model, processor, ps)
    for label, templates in ((0, ps.real), (1, ps.fake)):
        emb = text_features(model, processor, list(templates))
        manual = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        manual = manual.mean(0)
        manual /= np.linalg.norm(manual)
        np.testing.assert_allclose(head.weights[label], manual, atol=1e-6)
    feats = image_features(model, processor, _images(5), progress=False)
    scale = model.logit_scale.exp().item()
    np.testing.assert_allclose(head.logits(feats), scale * l2_normalize(feats) @ head.weights.numpy().T, rtol=1e-5)


def test_class_aware_uses_known_class_and_marginalises_otherwise(clip):
    model, processor = clip
    ps = get_prompt_set("class_aware")
    head = build_head(model, processor, ps)
    assert head.class_weights.shape == (2, 10, head.dim)
    feats = image_features(model, processor, _images(4), progress=False)
    classes = np.array([3, -1, 0, 9])
    z = head.logits(feats, classes)
    scale = model.logit_scale.exp().item()
    for i in (0, 2, 3):
        c = classes[i]
        w = np.stack([build_head(model, processor, PromptSet("c", real=ps.texts(0, c), fake=ps.texts(1, c))).weights.numpy()])[0]
        np.testing.assert_allclose(z[i], scale * l2_normalize(feats[i]) @ w.T, rtol=1e-5)
    # Unknown class: log-mean-exp over the ten class-conditional logits.
    per = scale * np.einsum("d,lcd->lc", l2_normalize(feats[1]), head.class_weights.numpy())
    np.testing.assert_allclose(z[1], np.log(np.exp(per).mean(axis=1)), rtol=1e-5)
    # No classes at all: every image marginalised; "mean" marginal uses the averaged embedding.
    np.testing.assert_allclose(head.logits(feats)[1], z[1], rtol=1e-6)
    mean_head = ZeroShotHead(head.weights, head.logit_scale, head.class_weights, marginal="mean")
    np.testing.assert_allclose(mean_head.logits(feats), scale * l2_normalize(feats) @ head.weights.numpy().T, rtol=1e-5)


# --------------------------------------------------------------------------- the detector


def test_clip_detector_sizes_and_lists(clip):
    model, processor = clip
    det = ClipDetector(model, processor, "plain")
    big = _images(3, size=64)
    p = det.predict_proba(big)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
    mixed = [big[0], _images(1, size=32)[0], big[1], np.zeros((40, 24, 3), np.uint8)]
    pm = det.predict_proba(mixed)
    np.testing.assert_allclose(pm[[0, 2]], p[:2], atol=1e-6)
    assert pm.shape == (4,)
    with pytest.raises(ValueError, match="uint8"):
        det.predict_proba(big.astype(np.float32))


def test_clip_detector_round_trip_and_load_detector(clip, tiny_model_dir, tmp_path):
    model, processor = clip
    images = _images(8, seed=3)
    classes = np.arange(8) % 10
    det = ClipDetector(model, processor, "class_aware", threshold=0.37)
    p = det.predict_proba(images, classes=classes)
    # Model by reference (absolute path), prompts in detector.json.
    det.save(tmp_path / "ref", model_subdir=None)
    meta = json.loads((tmp_path / "ref" / "detector.json").read_text())
    assert meta["kind"] == "clip" and meta["detector"] == "zeroshot:class_aware" and meta["threshold"] == 0.37
    assert meta["prompts"]["REAL"] == list(get_prompt_set("class_aware").real)
    loaded = load_detector(tmp_path / "ref", device="cpu")
    assert isinstance(loaded, ClipDetector) and loaded.threshold == 0.37
    np.testing.assert_allclose(loaded.predict_proba(images, classes=classes), p, atol=1e-7)
    # Model copied into DIR/model (relative path), text embeddings stored.
    det.save(tmp_path / "copy", text_embeddings=True)
    assert json.loads((tmp_path / "copy" / "detector.json").read_text())["model"] == "model"
    loaded = ClipDetector.from_run(tmp_path / "copy", device="cpu")
    np.testing.assert_allclose(loaded.predict_proba(images, classes=classes), p, atol=1e-7)


def test_load_detector_plain_model_folder_and_errors(tiny_model_dir, tmp_path):
    det = load_detector(tiny_model_dir, device="cpu")
    assert isinstance(det, ClipDetector) and det.prompts.name == "plain" and det.threshold == 0.5
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*neither a run folder"):
        load_detector(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_detector(str(tmp_path / "nowhere"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "detector.json").write_text(json.dumps({"kind": "svm"}))
    with pytest.raises(ValueError, match="unknown detector kind 'svm'"):
        load_detector(tmp_path / "odd")


def test_class_aware_detector_default_is_the_marginal(clip):
    """No oracle information: a test image's true class never enters a detector's score by default."""
    model, processor = clip
    images = _images(12, seed=5)
    classes = np.arange(12) % 10
    det = ClipDetector(model, processor, "class_aware")
    feats = image_features(model, processor, images, progress=False)
    marginal = det.head.p_fake(feats)  # no classes: log-mean-exp over the ten classes
    np.testing.assert_allclose(det.predict_proba(images, classes=classes), marginal, atol=1e-7)
    np.testing.assert_allclose(det.predict_proba(images), marginal, atol=1e-7)
    assert det.to_json()["use_known_class"] is False
    # The oracle (true class known) is a different score, available only on request.
    oracle = ClipDetector(model, processor, "class_aware", head=det.head, use_known_class=True)
    assert np.abs(oracle.predict_proba(images, classes=classes) - marginal).max() > 1e-6


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def zeroshot_run(sample_dir, tiny_model_dir, tmp_path_factory):
    from cifake_lib.app.cli import main

    out = tmp_path_factory.mktemp("zeroshot") / "zs"
    code = main(["zeroshot", "--model", str(tiny_model_dir), "--data", str(sample_dir), "--subset", "400:200",
                 "--prompts", "all", "--out", str(out), "--batch-size", "128", "--device", "cpu"])
    assert code == 0
    return out


def test_zeroshot_command_writes_runs_summary_and_figures(zeroshot_run):
    from cifake_lib.evaluation.metrics import read_predictions
    from cifake_lib.evaluation.runs import read_run
    from cifake_lib.methods.zeroshot import read_summary

    rows = read_summary(zeroshot_run)
    assert [r["prompt_set"] for r in rows] == list(PROMPT_SETS)
    assert sum(r["best_on_val"] for r in rows) == 1
    for r in rows:
        run = read_run(zeroshot_run / r["prompt_set"])
        m = run["metrics"]
        assert m["detector"] == f"zeroshot:{r['prompt_set']}" and m["split"] == "test" and m["n"] == 200
        assert m["threshold_source"] == "val"
        assert r["accuracy"] == pytest.approx(m["accuracy"]) and r["roc_auc"] == pytest.approx(m["roc_auc"])
        assert r["natural_accuracy"] == pytest.approx(m["natural_threshold"]["accuracy"])
        preds = read_predictions(zeroshot_run / r["prompt_set"] / "predictions.csv")
        assert len(preds["id"]) == 200 and len(set(preds["id"])) == 200
        assert set(preds["label"]) == {0, 1}
        assert run["detector"]["kind"] == "clip"
        for fig in ("roc", "pr", "confusion", "histogram", "reliability"):
            assert (zeroshot_run / r["prompt_set"] / f"{fig}.png").stat().st_size > 1000
    best = next(r for r in rows if r["best_on_val"])
    assert best["val_roc_auc"] == max(r["val_roc_auc"] for r in rows)
    assert (zeroshot_run / "compare_roc_auc.png").is_file()


@pytest.mark.parametrize("name", ["plain", "class_aware"])
def test_load_detector_reproduces_zeroshot_predictions(zeroshot_run, sample_dir, name):
    from cifake_lib.data.load import load_cifake
    from cifake_lib.evaluation.metrics import read_predictions

    preds = read_predictions(zeroshot_run / name / "predictions.csv")
    test = load_cifake(str(sample_dir), subset=(400, 200), progress=False).test
    assert list(test.ids) == list(preds["id"])
    det = load_detector(zeroshot_run / name, device="cpu")
    assert det.detector == f"zeroshot:{name}"
    # Class-aware sets were scored by marginalising over the classes: the classes passed here
    # (the true ones, from predictions.csv) must not change a thing.
    np.testing.assert_allclose(det.predict_proba(test.images, classes=preds["cifar_class"]), preds["p_fake"],
                               atol=1e-6)
    np.testing.assert_allclose(det.predict_proba(test.images), preds["p_fake"], atol=1e-6)


# --------------------------------------------------------------------------- CUDA (skipped without a GPU)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_half_precision_matches_cpu(tiny_model_dir, tmp_path):
    """On CUDA the model runs in fp16 (pinned, non-blocking copies); scores agree with fp32 on CPU."""
    images = _images(300, seed=7)
    classes = np.arange(300) % 10
    cpu = ClipDetector.from_pretrained(tiny_model_dir, "class_aware", device="cpu")
    gpu = ClipDetector.from_pretrained(tiny_model_dir, "class_aware", device="cuda")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).dtype == torch.float16
    p_cpu = cpu.predict_proba(images, batch_size=128, classes=classes)
    p_gpu = gpu.predict_proba(images, batch_size=128, classes=classes)
    assert np.abs(p_cpu - p_gpu).max() < 2e-2
    # fp32 weights on CUDA compute under fp16 autocast: same embeddings up to half precision.
    model32, processor = load_clip(tiny_model_dir, device="cuda")
    f32 = image_features(model32, processor, images, progress=False)
    f_cpu = image_features(cpu.model, cpu.processor, images, progress=False)
    cos = np.sum(l2_normalize(f32) * l2_normalize(f_cpu), axis=1)
    assert cos.min() > 0.999
    # Mixed sizes on the GPU; and a round trip through detector.json onto the GPU.
    assert gpu.predict_proba([images[0], np.zeros((64, 48, 3), np.uint8)]).shape == (2,)
    gpu.save(tmp_path / "run", model_subdir=None)
    again = load_detector(tmp_path / "run", device="cuda")
    np.testing.assert_allclose(again.predict_proba(images, classes=classes), p_gpu, atol=1e-3)


def test_run_zeroshot_without_validation_split(tiny_model_dir, tmp_path):
    """No val: threshold 0.5 (recorded as "default"), no best set, summary still one row per set."""
    from cifake_lib.data.load import CifakeData, Split
    from cifake_lib.methods import zeroshot
    from cifake_lib.methods.config import ZeroshotConfig
    from cifake_lib.methods.zeroshot import read_summary

    rng = np.random.default_rng(0)
    test = Split(rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), np.arange(24) % 2,
                 np.arange(24) % 10, [f"test/{i}.jpg" for i in range(24)])
    data = CifakeData(train=test, test=test, val=None, source="synthetic", cache_path=None)
    r = zeroshot.run(data, ZeroshotConfig(model=str(tiny_model_dir), prompts="plain,class_aware", device="cpu",
                                          cache=False, figures=False, n_boot=50, progress=False), tmp_path / "zs")
    assert r.info["best"] is None and [row["prompt_set"] for row in read_summary(tmp_path / "zs")] == ["plain", "class_aware"]
    assert all(m["threshold"] == 0.5 and m["threshold_source"] == "default" for m in r.metrics.values())
    assert not (tmp_path / "zs" / "plain" / "predictions_val.csv").exists()


def test_read_zeroshot_returns_what_run_zeroshot_returned(sample_dir, tiny_model_dir, tmp_path):
    """A notebook reading a study's zero-shot runs sees the rows, metrics and choice of the scoring."""
    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods import zeroshot
    from cifake_lib.methods.config import ZeroshotConfig

    data = load_cifake(str(sample_dir), subset=(400, 200), val_fraction=0.2, progress=False)
    scored = zeroshot.run(data, ZeroshotConfig(model=str(tiny_model_dir), prompts="plain,class_aware", device="cpu",
                                               figures=False, n_boot=50, progress=False), tmp_path / "zs")
    read = zeroshot.read_zeroshot(tmp_path / "zs")
    assert read.info["best"] == scored.info["best"] and list(read.metrics) == ["plain", "class_aware"]
    assert read.runs == scored.runs
    for name, m in scored.metrics.items():
        assert read.metrics[name] == json.loads(json.dumps(m))
    for a, b in zip(read.info["rows"], scored.info["rows"], strict=True):
        assert a["prompt_set"] == b["prompt_set"] and a["best_on_val"] == b["best_on_val"]
        for key in ("roc_auc", "accuracy", "natural_accuracy", "val_roc_auc", "threshold"):
            assert a[key] == pytest.approx(b[key], rel=1e-12)
