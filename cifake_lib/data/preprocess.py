"""Image preprocessing on tensors, matching the model's own `CLIPImageProcessor`.

CIFAKE lives in memory as one uint8 array; a batch goes to the model's device as uint8 and is
resized, cropped and normalised there. Sizes, resampling filter, mean and std are read from the
processor, never hard-coded. Resizing uses PIL's own filter kernels (bicubic a = -0.5, with
antialiasing when shrinking) written as two small matrices, so results match the PIL path of
`CLIPImageProcessor` to within rounding, on any device.

Arbitrary user images (any size, grayscale, RGBA, palette, 16-bit) go through `load_image_rgb`.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

# PIL resampling codes (PIL.Image.Resampling) -> (kernel support, kernel function)
_NEAREST, _LANCZOS, _BILINEAR, _BICUBIC, _BOX, _HAMMING = 0, 1, 2, 3, 4, 5


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


def _sinc(x: np.ndarray) -> np.ndarray:
    return np.sinc(x)  # numpy's sinc is sin(pi x) / (pi x)


_FILTERS = {
    _BOX: (0.5, lambda x: ((x > -0.5) & (x <= 0.5)).astype(np.float64)),
    _BILINEAR: (1.0, lambda x: np.clip(1.0 - np.abs(x), 0.0, None)),
    _HAMMING: (1.0, lambda x: np.where(np.abs(x) < 1.0, np.sinc(x) * (0.54 + 0.46 * np.cos(np.pi * x)), 0.0)),
    _BICUBIC: (2.0, _bicubic),
    _LANCZOS: (3.0, lambda x: np.where(np.abs(x) < 3.0, _sinc(x) * _sinc(x / 3.0), 0.0)),
}


@lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int, resample: int = _BICUBIC) -> np.ndarray:
    """The (out_size, in_size) matrix of PIL's separable resampling along one axis.

    Follows PIL's `precompute_coeffs`: the kernel is widened by the scale when shrinking
    (antialiasing), and each row's weights are normalised to sum to 1.
    """
    if resample == _NEAREST:
        m = np.zeros((out_size, in_size))
        src = np.minimum(((np.arange(out_size) + 0.5) * in_size / out_size).astype(int), in_size - 1)
        m[np.arange(out_size), src] = 1.0
        return m
    if resample not in _FILTERS:
        raise ValueError(f"unsupported resampling filter {resample}")
    support, kernel = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        x = np.arange(lo, hi)
        w = kernel((x - center + 0.5) / filterscale)
        total = w.sum()
        m[i, lo:hi] = w / total if total != 0 else w
    return m


def _size_dict(size, name: str) -> tuple[str, dict]:
    if isinstance(size, int):
        return "square", {"height": size, "width": size}
    size = dict(size)
    if "shortest_edge" in size:
        return "shortest_edge", size
    if "height" in size and "width" in size:
        return "square", size
    raise ValueError(f"unsupported image processor {name} {size!r}")


class ImagePreprocessor:
    """Turns a batch of uint8 images (B, H, W, 3) on any device into the model's pixel_values."""

    def __init__(
        self,
        *,
        size: dict | int | None,
        crop_size: dict | int | None,
        resample: int = _BICUBIC,
        mean: tuple[float, ...] = (0.0, 0.0, 0.0),
        std: tuple[float, ...] = (1.0, 1.0, 1.0),
        rescale_factor: float = 1 / 255,
        do_resize: bool = True,
        do_center_crop: bool = True,
        do_rescale: bool = True,
        do_normalize: bool = True,
    ) -> None:
        self.resize_mode, self.size = _size_dict(size, "size") if do_resize else ("none", {})
        self.crop_size = _size_dict(crop_size, "crop_size")[1] if do_center_crop else None
        self.resample = int(resample)
        self.mean = tuple(float(m) for m in mean) if do_normalize else (0.0, 0.0, 0.0)
        self.std = tuple(float(s) for s in std) if do_normalize else (1.0, 1.0, 1.0)
        self.rescale_factor = float(rescale_factor) if do_rescale else 1.0
        self._device_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_processor(cls, processor) -> ImagePreprocessor:
        """Read every setting from a `CLIPProcessor` or `CLIPImageProcessor`."""
        ip = getattr(processor, "image_processor", processor)
        resample = getattr(ip, "resample", _BICUBIC)
        resample = int(getattr(resample, "value", resample))
        return cls(
            size=ip.size,
            crop_size=getattr(ip, "crop_size", None),
            resample=resample,
            mean=tuple(ip.image_mean),
            std=tuple(ip.image_std),
            rescale_factor=getattr(ip, "rescale_factor", 1 / 255),
            do_resize=getattr(ip, "do_resize", True),
            do_center_crop=getattr(ip, "do_center_crop", True),
            do_rescale=getattr(ip, "do_rescale", True),
            do_normalize=getattr(ip, "do_normalize", True),
        )

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of pixel_values when known without an input (after the crop)."""
        if self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        if self.resize_mode == "square":
            return self.size["height"], self.size["width"]
        return None

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """Output (height, width) of the resize step, as transformers computes it."""
        if self.resize_mode == "none":
            return height, width
        if self.resize_mode == "square":
            return self.size["height"], self.size["width"]
        short = self.size["shortest_edge"]
        if height <= width:
            return short, int(short * width / height)
        return int(short * height / width), short

    def __call__(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, S, S) normalised `dtype`, on the images' device."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (B, H, W, 3), got {tuple(images.shape)}")
        device = images.device
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W); float32 for the resize arithmetic
        h, w = x.shape[-2:]
        out_h, out_w = self.resized_shape(h, w)
        if (out_h, out_w) != (h, w):
            rows, cols = self._resize_weights(h, w, out_h, out_w, device)
            # PIL resizes 8-bit images in two passes, horizontal then vertical, rounding and
            # clipping to 8 bits after each; doing the same keeps overshoot identical.
            x = (x @ cols.T).round_().clamp_(0, 255)
            x = (rows @ x).round_().clamp_(0, 255)
        if self.crop_size:
            ch, cw = self.crop_size["height"], self.crop_size["width"]
            x = _center_crop(x, ch, cw)
        scale, shift = self._affine(device)
        return torch.addcmul(shift, x, scale).to(dtype)  # (x * rescale - mean) / std

    # Constants live on the device once: a host-to-device copy per batch would stall the GPU.
    def _resize_weights(self, h: int, w: int, out_h: int, out_w: int, device: torch.device):
        key = (h, w, out_h, out_w, str(device))
        cached = self._device_cache.get(key)
        if cached is None:
            rows = torch.as_tensor(resize_matrix(h, out_h, self.resample), dtype=torch.float32).to(device)
            cols = torch.as_tensor(resize_matrix(w, out_w, self.resample), dtype=torch.float32).to(device)
            cached = self._device_cache[key] = (rows, cols)
        return cached

    def _affine(self, device: torch.device):
        key = ("affine", str(device))
        cached = self._device_cache.get(key)
        if cached is None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
            cached = self._device_cache[key] = ((self.rescale_factor / std).to(device), (-mean / std).to(device))
        return cached


def _center_crop(x: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h < ch or w < cw:  # pad with zeros like transformers does for too-small images
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def check_uint8_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """`images` as an array, if it is a (N, H, W, 3) uint8 batch; else a ValueError naming `name`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be a (N, H, W, 3) array, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {images.dtype}")
    return images


