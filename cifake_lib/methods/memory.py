"""Estimating peak GPU memory of CLIP fine-tuning and inference without the GPU.

Training: fp32 master weights (4 B/parameter), fp32 gradients (4 B per trainable parameter), AdamW's
two fp32 moments (8 B per trainable parameter), plus the activations autograd keeps for the
backward pass. Those are *measured*: the bytes of every tensor saved for backward during one forward
under autocast (on any device: what autograd saves does not depend on it, except that attention
kernels differ slightly), at two batch sizes, then extrapolated linearly (per image + fixed; the
fixed part holds the text tower's prompt activations and autocast's half-precision weight copies).
A margin covers the backward pass's transient buffers and the caching allocator.

Inference is *modelled*: half-precision weights plus one layer's activations and the batch's
preprocessed images (inference frees each layer's activations as it goes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

GIB = 2**30
# Colab's T4 shows 15,360 MiB; the CUDA context (~0.4 GiB) and the caching allocator's reserve are
# not in max_memory_allocated, so an estimate must stay under about 14 GiB to fit.
T4_BUDGET_GIB = 14.0
# Backward's transient gradient buffers and allocator fragmentation on top of the saved activations.
TRANSIENT_MARGIN = 1.15


def saved_activation_bytes(model: nn.Module, batch: Sequence[Any],
                           loss_fn: Callable[[nn.Module, Sequence[Any]], torch.Tensor],
                           dtype: torch.dtype | None = None) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward of `loss_fn`.

    Parameters themselves are not counted (they are weights); their autocast copies are.
    `dtype` (torch.bfloat16 / torch.float16) runs the forward under autocast, None in float32.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen.setdefault(ptr, storage.nbytes())
        return t

    device_type = next(model.parameters()).device.type
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = loss_fn(model, batch)
    del loss  # frees the graph; nothing needs the backward here
    return sum(seen.values())


def activation_fit(measure: Callable[[int], int], batch_sizes: tuple[int, int] = (2, 4)) -> tuple[float, float]:
    """(bytes per image, fixed bytes) of a straight line through `measure(b)` at two batch sizes."""
    b0, b1 = batch_sizes
    if not 0 < b0 < b1:
        raise ValueError(f"batch_sizes must be two increasing positive sizes, got {batch_sizes}")
    m0, m1 = measure(b0), measure(b1)
    per_image = (m1 - m0) / (b1 - b0)
    return per_image, max(0.0, m0 - per_image * b0)


@dataclass
class MemoryEstimate:
    """Peak memory (GiB) of one stage at one batch size; `how` says what is measured and what modelled."""

    stage: str
    batch_size: int
    precision: str
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    total_gib: float
    how: str

    def fits(self, budget_gib: float = T4_BUDGET_GIB) -> bool:
        return self.total_gib <= budget_gib

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits_t4": self.fits()}


def training_memory(stage: str, n_params: int, n_trainable: int, per_image: float, fixed: float,
                    batch_size: int, precision: str, *, how: str = "") -> MemoryEstimate:
    """Peak training memory: fp32 weights, grads and AdamW moments + extrapolated activations x margin.

    `batch_size` is one forward's micro-batch (gradient accumulation does not add activations).
    """
    weights, grads, moments = 4 * n_params, 4 * n_trainable, 8 * n_trainable
    activations = (per_image * batch_size + fixed) * TRANSIENT_MARGIN
    return MemoryEstimate(
        stage=stage, batch_size=batch_size, precision=precision, weights_gib=weights / GIB,
        grads_gib=grads / GIB, optimizer_gib=moments / GIB, activations_gib=activations / GIB,
        total_gib=(weights + grads + moments + activations) / GIB,
        how=how or "estimate: parameter states exact, activations measured and extrapolated",
    )


def inference_memory(stage: str, vision_config: Any, n_params: int, batch_size: int,
                     precision: str = "fp16", *, image_size: int | None = None) -> MemoryEstimate:
    """Modelled peak of image-feature extraction: weights + one layer's live tensors + the input
    (`image_size`: the side fed to the model, default its config's).

    One encoder layer at once holds its input, the MLP's hidden (4x wider; quick_gelu keeps about
    three such tensors alive) and the attention output; the batch of preprocessed images sits in
    float32 with about two resize intermediates beside it.
    """
    elt = 2 if precision in ("fp16", "bf16") else 4
    side = int(image_size or vision_config.image_size)  # image_size: the side the model is fed
    tokens = (side // vision_config.patch_size) ** 2 + 1
    hidden = vision_config.hidden_size
    mlp = getattr(vision_config, "intermediate_size", None) or int(hidden * vision_config.mlp_ratio)  # DINOv2: a ratio
    layer = batch_size * tokens * (3 * mlp + 4 * hidden) * elt
    images = 3 * batch_size * 3 * side ** 2 * 4
    weights = n_params * elt
    return MemoryEstimate(
        stage=stage, batch_size=batch_size, precision=precision, weights_gib=weights / GIB, grads_gib=0.0,
        optimizer_gib=0.0, activations_gib=(layer + images) / GIB, total_gib=(weights + layer + images) / GIB,
        how="estimate: modelled (weights + one layer's activations + input images)",
    )
