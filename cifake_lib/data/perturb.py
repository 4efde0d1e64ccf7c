"""Image perturbations on uint8 (N, H, W, 3) arrays: training augmentation and the robustness battery.

One module for both, so the fine-tuning augmentation and the robustness analysis degrade images
the same way. Every function takes and returns a uint8 (N, H, W, 3) array, never modifies its
input, and is deterministic: the same input (and seed) gives the same output, bit for bit.

    jpeg(images, quality)                 re-encode as JPEG (PIL/libjpeg, 4:2:0 chroma) and decode
    gaussian_blur(images, sigma)          separable Gaussian, radius ceil(4 sigma), mirrored edges
    gaussian_noise(images, std, seed)     additive N(0, std^2) in 8-bit levels, rounded, clipped
    downscale_upscale(images, factor)     shrink by `factor`, then back (PIL-style bicubic)
    center_crop_resize(images, fraction)  keep the central `fraction` of each side, resize back
    hflip(images)                         mirror left-right

`PERTURBATIONS` is the robustness battery: each entry has its severities ordered from mild to
strong; `battery()` lists every (name, level) pair and `apply_perturbation` applies one.
`augment_batch` is the training augmentation (random flips; optional random JPEG and blur).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cifake_lib.data.preprocess import check_uint8_images, resize_uint8


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# The perturbations
# ---------------------------------------------------------------------------


def hflip(images: np.ndarray) -> np.ndarray:
    """Mirror every image left-right."""
    return np.ascontiguousarray(check_uint8_images(images)[:, :, ::-1])


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode each image as a JPEG of `quality` (1-95) and decode it again.

    PIL's default encoder settings (4:2:0 chroma subsampling, standard tables), as most
    software saves JPEGs; lower quality removes more high-frequency detail.
    """
    from PIL import Image

    images = check_uint8_images(images)
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return out


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(4.0 * sigma))  # scipy.ndimage's default truncation (4 sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _convolve_axis(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    # "symmetric" mirrors the edge pixel itself (scipy's "reflect"): no dark borders.
    xp = np.pad(x, pad, mode="symmetric")
    n = x.shape[axis]
    out = np.zeros_like(x)
    for j, w in enumerate(kernel):
        out += w * np.take(xp, np.arange(j, j + n), axis=axis)
    return out


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each image with a Gaussian of standard deviation `sigma` pixels (0: unchanged)."""
    images = check_uint8_images(images)
    sigma = float(sigma)
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return images.copy()
    k = _gaussian_kernel(sigma)
    x = images.astype(np.float64)
    x = _convolve_axis(_convolve_axis(x, k, 1), k, 2)
    return _to_uint8(x)


def gaussian_noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Add Gaussian noise of `std` 8-bit levels to every pixel and channel, rounded and clipped.

    The noise is drawn for the whole array from `seed`: apply it to the whole set at once (or
    give each batch its own seed) so that batches do not share one noise pattern.
    """
    images = check_uint8_images(images)
    std = float(std)
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    rng = np.random.default_rng(seed)
    return _to_uint8(images.astype(np.float64) + rng.normal(0.0, std, size=images.shape))


def downscale_upscale(images: np.ndarray, factor: float) -> np.ndarray:
    """Shrink each side by `factor` (0 < factor <= 1), then resize back to the original size."""
    images = check_uint8_images(images)
    factor = float(factor)
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    _, h, w, _ = images.shape
    small = resize_uint8(images, max(1, round(h * factor)), max(1, round(w * factor)))
    return resize_uint8(small, h, w)


