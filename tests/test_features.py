"""Image features: batching, the on-disk cache (hit, and invalidation by model, data, preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifake_lib.clip.features import (
    array_hash,
    cache_dir,
    image_features,
    model_fingerprint,
    text_features,
)
from cifake_lib.clip.models import load_clip
from cifake_lib.clip.tiny import write_tiny_clip
from cifake_lib.data.preprocess import ImagePreprocessor


@pytest.fixture()
def clip(tiny_model_dir):
    return load_clip(tiny_model_dir, device="cpu")


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _count_forward(model, monkeypatch) -> list[int]:
    """Batch sizes of every pass through the image tower, while the test runs."""
    calls: list[int] = []
    original = model.vision_model.forward

    def counted(*args, **kwargs):
        calls.append((kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]).shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model.vision_model, "forward", counted)
    return calls


def test_features_match_model_and_batching(clip):
    model, processor = clip
    images = _images(10)
    f = image_features(model, processor, images, batch_size=3, progress=False)
    pre = ImagePreprocessor.from_processor(processor)
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=pre(torch.from_numpy(images))).pooler_output.numpy()
    assert f.shape == (10, model.config.projection_dim) and f.dtype == np.float32
    np.testing.assert_allclose(f, ref, atol=1e-5)
    n = image_features(model, processor, images, normalize=True, progress=False)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)
    assert image_features(model, processor, images[:0], progress=False).shape == (0, f.shape[1])
    assert text_features(model, processor, ["a real photo."]).shape == (1, f.shape[1])


def test_cache_hit_and_invalidation(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAKE_CACHE", str(tmp_path / "cache"))
    model, processor = clip
    images = _images(12)
    calls = _count_forward(model, monkeypatch)
    first = image_features(model, processor, images, batch_size=8, cache=True, progress=False)
    assert calls == [8, 4]
    files = sorted(cache_dir().glob("*.npy"))
    assert len(files) == 1 and files[0].with_suffix(".json").is_file()
    assert np.load(files[0], allow_pickle=False).shape == first.shape

    second = image_features(model, processor, images, batch_size=8, cache=True, progress=False)
    assert calls == [8, 4], "second run must be served from the cache"
    np.testing.assert_array_equal(first, second)

    # Data change: one pixel.
    changed = images.copy()
    changed[5, 0, 0, 0] ^= 1
    image_features(model, processor, changed, batch_size=8, cache=True, progress=False)
    assert len(calls) == 4

    # Preprocessing change: another mean.
    pre = ImagePreprocessor.from_processor(processor)
    other = ImagePreprocessor(size=pre.size, crop_size=pre.crop_size, resample=pre.resample,
                              mean=(0.5, 0.5, 0.5), std=pre.std)
    image_features(model, other, images, batch_size=8, cache=True, progress=False)
    assert len(calls) == 6

    # Model change in place (as after a fine-tuning step): the fingerprint follows the weights.
    before = model_fingerprint(model)
    with torch.no_grad():
        model.visual_projection.weight.mul_(1.01)
    assert model_fingerprint(model) != before
    image_features(model, processor, images, batch_size=8, cache=True, progress=False)
    assert len(calls) == 8
    assert len(list(cache_dir().glob("*.npy"))) == 4


def test_cache_other_model_and_corrupt_entry(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("CIFAKE_CACHE", str(tmp_path / "cache"))
    images = _images(5)
    a, proc = load_clip(tiny_model_dir, device="cpu")
    b, _ = load_clip(write_tiny_clip(tmp_path / "other", seed=1), device="cpu")
    assert model_fingerprint(a) != model_fingerprint(b)
    fa = image_features(a, proc, images, cache=True, progress=False)
    fb = image_features(b, proc, images, cache=True, progress=False)
    assert not np.allclose(fa, fb)
    assert len(list(cache_dir().glob("*.npy"))) == 2
    # A copy of the same model (another path) hits the same entry: the key is content, not path.
    c, _ = load_clip(write_tiny_clip(tmp_path / "copy", seed=0), device="cpu")
    assert model_fingerprint(c) == model_fingerprint(a)
    # A truncated cache file is recomputed, not trusted.
    for f in cache_dir().glob("*.npy"):
        f.write_bytes(f.read_bytes()[:40])
    calls = _count_forward(a, monkeypatch)
    np.testing.assert_allclose(image_features(a, proc, images, cache=True, progress=False), fa)
    assert calls


def test_array_hash_sees_shape_and_content():
    x = _images(4)
    assert array_hash(x) == array_hash(x.copy())
    assert array_hash(x) != array_hash(x.reshape(2, 2, 32, 32, 3))
    y = x.copy()
    y[-1, -1, -1, -1] ^= 1
    assert array_hash(x) != array_hash(y)
    assert array_hash(x, chunk_bytes=1000) == array_hash(x)
