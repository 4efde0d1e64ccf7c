"""The one image decoder: file or bytes -> (H, W, 3) uint8, used by the data loader and `predict`.

Training data and prediction must see the same pixels for the same file, so every mode is
converted here and nowhere else:

- 16-bit grayscale (`I;16`, `I;16B`, `I;16L`): scaled by 255/65535 (PIL's `convert("RGB")` clips
  them to near-white instead);
- 32-bit integer `I`: taken as 8-bit when every value is in 0..255, else as 16-bit (0..65535);
- float `F`: values in [0, 1] are scaled by 255, values up to 255 are taken as they are, larger
  ones as 16-bit;
- 16-bit RGB (PNG, TIFF): PIL already reads it as 8-bit RGB (the high byte);
- transparency (`RGBA`, `LA`, `PA`, `P` with a transparent colour): composited onto white;
- everything else (`1`, `L`, `P`, `CMYK`, `YCbCr`, ...): PIL's own conversion to RGB.

Errors are `ImageDecodeError`s naming the file, never "cannot identify image file <_io.BytesIO
object ...>". Images above PIL's decompression-bomb limit are refused before their pixels are
decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifake_lib.core.errors import CifakeError

__all__ = ["ImageDecodeError", "decode_image", "decode_image_info", "to_rgb"]

_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageDecodeError(CifakeError):
    """A file that is not a readable image; `reason` is the message without the file name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def _gray_to_uint8(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im, dtype=np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif im.mode == "F" and top <= 1.0:
        scale = 255.0
    else:  # "I" or "F": 8-bit values when they fit, else 16-bit
        scale = 1.0 if top <= 255.0 else 255.0 / 65535.0
    return np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded PIL image of any mode -> (H, W, 3) uint8 (the rules are in the module docstring)."""
    if im.mode in _HIGH_DEPTH:
        return np.repeat(_gray_to_uint8(im)[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8).copy()


def _open(data: bytes, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():  # PIL warns about big images; the caller refuses them
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))  # the header only
    except UnidentifiedImageError:
        raise ImageDecodeError(name, f"not a readable image (no format PIL knows starts with {data[:8]!r}); "
                                     "expected a JPEG, PNG, BMP, GIF, WebP or TIFF file") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # a header cut short or corrupt
        raise ImageDecodeError(name, f"truncated or corrupt image header ({e})") from None


def decode_image(source: str | os.PathLike | bytes, name: str | None = None, *,
                 size: int | None = None, reduce_above: int | None = None, reduce_to: int = 1024) -> np.ndarray:
    """Decode an image file (path) or its bytes into (H, W, 3) uint8.

    `name` names the file in errors (default: the path). `size`: resize to (size, size), bicubic,
    no crop (a big JPEG is decoded at a reduced scale first, via its DCT). `reduce_above`: when the
    shorter side exceeds it, reduce by an integer factor (box filter) so that side stays >= `reduce_to`.
    Raises `ImageDecodeError` (a `CifakeError`) naming the file.
    """
    return decode_image_info(source, name, size=size, reduce_above=reduce_above, reduce_to=reduce_to)[0]


def decode_image_info(source: str | os.PathLike | bytes, name: str | None = None, *, size: int | None = None,
                      reduce_above: int | None = None, reduce_to: int = 1024) -> tuple[np.ndarray, str, str]:
    """`decode_image`, plus the file's own size ("WxH") and PIL mode before conversion."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), name or "<image bytes>"
    else:
        name = name or os.fspath(source)
        try:
            data = Path(source).read_bytes()
        except IsADirectoryError:
            raise ImageDecodeError(name, "is a folder, expected an image file") from None
        except OSError as e:
            raise ImageDecodeError(name, f"cannot read the file ({e.strerror or e})") from None
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes), expected an image")
    with _open(data, name) as im:
        (w, h), mode = im.size, im.mode
        limit = Image.MAX_IMAGE_PIXELS
        if limit and w * h > limit:
            raise ImageDecodeError(name, f"image too large ({w}x{h} = {w * h:,} pixels; the limit is "
                                         f"{limit:,}, PIL's decompression-bomb guard)")
        if size is not None and im.format == "JPEG" and im.size != (size, size):
            im.draft("RGB", (size, size))  # DCT scaling: a big JPEG decodes small
        try:
            im.load()  # raises on truncated or corrupt data (LOAD_TRUNCATED_IMAGES stays off)
            factor = min(w, h) // reduce_to if reduce_above and min(w, h) > reduce_above else 1
            out = to_rgb(im.reduce(factor) if factor > 1 else im)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageDecodeError(name, f"truncated or corrupt {im.format or 'image'} data ({e})") from None
    if size is not None and out.shape[:2] != (size, size):
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.Resampling.BICUBIC))
    return out, f"{w}x{h}", mode
