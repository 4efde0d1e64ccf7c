"""Per-block image features of a backbone's vision tower, from one forward pass, cached.

For every vision block l = 1..L: that block's output pooled as the tower pools its last one
(`backbone.pool_block`: CLIP's class token through `post_layernorm` and the visual projection;
SigLIP's tokens through `post_layernorm` and its attention-pooling head; DINOv2's class token
through its final layer norm), so block L gives exactly the image embedding (what
`clip.features.image_features` returns and the ordinary probe reads) and every block lives in the
same space. One pass with `output_hidden_states=True` gives all blocks.

Cache: `cache_root()/features/<key>-layers.npy` (L, N, D) float32, the key that of
`image_features` (model weights, images, preprocessing, dtype) with the feature kind added.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from cifake_lib.clip.backbone import embed_dim, n_blocks, pool_block, vision_hidden_states
from cifake_lib.clip.features import cache_dir, compute_dtype, feature_cache_key, model_device
from cifake_lib.core.files import atomic_write, write_json
from cifake_lib.data.preprocess import ImagePreprocessor

KIND = "each vision block pooled as the last (class token, post_layernorm, visual projection for CLIP)"


def parse_layers(spec: str | None, n: int) -> list[int]:
    """Blocks (1-based) from "all" or "1,4,12" (negative counts from the end: -1 is the last)."""
    text = str(spec or "").strip().lower()
    if text in ("", "all"):
        return list(range(1, n + 1))
    out = []
    for part in text.split(","):
        try:
            i = int(part)
        except ValueError:
            raise ValueError(f"--layers: 'all' or block numbers 1..{n} separated by commas; got {spec!r}") from None
        i = n + 1 + i if i < 0 else i
        if not 1 <= i <= n:
            raise ValueError(f"--layers: block {part.strip()} is outside 1..{n} (the model has {n} vision blocks)")
        out.append(i)
    return sorted(set(out))


@torch.inference_mode()
def _encode(model, preprocessor: ImagePreprocessor, images: np.ndarray, batch_size: int) -> np.ndarray:
    device, dtype = model_device(model), compute_dtype(model)
    weights_dtype = next(model.parameters()).dtype
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != weights_dtype else contextlib.nullcontext()
    out: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        pixel_values = preprocessor(x, dtype=weights_dtype)
        with autocast:
            hidden = vision_hidden_states(model, pixel_values)
            out.append(torch.stack([pool_block(model, h) for h in hidden]).float())  # (L, B, D)
    if not out:
        return np.zeros((n_blocks(model), 0, embed_dim(model)), dtype=np.float32)
    return torch.cat(out, dim=1).cpu().numpy()


def layer_features(model, processor, images: np.ndarray, *, batch_size: int = 256,
                   cache: bool | str | os.PathLike = False) -> np.ndarray:
    """(L, N, D) float32: every vision block's class-token features of uint8 images (N, H, W, 3)."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError("layer_features: images must be a uint8 (N, H, W, 3) array")
    preprocessor = processor if isinstance(processor, ImagePreprocessor) else ImagePreprocessor.from_processor(processor)
    if cache is False or cache is None:
        return _encode(model, preprocessor, images, batch_size)
    key, desc = feature_cache_key(model, preprocessor, images, compute_dtype(model))
    key = hashlib.blake2b(json.dumps([key, KIND]).encode(), digest_size=16).hexdigest()
    path = (cache_dir() if cache is True else Path(cache)) / f"{key}-layers.npy"
    if path.is_file():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.ndim == 3 and feats.shape[:2] == (n_blocks(model), len(images)):
                return feats
        except (OSError, ValueError):
            pass  # unreadable or partial: recompute and overwrite
    feats = _encode(model, preprocessor, images, batch_size)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, feats, allow_pickle=False)

    atomic_write(path, write)
    write_json(path.with_suffix(".json"), {**desc, "kind": KIND, "shape": list(feats.shape)})
    return feats


__all__ = ["KIND", "layer_features", "n_blocks", "parse_layers"]
