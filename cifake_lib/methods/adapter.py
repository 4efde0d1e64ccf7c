"""`--train adapter`: CLIP-Adapter (`clip.adapter`) trained on a frozen backbone with the
cross-entropy over the class prompts, scored by the prompts' zero-shot text head (an image-only
encoder: by its linear head).

The adapter is a submodule of the `ClipClassifier` (so the optimiser, DDP and the checkpoints see
it), which passes the image embedding through it. The backbone and its logit scale stay frozen
and byte-identical; the run exports the adapter as OUT/clip_adapter.safetensors and the unchanged
input model as OUT/model/ (written once), which `ClipDetector.from_run` reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from cifake_lib.clip.adapter import ADAPTER_FILE, ClipAdapter

if TYPE_CHECKING:
    from cifake_lib.methods.finetune_config import FinetuneConfig


def attach_adapter(model: nn.Module, cfg: FinetuneConfig) -> ClipAdapter:
    """A fresh adapter (seeded by cfg.seed) as `model.adapter`, on its image embedding; the backbone frozen."""
    from cifake_lib.clip.backbone import embed_dim

    clip = model.clip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adapter = ClipAdapter(embed_dim(clip), cfg.adapter_reduction, cfg.adapter_ratio)
    model.adapter = adapter  # registered as a submodule: optimiser, .to(device), DDP; applied by the model
    for p in clip.parameters():
        p.requires_grad_(False)
    return adapter


def export_adapter(adapter: ClipAdapter, out: Path) -> Path:
    return adapter.save(out / ADAPTER_FILE)


def adapter_methods_text(cfg: FinetuneConfig) -> str:
    return (f"CLIP-Adapter (Gao et al., IJCV 2024): a bottleneck MLP (width / {cfg.adapter_reduction}, ReLU, no "
            f"biases) on the frozen image embedding, mixed back with residual ratio {cfg.adapter_ratio:g}, "
            "scored by the zero-shot head of the class prompts and learned with the cross-entropy over the "
            f"averaged class prompts; both CLIP encoders frozen. AdamW at {cfg.adapter_lr:g}.")


__all__ = ["ADAPTER_FILE", "adapter_methods_text", "attach_adapter", "export_adapter"]
