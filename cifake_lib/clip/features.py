"""Batched image and text embeddings of any backbone, with an on-disk cache for image features.

Image path: uint8 batch (host) -> pinned -> model's device (non_blocking) -> `ImagePreprocessor`
(resize, crop, normalise on the device) -> `backbone.image_embeds` (CLIP's projected embedding,
SigLIP's or DINOv2's pooled output; not normalised). On CUDA the model runs in half precision
(`models.inference_dtype`) and features stay on the device until the end, so the host never
waits for the GPU between batches: slicing and pinning the next batch overlap the current
batch's compute.

Cache: `cache_root()/features/<key>.npy` (+ a small `.json` describing it), where the key hashes

- the model: its vision config and a fingerprint of the image tower's weights (a strided
  sample of every parameter plus its sum). Content, not path: a fine-tuned model in memory, a
  re-downloaded Hub revision or a model overwritten in place all get new keys, and a copied
  folder still hits;
- the data: a hash of the image array's bytes (shape, dtype, content);
- the preprocessing: every `ImagePreprocessor` setting and the compute dtype.

Evaluating several prompt sets therefore costs one pass over the images: the text side is a
few dozen prompts, encoded fresh each time (`text_features`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifake_lib.clip.backbone import (
    embed_dim,
    image_embeds,
    image_modules,
    text_embeds,
    tokenize,
    vision_config,
)
from cifake_lib.clip.models import inference_dtype
from cifake_lib.core.files import atomic_write, write_json
from cifake_lib.core.settings import cache_root
from cifake_lib.data.preprocess import ImagePreprocessor

# Bump when the way features are computed changes, so old cache entries stop matching.
FEATURE_VERSION = 1
_FINGERPRINT_SAMPLES = 256  # per parameter tensor


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the image tower computes in: the weights' own, or half on CUDA for fp32 weights."""
    dtype = next(model.parameters()).dtype
    return inference_dtype(model_device(model)) if dtype == torch.float32 else dtype


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the image tower's weights (`backbone.image_modules`) and vision config.

    A strided sample of each tensor and its float64 sum: a few hundred tiny reductions, one
    host transfer. Any training step changes every sum, so a changed model gets a new key.
    """
    towers = image_modules(model)
    h = hashlib.blake2b(digest_size=16)
    vision = vision_config(model)
    if hasattr(vision, "to_dict"):
        cfg = {k: v for k, v in vision.to_dict().items() if not k.startswith("_")}
        cfg.pop("dtype", None)
        cfg.pop("torch_dtype", None)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        h.update(str(embed_dim(model)).encode())
    samples = []
    with torch.no_grad():
        for tower in towers:
            for name, p in tower.named_parameters():
                h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
                flat = p.detach().reshape(-1)
                step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
                samples.append(flat[::step][:_FINGERPRINT_SAMPLES].double())
                samples.append(flat.double().sum().reshape(1))
    if samples:
        h.update(torch.cat(samples).cpu().numpy().tobytes())
    return h.hexdigest()


def array_hash(images: np.ndarray, chunk_bytes: int = 64 << 20) -> str:
    """blake2b of an array's shape, dtype and bytes, read in chunks (about 1 s per GB)."""
    a = np.ascontiguousarray(images)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.shape}:{a.dtype.str}".encode())
    flat = a.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, chunk_bytes):
        h.update(memoryview(flat[start:start + chunk_bytes]))
    return h.hexdigest()


def preprocess_key(preprocessor: ImagePreprocessor, dtype: torch.dtype) -> dict[str, Any]:
    """Every setting that changes pixel_values, plus the dtype the model computes in."""
    return {
        "resize_mode": preprocessor.resize_mode,
        "size": dict(preprocessor.size),
        "crop_size": dict(preprocessor.crop_size) if preprocessor.crop_size else None,
        "resample": preprocessor.resample,
        "mean": list(preprocessor.mean),
        "std": list(preprocessor.std),
        "rescale_factor": preprocessor.rescale_factor,
        "dtype": str(dtype),
    }


def feature_cache_key(model: torch.nn.Module, preprocessor: ImagePreprocessor, images: np.ndarray,
                      dtype: torch.dtype) -> tuple[str, dict[str, Any]]:
    """(key, description) for the image features of `images` under `model` and `preprocessor`."""
    desc = {
        "version": FEATURE_VERSION,
        "model": model_fingerprint(model),
        "model_source": str(getattr(model, "name_or_path", "") or ""),
        "data": array_hash(images),
        "n": int(len(images)),
        "preprocess": preprocess_key(preprocessor, dtype),
    }
    identity = {k: v for k, v in desc.items() if k != "model_source"}  # content, not names
    key = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=16).hexdigest()
    return key, desc


def cache_dir() -> Path:
    return cache_root() / "features"


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # unreadable or partial: recompute and overwrite
    if arr.ndim != 2 or len(arr) != n:
        return None
    return arr


def _save_cached(path: Path, features: np.ndarray, desc: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, features, allow_pickle=False)

    atomic_write(path, write)
    write_json(path.with_suffix(".json"), {**desc, "dim": int(features.shape[1])})


