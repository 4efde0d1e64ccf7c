"""Image perturbations (cifake_lib.data.perturb): deterministic, shape-preserving, stronger with severity."""

from __future__ import annotations

import numpy as np
import pytest

from cifake_lib.data import perturb
from cifake_lib.data.perturb import (
    PERTURBATIONS,
    apply_perturbation,
    augment_batch,
    battery,
    center_crop_resize,
    downscale_upscale,
    gaussian_blur,
    gaussian_noise,
    hflip,
    jpeg,
)


def _images(n: int = 16, size: int = 32, seed: int = 0) -> np.ndarray:
    """Natural-ish images: smooth random waves plus a little texture (not pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3))
    for i in range(n):
        for c in range(3):
            f = rng.uniform(0.5, 4, size=2)
            ph = rng.uniform(0, 2 * np.pi, size=2)
            out[i, :, :, c] = 128 + 70 * np.sin(2 * np.pi * f[0] * x + ph[0]) * np.cos(2 * np.pi * f[1] * y + ph[1])
    out += rng.normal(0, 12, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_battery_entry_is_deterministic_and_stronger_with_severity(name):
    images = _images()
    before = images.copy()
    p = PERTURBATIONS[name]
    changes = []
    for level in p.severities:
        a = apply_perturbation(images, name, level, seed=3)
        b = apply_perturbation(images, name, level, seed=3)
        assert a.dtype == np.uint8 and a.shape == images.shape
        np.testing.assert_array_equal(a, b)  # deterministic
        changes.append(_change(images, a))
    np.testing.assert_array_equal(images, before)  # input untouched
    assert changes[0] > 0
    assert all(x < y for x, y in zip(changes, changes[1:], strict=False)), (name, changes)


def test_battery_lists_every_severity_in_order():
    pairs = battery()
    assert ("jpeg", 90) in pairs and ("jpeg", 30) in pairs
    assert [lv for n, lv in pairs if n == "jpeg"] == [90, 75, 50, 30]
    assert [lv for n, lv in pairs if n == "blur"] == [0.5, 1.0, 1.5]
    assert battery(["crop"]) == [("crop", 0.9), ("crop", 0.8)]
    assert PERTURBATIONS["jpeg"].label(75) == "jpeg quality=75"
    with pytest.raises(ValueError, match="unknown perturbation"):
        battery(["nope"])
    with pytest.raises(ValueError, match="unknown perturbation"):
        apply_perturbation(_images(2), "nope", 1)


def test_identities_at_zero_severity():
    images = _images(4)
    np.testing.assert_array_equal(gaussian_blur(images, 0), images)
    np.testing.assert_array_equal(gaussian_noise(images, 0), images)
    np.testing.assert_array_equal(downscale_upscale(images, 1.0), images)
    np.testing.assert_array_equal(center_crop_resize(images, 1.0), images)
    np.testing.assert_array_equal(hflip(hflip(images)), images)
    np.testing.assert_array_equal(hflip(images)[:, :, 0], images[:, :, -1])


def test_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    images = _images(3)
    for sigma in (0.5, 1.5):
        ref = ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="reflect")
        ref = np.clip(np.rint(ref), 0, 255).astype(np.uint8)
        assert np.abs(gaussian_blur(images, sigma).astype(int) - ref).max() <= 1


def test_jpeg_matches_pil_round_trip_and_noise_depends_on_seed():
    import io

    from PIL import Image

    images = _images(2)
    buf = io.BytesIO()
    Image.fromarray(images[1]).save(buf, format="JPEG", quality=50)
    np.testing.assert_array_equal(jpeg(images, 50)[1], np.asarray(Image.open(buf).convert("RGB")))
    assert not np.array_equal(gaussian_noise(images, 5, seed=0), gaussian_noise(images, 5, seed=1))


def test_works_on_other_sizes():
    images = _images(2, size=48)
    for name, level in battery():
        out = apply_perturbation(images, name, level)
        assert out.shape == images.shape and out.dtype == np.uint8


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        jpeg(np.zeros((1, 8, 8, 3), np.float32), 50)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        gaussian_blur(np.zeros((8, 8, 3), np.uint8), 1)
    with pytest.raises(ValueError, match="quality"):
        jpeg(_images(1), 0)
    with pytest.raises(ValueError, match="factor"):
        downscale_upscale(_images(1), 1.5)


def test_augment_batch_is_seeded_and_label_preserving():
    images = _images(64)
    a = augment_batch(images, np.random.default_rng(7), jpeg_prob=0.5, blur_prob=0.5)
    b = augment_batch(images, np.random.default_rng(7), jpeg_prob=0.5, blur_prob=0.5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and a.dtype == np.uint8
    # Flip only: every image is either itself or its mirror, and about half are mirrored.
    f = augment_batch(images, np.random.default_rng(1))
    same = np.array([np.array_equal(f[i], images[i]) for i in range(64)])
    mirrored = np.array([np.array_equal(f[i], images[i, :, ::-1]) for i in range(64)])
    assert (same | mirrored).all() and 16 < mirrored.sum() < 48
    np.testing.assert_array_equal(augment_batch(images, np.random.default_rng(1), flip=False), images)
    # The flips do not depend on whether JPEG / blur are switched on (draws in a fixed order).
    g = augment_batch(images, np.random.default_rng(1), jpeg_prob=1.0)
    mirrored_g = np.array([_change(g[i], images[i, :, ::-1]) < _change(g[i], images[i]) for i in range(64)])
    np.testing.assert_array_equal(mirrored_g, mirrored)
    with pytest.raises(ValueError, match="jpeg_prob"):
        augment_batch(images, np.random.default_rng(0), jpeg_prob=2)


def test_public_names():
    for name in perturb.__all__:
        assert hasattr(perturb, name)
