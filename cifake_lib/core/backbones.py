"""Which backbone family a model reference names, without loading it (torch-free).

The study grid plans runs before anything loads (`cifake run --print-plan` imports no torch), so
it needs to know whether a backbone has a text tower from its reference alone: a local folder's
config.json says (`model_type`); a Hub id is looked up among the checkpoints this project knows.
`clip.backbone` gives the same answer for a loaded model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cifake_lib.core.errors import CifakeError

TINY_MARK = "TINY_MODEL.json"  # in every tiny random model folder (clip.tiny): its numbers mean nothing
# family -> what the grid needs from it. "image": no text tower.
TEXT_FAMILIES = ("clip", "siglip")

# Hub checkpoints the study names (docs, presets), by family. A pattern, so that sizes and
# resolutions of one family need no entry each.
KNOWN = (
    (r"^openai/clip-vit-", "clip"),  # ViT-B/32, B/16, L/14, L/14-336
    (r"^facebook/metaclip-(?!2-)", "clip"),  # MetaCLIP (CLIPModel weights; MetaCLIP 2 is another class)
    (r"^laion/CLIP-ViT-", "clip"),
    (r"^google/siglip2?-(?!.*naflex)", "siglip"),  # SigLIP and SigLIP 2's fixed-resolution checkpoints (SiglipModel)
    (r"^facebook/dinov2-", "image"),  # DINOv2 (image only)
)
# config.json's model_type -> family: only the architectures whose embeddings clip.backbone reads.
MODEL_TYPES = {"clip": "clip", "siglip": "siglip", "dinov2": "image", "dinov2_with_registers": "image"}


class UnsupportedBackbone(CifakeError):
    """A model whose architecture (config.json's model_type) this library does not read."""


def family_of_type(model_type: str | None) -> str:
    """The family of a config's `model_type`: "clip", "siglip" or "image" (DINOv2); any other type
    is refused (a SigLIP 2 NaFlex or MetaCLIP 2 checkpoint read as image-only would fail later, obscurely)."""
    fam = MODEL_TYPES.get(str(model_type or ""))
    if fam is None:
        raise UnsupportedBackbone(
            f"model_type {model_type!r} is not a backbone this library reads; supported: "
            f"{', '.join(MODEL_TYPES)} (CLIP and MetaCLIP, SigLIP and SigLIP 2 fixed-resolution checkpoints, "
            "DINOv2)")
    return fam


def family_of_reference(ref: str) -> str | None:
    """"clip", "siglip" or "image" for a model folder or a known Hub id; None when it cannot be told
    without loading (an unknown Hub id, a folder without a readable config.json)."""
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict) or config.get("model_type") not in MODEL_TYPES:
            return None  # not a backbone this library reads: loading it says so
        return family_of_type(config.get("model_type"))
    return next((fam for pattern, fam in KNOWN if re.match(pattern, str(ref))), None)


def has_text_tower(ref: str) -> bool | None:
    """Whether `ref` has a text tower (None: unknown until it loads)."""
    fam = family_of_reference(ref)
    return None if fam is None else fam in TEXT_FAMILIES


__all__ = ["TINY_MARK", "KNOWN", "MODEL_TYPES", "UnsupportedBackbone", "TEXT_FAMILIES", "family_of_reference", "family_of_type", "has_text_tower"]