def load_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read any image PIL can open (any size, grayscale, RGBA, palette, 16-bit) as (H, W, 3) uint8.

    The data loader's decoder (`cifake_lib.data.decode`): transparent pixels composited onto
    white, 16-bit and float images scaled to 8 bits. Raises ValueError naming the file when it is
    empty, truncated or not an image, FileNotFoundError when it is missing.
    """
    from cifake_lib.data.decode import decode_image

    if not os.path.lexists(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    return decode_image(path)


def resize_uint8(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a (N, H, W, 3) uint8 batch with PIL-style bicubic (antialiased when shrinking).

    Two passes, horizontal then vertical, rounding and clipping to 8 bits after each, as PIL
    does; a new array even when the size already matches.
    """
    h, w = images.shape[1:3]
    if (h, w) == (height, width):
        return images.copy()
    rows = resize_matrix(h, height, _BICUBIC)
    cols = resize_matrix(w, width, _BICUBIC)
    x = np.clip(np.rint(np.einsum("nhwc,pw->nhpc", images.astype(np.float64), cols)), 0, 255)
    x = np.clip(np.rint(np.einsum("oh,nhpc->nopc", rows, x)), 0, 255)
    return x.astype(np.uint8)


def fit_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (size, size, 3) with PIL-style bicubic (antialiased).

    For detectors with a fixed native input (the 32x32 CNN) and for stacking user images of
    different sizes into one batch.
    """
    return resize_uint8(image[None], size, size)[0]

