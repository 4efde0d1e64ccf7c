"""Saliency maps: the image's shape, finite, in [0, 1], different for different images; the
torch heads used for gradients agree with the detectors' own numpy scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifake_lib.analysis import explain
from cifake_lib.methods.cnn import CifakeCNN, CNNConfig, CNNDetector


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    ims = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ims[1, :16] = 20  # a different structure, not just different noise
    return ims


@pytest.fixture(scope="module")
def clip_detector(tiny_model_dir):
    from cifake_lib.methods.zeroshot import ClipDetector

    return ClipDetector.from_pretrained(tiny_model_dir, "class_aware", device="cpu")


@pytest.fixture(scope="module")
def cnn_detector():
    torch.manual_seed(0)
    return CNNDetector(CifakeCNN(CNNConfig()), device="cpu")


def check_map(m, shape):
    assert m.shape == shape and m.dtype == np.float32
    assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0
    assert m.max() == pytest.approx(1.0)  # normalised, not all zeros


@pytest.mark.parametrize("method", explain.CLIP_METHODS)
def test_clip_maps(clip_detector, images, method):
    a = explain.saliency(clip_detector, images[0], method, cifar_class=3)
    b = explain.saliency(clip_detector, images[1], method, cifar_class=3)
    check_map(a, (32, 32))
    check_map(b, (32, 32))
    assert np.abs(a - b).max() > 0.05


def test_rollout_restores_attention_implementation(clip_detector, images):
    before = clip_detector.model.config._attn_implementation
    explain.attention_rollout(clip_detector, images[0])
    assert clip_detector.model.config._attn_implementation == before


def test_any_image_size(clip_detector, cnn_detector):
    im = np.random.default_rng(1).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    check_map(explain.saliency(clip_detector, im, "gradcam"), (40, 72))
    check_map(explain.saliency(cnn_detector, im, "gradcam"), (40, 72))


@pytest.mark.parametrize("method", explain.CNN_METHODS)
def test_cnn_maps(cnn_detector, images, method):
    assert explain.methods_for(cnn_detector) == explain.CNN_METHODS
    a = explain.saliency(cnn_detector, images[0], method)
    b = explain.saliency(cnn_detector, images[1], method)
    check_map(a, (32, 32))
    check_map(b, (32, 32))
    assert np.abs(a - b).max() > 0.05


def test_torch_heads_match_the_detectors(clip_detector, tiny_model_dir, images):
    """Gradients flow through a torch copy of each head: it must score exactly like the detector."""
    from cifake_lib.methods.probe import ProbeDetector, ProbeModel

    feats = clip_detector.image_features(images)
    for cls in (-1, 4):
        z = explain._head_fn(clip_detector)(torch.from_numpy(feats), cls).numpy()
        p = clip_detector.p_fake_from_features(feats, np.full(len(feats), cls))
        np.testing.assert_allclose(z, np.log(p) - np.log1p(-p), atol=1e-4)
    rng = np.random.default_rng(0)
    d = feats.shape[1]
    probe = ProbeModel(mean=rng.normal(0, 0.01, d), scale=1 + rng.random(d), weights=[rng.normal(size=(8, d)),
                       rng.normal(size=(1, 8))], biases=[rng.normal(size=8), rng.normal(size=1)], kind="mlp")
    det = ProbeDetector(clip_detector.model, clip_detector.processor, probe)
    z = explain._head_fn(det)(torch.from_numpy(feats), -1).numpy()
    np.testing.assert_allclose(z, probe.decision_function(feats), atol=1e-6)
    check_map(explain.saliency(det, images[0], "gradcam"), (32, 32))


def test_occlusion_black_box_and_targets(images):
    class Brightness:  # any detector: p_fake grows with the brightness of the top-left quarter
        kind, detector, threshold = "toy", "toy", 0.5

        def predict_proba(self, ims, batch_size=256):
            return 1 / (1 + np.exp(-(ims[:, :16, :16].mean(axis=(1, 2, 3)) - 100) / 20))

    det = Brightness()
    assert explain.methods_for(det) == ("occlusion",)
    im = np.full((32, 32, 3), 60, np.uint8)
    im[:16, :16] = 250
    m = explain.saliency(det, im, target="fake")
    check_map(m, (32, 32))
    assert m[:12, :12].mean() > 0.5 and m[20:, 20:].max() == 0.0  # the evidence is where it should be
    with pytest.raises(ValueError, match="target"):
        explain.saliency(det, im, target="nonsense")


def test_overlay_and_figure(images):
    sal = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    ov = explain.overlay(images[0], sal, scale=4)
    assert ov.shape == (128, 128, 3) and ov.dtype == np.uint8
    assert (ov[:4, :4] == ov[0, 0]).all()  # nearest-neighbour: each pixel becomes a 4x4 block
    fig = explain.saliency_figure(images, {"a": [sal, sal], "b": [sal, np.zeros_like(sal)]}, titles=["x", "y"])
    assert len(fig.axes) == 7  # 2 x 3 panels and one colour bar
    bar = fig.axes[-1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["low", "high"] and "saliency" in bar.get_ylabel()
    grid = np.array(fig.axes[:6]).reshape(2, 3)
    blank = grid[1, 2]  # the all-zero map: said in words, not drawn as a flat colour
    assert [t.get_text().replace("\n", " ") for t in blank.texts] == [explain.BLANK_MAP_TEXT]
    assert not any(t.get_text() for ax in grid.ravel() if ax is not blank for t in ax.texts)
    assert explain.is_blank(np.zeros((4, 4))) and explain.is_blank(np.full((4, 4), 0.3)) and not explain.is_blank(sal)


def test_embedding_projections(clip_detector, tiny_model_dir):
    """PCA and t-SNE of tiny-CLIP embeddings for two models ("before" / "after"), coloured by label."""
    from cifake_lib.analysis import embeddings

    rng = np.random.default_rng(0)
    ims = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(30) % 2
    before = embeddings.image_embeddings(clip_detector, ims)
    after = embeddings.image_embeddings(tiny_model_dir, ims)  # from a model folder this time
    assert before.shape == after.shape == (30, 64)
    np.testing.assert_allclose(before, after, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(before, axis=1), 1.0, rtol=1e-5)
    for method in embeddings.METHODS:
        xy = embeddings.project(before, method, seed=0)
        assert xy.shape == (30, 2) and np.isfinite(xy).all()
        np.testing.assert_array_equal(xy, embeddings.project(before, method, seed=0))  # seeded
    fig = embeddings.embedding_figure({"before": before, "after": after}, labels)
    assert len(fig.axes) == 4 and len(fig.axes[0].collections) == 2  # REAL and FAKE scatters
    assert -1.0 <= embeddings.separation(before, labels) <= 1.0