def center_crop_resize(images: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the central `fraction` (0 < fraction <= 1) of each side, then resize back (bicubic)."""
    images = check_uint8_images(images)
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    _, h, w, _ = images.shape
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize_uint8(np.ascontiguousarray(images[:, top:top + ch, left:left + cw]), h, w)


# ---------------------------------------------------------------------------
# The robustness battery
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Perturbation:
    """One kind of degradation and its severities, ordered from mild to strong."""

    name: str
    param: str  # what a level means: "quality", "sigma", "std", "factor", "fraction"
    severities: tuple[float, ...]
    fn: Callable[[np.ndarray, float, int], np.ndarray]  # (images, level, seed) -> images
    description: str

    def __call__(self, images: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
        return self.fn(images, level, seed)

    def label(self, level: float) -> str:
        """e.g. "jpeg quality=75"."""
        return f"{self.name} {self.param}={level:g}"


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("jpeg", "quality", (90, 75, 50, 30), lambda x, q, s: jpeg(x, int(q)),
                     "JPEG re-encoding at this quality (lower is stronger)"),
        Perturbation("blur", "sigma", (0.5, 1.0, 1.5), lambda x, v, s: gaussian_blur(x, v),
                     "Gaussian blur, sigma in pixels"),
        Perturbation("noise", "std", (2, 5, 10), lambda x, v, s: gaussian_noise(x, v, s),
                     "additive Gaussian noise, std in 8-bit levels"),
        Perturbation("downscale", "factor", (0.75, 0.5), lambda x, v, s: downscale_upscale(x, v),
                     "downscale by this factor, then upscale back (bicubic)"),
        Perturbation("crop", "fraction", (0.9, 0.8), lambda x, v, s: center_crop_resize(x, v),
                     "central crop keeping this fraction of each side, resized back"),
    )
}


def battery(names: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """Every (name, level) pair of the battery (or of `names`), mild to strong within each."""
    names = list(PERTURBATIONS) if names is None else list(names)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {unknown}; known: {sorted(PERTURBATIONS)}")
    return [(n, level) for n in names for level in PERTURBATIONS[n].severities]


def apply_perturbation(images: np.ndarray, name: str, level: float, *, seed: int = 0) -> np.ndarray:
    """Apply battery entry `name` at `level` (any level, not only the listed severities)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; known: {sorted(PERTURBATIONS)}")
    return PERTURBATIONS[name](images, level, seed)


# ---------------------------------------------------------------------------
# Training augmentation
# ---------------------------------------------------------------------------


def augment_batch(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    jpeg_prob: float = 0.0,
    jpeg_quality: tuple[int, int] = (60, 95),
    blur_prob: float = 0.0,
    blur_sigma: tuple[float, float] = (0.2, 1.0),
) -> np.ndarray:
    """Light label-preserving augmentation of a uint8 batch; returns a new array.

    Each image is flipped left-right with probability 1/2 (`flip`), re-encoded as JPEG with
    probability `jpeg_prob` (quality uniform in `jpeg_quality`), then blurred with
    probability `blur_prob` (sigma uniform in `blur_sigma`). All randomness comes from `rng`,
    drawn in a fixed order whatever the options, so a seeded generator gives the same batch.
    """
    images = check_uint8_images(images)
    n = len(images)
    for name, p in (("jpeg_prob", jpeg_prob), ("blur_prob", blur_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    # Draw everything up front, in one order, so enabling one option never shifts another's draws.
    do_flip = rng.random(n) < 0.5
    do_jpeg = rng.random(n) < jpeg_prob
    qualities = rng.integers(jpeg_quality[0], jpeg_quality[1] + 1, size=n)
    do_blur = rng.random(n) < blur_prob
    sigmas = rng.uniform(blur_sigma[0], blur_sigma[1], size=n)

    out = images.copy()
    if flip and do_flip.any():
        out[do_flip] = out[do_flip][:, :, ::-1]
    for i in np.flatnonzero(do_jpeg):
        out[i:i + 1] = jpeg(out[i:i + 1], int(qualities[i]))
    for i in np.flatnonzero(do_blur):
        out[i:i + 1] = gaussian_blur(out[i:i + 1], float(sigmas[i]))
    return out


__all__ = [
    "PERTURBATIONS",
    "Perturbation",
    "apply_perturbation",
    "augment_batch",
    "battery",
    "center_crop_resize",
    "downscale_upscale",
    "gaussian_blur",
    "gaussian_noise",
    "hflip",
    "jpeg",
]
