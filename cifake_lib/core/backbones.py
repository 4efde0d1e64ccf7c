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

# family -> what the grid needs from it. "image": no text tower.
TEXT_FAMILIES = ("clip", "siglip")

# Hub checkpoints the study names (docs, presets), by family. A pattern, so that sizes and
# resolutions of one family need no entry each.
KNOWN = (
    (r"^openai/clip-vit-", "clip"),  # ViT-B/32, B/16, L/14, L/14-336
    (r"^facebook/metaclip-", "clip"),  # MetaCLIP (CLIPModel weights)
    (r"^laion/CLIP-ViT-", "clip"),
    (r"^google/siglip2?-", "siglip"),  # SigLIP and SigLIP 2's fixed-resolution checkpoints (SiglipModel)
    (r"^facebook/dinov2-", "image"),  # DINOv2 (image only)
)
_MODEL_TYPES = {"clip": "clip", "siglip": "siglip"}


def family_of_type(model_type: str | None) -> str:
    """The family of a config's `model_type`: "clip", "siglip", else "image"."""
    return _MODEL_TYPES.get(str(model_type or ""), "image")


def family_of_reference(ref: str) -> str | None:
    """"clip", "siglip" or "image" for a model folder or a known Hub id; None when it cannot be told
    without loading (an unknown Hub id, a folder without a readable config.json)."""
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return family_of_type(config.get("model_type")) if isinstance(config, dict) else None
    return next((fam for pattern, fam in KNOWN if re.match(pattern, str(ref))), None)


def has_text_tower(ref: str) -> bool | None:
    """Whether `ref` has a text tower (None: unknown until it loads)."""
    fam = family_of_reference(ref)
    return None if fam is None else fam in TEXT_FAMILIES


__all__ = ["KNOWN", "TEXT_FAMILIES", "family_of_reference", "family_of_type", "has_text_tower"]