def _as_batch(images: np.ndarray, pin: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.pin_memory() if pin else t


@torch.inference_mode()
def _encode_array(model, preprocessor: ImagePreprocessor, images: np.ndarray, batch_size: int,
                  dtype: torch.dtype, progress: bool, desc: str) -> np.ndarray:
    from tqdm.auto import tqdm

    device = model_device(model)
    cuda = device.type == "cuda"
    weights_dtype = next(model.parameters()).dtype
    # fp32 weights on CUDA still compute in half precision (inference only), via autocast; the
    # preprocessing stays outside it (its resize arithmetic needs float32).
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != weights_dtype
                else contextlib.nullcontext())
    # On CUDA, batch i+1 is copied (pinned, non-blocking) and preprocessed on a side stream while
    # the model runs batch i on the main one. Preprocessing makes a few small synchronous copies
    # (resize matrices, mean, std); on the side stream they wait for that stream alone, so the
    # host keeps queueing model work ahead of the GPU instead of draining it every batch.
    # High priority: its small kernels slot in between the model's instead of queueing behind them.
    side = torch.cuda.Stream(device, priority=-1) if cuda else None
    main = torch.cuda.current_stream(device) if cuda else None

    def prepare(start: int) -> torch.Tensor:
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            batch = _as_batch(images[start:start + batch_size], cuda).to(device, non_blocking=True)
            return preprocessor(batch, dtype=weights_dtype)

    out: list[torch.Tensor] = []
    n = len(images)
    with tqdm(total=n, desc=desc, unit="img", disable=not progress or n == 0, leave=False) as bar:
        pending = prepare(0) if n else None
        for start in range(0, n, batch_size):
            pixel_values = pending
            if side is not None:
                main.wait_stream(side)
                pixel_values.record_stream(main)  # allocated on the side stream, used on this one
            with autocast:
                feats = image_embeds(model, pixel_values)
            out.append(feats)  # stays on the device: no per-batch sync with the GPU
            pending = prepare(start + batch_size) if start + batch_size < n else None
            bar.update(len(pixel_values))
    if not out:
        return np.zeros((0, embed_dim(model)), dtype=np.float32)
    return torch.cat(out).float().cpu().numpy()


def _check_images(images: Any) -> np.ndarray | list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] == 3:
            images = images[None]  # one image
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        return images
    if isinstance(images, torch.Tensor):
        return _check_images(images.cpu().numpy())
    if isinstance(images, Sequence):
        arrays = [np.asarray(im) for im in images]
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
                raise ValueError(f"image {i}: expected uint8 (H, W, 3), got {a.dtype} {a.shape}")
        return arrays
    raise TypeError(f"images must be a uint8 array (N, H, W, 3) or a list of (H, W, 3) arrays, "
                    f"got {type(images).__name__}")


def image_features(model, processor, images: np.ndarray | Sequence[np.ndarray], *, batch_size: int = 256,
                   cache: bool | str | os.PathLike = False, progress: bool = True,
                   normalize: bool = False, desc: str = "image features") -> np.ndarray:
    """Image embeddings (`backbone.image_embeds`), float32 (N, D), in the order of `images`.

    images: uint8 (N, H, W, 3), any H and W (the processor's resize handles it), or a list
    of (H, W, 3) arrays of different sizes (grouped by size into batches). The model stays
    where it is; inputs follow it. cache: True (under `cache_root()/features`), a folder, or
    False; only arrays are cached. normalize: L2-normalise each row.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = _check_images(images)
    preprocessor = processor if isinstance(processor, ImagePreprocessor) else ImagePreprocessor.from_processor(processor)
    dtype = compute_dtype(model)
    if isinstance(images, list):
        feats = _encode_list(model, preprocessor, images, batch_size, dtype, progress, desc)
    elif cache is False or cache is None:
        feats = _encode_array(model, preprocessor, images, batch_size, dtype, progress, desc)
    else:
        folder = cache_dir() if cache is True else Path(cache)
        key, description = feature_cache_key(model, preprocessor, images, dtype)
        path = folder / f"{key}.npy"
        feats = _load_cached(path, len(images)) if path.is_file() else None
        if feats is None:
            feats = _encode_array(model, preprocessor, images, batch_size, dtype, progress, desc)
            _save_cached(path, feats, description)
    feats = np.asarray(feats, dtype=np.float32)
    return l2_normalize(feats) if normalize else feats


def _encode_list(model, preprocessor, images: list[np.ndarray], batch_size, dtype, progress, desc) -> np.ndarray:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    out: np.ndarray | None = None
    for idx in groups.values():
        feats = _encode_array(model, preprocessor, np.stack([images[i] for i in idx]), batch_size, dtype,
                              progress, desc)
        if out is None:
            out = np.zeros((len(images), feats.shape[1]), dtype=np.float32)
        out[idx] = feats
    if out is None:
        return np.zeros((0, embed_dim(model)), dtype=np.float32)
    return out


@torch.inference_mode()
def text_features(model, processor, texts: Sequence[str], *, batch_size: int = 256,
                  normalize: bool = False) -> np.ndarray:
    """Text embeddings (`backbone.text_embeds`), float32 (T, D). Cheap: never cached."""
    texts = list(texts)
    if not texts:
        raise ValueError("text_features: no texts")
    tokenizer = getattr(processor, "tokenizer", processor)
    device = model_device(model)
    out = []
    for start in range(0, len(texts), batch_size):
        enc = {k: v.to(device) for k, v in tokenize(model, tokenizer, texts[start:start + batch_size]).items()}
        out.append(text_embeds(model, enc["input_ids"], enc["attention_mask"]).float().cpu())
    feats = torch.cat(out).numpy().astype(np.float32)
    return l2_normalize(feats) if normalize else feats


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / ||x|| along `axis` (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if axis in (-1, x.ndim - 1):  # the common case, without np.linalg.norm's temporaries
        norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
    else:
        norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


__all__ = [
    "FEATURE_VERSION",
    "image_features",
    "text_features",
    "l2_normalize",
    "feature_cache_key",
    "model_fingerprint",
    "array_hash",
    "cache_dir",
]
