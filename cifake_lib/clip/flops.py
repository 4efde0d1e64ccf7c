"""Floating-point operations per image (and per prompt) of a backbone, counted, not estimated.

`torch.utils.flop_counter.FlopCounterMode` counts the matrix multiplications and attention of one
forward pass, and of a forward and backward pass, on a copy of the model's structure built on the
meta device (no weights, no memory, seconds even for ViT-L/14): one image through the vision tower
at the input side the run uses (position embeddings interpolated as in the run), one prompt through
the text tower at the length its family reads (CLIP 77 tokens at most, SigLIP its fixed length, 64 for the base checkpoints).
A FLOP here is a multiply or an add (FlopCounterMode counts 2 per multiply-accumulate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cifake_lib.clip import backbone


def _meta_copy(model: nn.Module) -> nn.Module:
    """The model's structure on the meta device (a LoRA-injected model: its base class and config)."""
    config = model.config
    cls = type(model)
    with torch.device("meta"):
        return cls(config)


def _count(fn) -> tuple[int, int]:
    """(forward FLOPs, forward+backward FLOPs) of fn() -> a tensor."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
        forward = counter.get_total_flops()  # before the backward pass adds its own
        out.float().sum().backward()
    return int(forward), int(counter.get_total_flops())


def flops_per_image(model: nn.Module, image_size: int | None = None) -> dict[str, Any]:
    """{"image_size", "vision_forward", "vision_forward_backward"} and, with a text tower,
    {"text_length", "text_forward", "text_forward_backward"} (one prompt)."""
    meta = model if next(model.parameters()).device.type == "meta" else _meta_copy(model)
    meta.train()
    side = int(image_size or backbone.native_size(meta))
    pixels = torch.zeros(1, 3, side, side, device="meta")
    out: dict[str, Any] = {"image_size": side}
    out["vision_forward"], out["vision_forward_backward"] = _count(lambda: backbone.image_embeds(meta, pixels))
    family = backbone.family(meta)
    if family in backbone.TEXT_FAMILIES:
        length = backbone.text_length(meta)
        ids = torch.zeros(1, length, dtype=torch.long, device="meta")
        out["text_length"] = length
        # no padding mask: building one reads its values, which meta tensors do not have
        out["text_forward"], out["text_forward_backward"] = _count(lambda: backbone.text_embeds(meta, ids, None))
    return out


__all__ = ["flops_per_image"]
