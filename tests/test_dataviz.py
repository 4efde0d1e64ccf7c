"""Data figures and the computations behind them (spectra, pixel statistics)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from cifake_lib.data.load import Split
from cifake_lib.viz.dataviz import (
    class_balance_figure,
    duplicates_figure,
    examples_figure,
    mean_power_spectrum,
    pixel_stats,
    pixel_stats_figure,
    spectrum_figure,
)


def random_split(n_per_label: int = 40, classes: bool = True, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    n = 2 * n_per_label
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], n_per_label)
    cls = np.arange(n) % 10 if classes else np.full(n, -1)
    return Split(images, labels, cls, [f"x/{i}.jpg" for i in range(n)])


def test_power_spectrum_of_a_cosine_peaks_at_its_frequency():
    x = np.arange(32)
    wave = (127.5 + 100 * np.cos(2 * np.pi * 4 * x / 32))[None, :].repeat(32, axis=0)  # 4 cycles, horizontal
    images = np.repeat(np.round(wave)[None, :, :, None], 3, axis=3).astype(np.uint8)
    power = mean_power_spectrum(np.repeat(images, 5, axis=0))
    assert power.shape == (32, 32)
    peaks = sorted(zip(*np.unravel_index(np.argsort(power, axis=None)[-2:], power.shape), strict=True))
    assert peaks == [(16, 12), (16, 20)]  # centre (16, 16) +- 4 along the horizontal axis
    assert power[16, 16] < 1e-6 * power.max()  # DC removed


def test_power_spectrum_constant_images_batches_and_checks():
    assert np.allclose(mean_power_spectrum(np.full((3, 32, 32, 3), 77, np.uint8)), 0, atol=1e-6)
    images = random_split().images
    np.testing.assert_allclose(mean_power_spectrum(images, batch=7), mean_power_spectrum(images), rtol=1e-5)
    # Parseval: total power = N * sum of squared deviations from the mean, per image.
    gray = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    dev = gray - gray.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(mean_power_spectrum(images).sum(), 32 * 32 * (dev**2).sum(axis=(1, 2)).mean(),
                               rtol=1e-4)
    with pytest.raises(ValueError, match="expected images"):
        mean_power_spectrum(np.zeros((0, 32, 32, 3), np.uint8))


def test_pixel_stats_match_numpy():
    images = random_split().images
    s = pixel_stats(images)
    assert s["hist"].shape == (3, 256) and s["hist"].sum() == images.size
    np.testing.assert_allclose(s["mean"], images.reshape(-1, 3).mean(axis=0))
    np.testing.assert_allclose(s["std"], images.reshape(-1, 3).std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(s["hist"][1], np.bincount(images[..., 1].ravel(), minlength=256))
    with pytest.raises(ValueError, match="uint8"):
        pixel_stats(images.astype(np.float32))


def _png(fig: Figure) -> bytes:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")
    return buf.getvalue()


@pytest.mark.parametrize("classes", [True, False])
def test_figures_render(classes):
    split = random_split(classes=classes)
    splits = {"train": split, "test": random_split(10, classes, seed=1)}
    for fig in (examples_figure(split, per_class=2), class_balance_figure(splits), spectrum_figure(split),
                pixel_stats_figure(split), duplicates_figure(splits)):
        _png(fig)
    assert len(examples_figure(split, per_class=2).axes) == (10 if classes else 1) * 4


def test_duplicates_figure_shows_pairs():
    train, test = random_split(), random_split(10, seed=1)
    test.images[3] = train.images[5]
    test.images[4] = test.images[6]
    fig = duplicates_figure({"train": train, "test": test})
    assert "2 group(s)" in fig._suptitle.get_text() and "test / train: 1" in fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "train: x/5.jpg" in titles and "test: x/3.jpg" in titles
    _png(fig)
    empty = duplicates_figure(train)  # the empty state says so in words, on one axes without frame or ticks
    (ax,) = empty.axes  # notebooks draw a figure only when it has an axes (else they print its repr)
    assert not ax.axison and "No identical images: all 80 images" in ax.texts[0].get_text()


def test_spectrum_figure_needs_both_labels():
    split = random_split()
    with pytest.raises(ValueError, match="no FAKE images"):
        spectrum_figure(split.take(split.labels == 0))


def test_figures_on_the_real_sample(sample_dir):
    from cifake_lib.data.load import load_cifake

    data = load_cifake(str(sample_dir), val_fraction=0, progress=False)
    _png(class_balance_figure(data))
    _png(duplicates_figure(data))
    _png(spectrum_figure(data.test))
    fake, real = (pixel_stats(data.test.images[data.test.labels == k]) for k in (1, 0))
    assert fake["hist"].sum() == real["hist"].sum() == 1000 * 32 * 32 * 3
