"""The backbones the study compares, behind one small interface.

Three families, told apart by the model's `config.model_type`:

- "clip": `CLIPModel` (OpenAI's ViT-B/32, B/16, L/14, L/14-336; MetaCLIP). Image and text towers,
  each with a projection; a two-label head is the softmax over `logit_scale * cos`.
- "siglip": `SiglipModel` (SigLIP, and SigLIP 2's fixed-resolution checkpoints, which load with
  the same class). The towers pool on their own (the vision tower's attention-pooling head, the
  text tower's last token), so there is no separate projection; the text was trained padded to a
  fixed length (`padding="max_length"`); per label, `sigmoid(logit_scale * cos + logit_bias)`.
- "image": an image-only encoder through `AutoModel` (DINOv2: `Dinov2Model`), its pooled output
  (the layer-normed class token) as the image embedding. No text tower: no zero-shot head, no
  FLYP, no prompt tuning; fine-tuning uses a linear head instead.

Everything else in the package asks this module, never a model's attribute names: which family,
the image and text embeddings (`image_embeds`, `text_embeds`), how to tokenise, which modules are
each tower, the logit scale and bias, the vision blocks and how a block is pooled. Inputs of
another size than the model's own go through interpolated position embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cifake_lib.core.backbones import TEXT_FAMILIES, family_of_type

FAMILIES = ("clip", "siglip", "image")
SIGLIP_TEXT_LENGTH = 64  # SigLIP's text tower was trained on prompts padded to 64 tokens (its positions)


def family(model: nn.Module) -> str:
    """The family of a loaded model (or of a module holding one as `.clip`)."""
    model = getattr(model, "clip", model)
    return family_of_type(getattr(getattr(model, "config", None), "model_type", None))


def has_text(model: nn.Module) -> bool:
    return family(model) in TEXT_FAMILIES


def require_text(model: nn.Module, what: str) -> None:
    """A clear error when `what` needs a text tower the model lacks."""
    if not has_text(model):
        name = getattr(model, "name_or_path", "") or type(model).__name__
        raise ValueError(f"{what} needs a text tower; {name} is an image-only encoder "
                         "(use the probe, the layer-wise probe, or fine-tuning with train image, lora or adapter)")


def vision_config(model: nn.Module) -> Any:
    config = model.config
    return getattr(config, "vision_config", None) or config


def native_size(model: nn.Module) -> int:
    """The input side the model was trained at (its position embeddings' grid)."""
    size = vision_config(model).image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def vision_tower(model: nn.Module) -> nn.Module:
    """The image transformer (the whole model for an image-only encoder)."""
    return model.vision_model if family(model) in TEXT_FAMILIES else model


def image_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that compute the image embedding: the tower and, for CLIP, its projection."""
    if family(model) == "clip":
        return [model.vision_model, model.visual_projection]
    return [vision_tower(model)]


def text_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that compute a text embedding (none for an image-only encoder)."""
    fam = family(model)
    if fam == "clip":
        return [model.text_model, model.text_projection]
    return [model.text_model] if fam == "siglip" else []


def parameters_of(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def pretraining_only_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that only masked-image pretraining reads (DINOv2's `mask_token`): a detector's
    forward never uses them, so they never train (multi-GPU DDP would wait for their gradients)."""
    token = getattr(getattr(vision_tower(model), "embeddings", None), "mask_token", None)
    return [token] if isinstance(token, nn.Parameter) else []


def embed_dim(model: nn.Module) -> int:
    """Width of the image (and text) embedding."""
    fam = family(model)
    if fam == "clip":
        return int(model.config.projection_dim)
    return int(vision_config(model).hidden_size)


def logit_scale(model: nn.Module) -> nn.Parameter | None:
    """The learned log temperature (its exp multiplies the cosine), or None (image-only)."""
    return getattr(model, "logit_scale", None) if has_text(model) else None


def logit_bias(model: nn.Module) -> nn.Parameter | None:
    """SigLIP's learned bias of the sigmoid logits; None for CLIP (softmax) and image-only encoders."""
    return getattr(model, "logit_bias", None) if family(model) == "siglip" else None


def _interpolate(model: nn.Module, pixel_values: torch.Tensor) -> bool:
    return tuple(pixel_values.shape[-2:]) != (native_size(model), native_size(model))


def image_embeds(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, D) image embeddings, not normalised: CLIP's projected class token, SigLIP's pooled
    output, an image-only encoder's pooled output. Another input size than the model's own
    interpolates the position embeddings."""
    fam = family(model)
    if fam == "image":  # DINOv2 interpolates its position embeddings whenever the size differs
        return model(pixel_values=pixel_values).pooler_output
    out = model.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=_interpolate(model, pixel_values))
    pooled = out.pooler_output
    return model.visual_projection(pooled) if fam == "clip" else pooled


def text_embeds(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(T, D) text embeddings, not normalised: CLIP's projected end-of-text token, SigLIP's pooled
    last token (its text tower takes no attention mask: padding is part of what it was trained on)."""
    fam = family(model)
    if fam == "clip":
        return model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
    require_text(model, "encoding text")
    return model.text_model(input_ids=input_ids).pooler_output


def text_length(model: nn.Module) -> int:
    """The most tokens the text tower reads (its position embeddings): CLIP 77; SigLIP pads every
    prompt to it (64 for the base checkpoints; read from the config, as checkpoints differ)."""
    config = getattr(getattr(model, "clip", model), "config", None)
    text = getattr(config, "text_config", None)
    return int(getattr(text, "max_position_embeddings", None) or SIGLIP_TEXT_LENGTH)


def tokenize(model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of `texts` as the model was trained: CLIP padded to the longest,
    SigLIP to its fixed length."""
    if family(model) == "siglip":
        enc = tokenizer(list(texts), padding="max_length", max_length=text_length(model), truncation=True,
                        return_tensors="pt")
    else:
        enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    ids = enc["input_ids"]
    mask = enc.get("attention_mask")
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}


def trims_padding(model: nn.Module) -> bool:
    """Whether a batch's prompts may be cut to their longest (CLIP pools at the end-of-text token;
    SigLIP pools the last position, so its padding must stay)."""
    return family(model) == "clip"


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The text tower's token embedding (prompt tuning inserts its context vectors there)."""
    require_text(model, "prompt tuning")
    return model.text_model.embeddings.token_embedding


# ---------------------------------------------------------------------------
# Vision blocks: for the layer-wise probe and the explanations
# ---------------------------------------------------------------------------


def vision_blocks(model: nn.Module) -> nn.ModuleList:
    tower = vision_tower(model)
    encoder = tower.encoder
    return encoder.layers if hasattr(encoder, "layers") else encoder.layer


def n_blocks(model: nn.Module) -> int:
    return len(vision_blocks(model))


def vision_hidden_states(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The output of every vision block, (B, tokens, width) each, from one forward pass."""
    tower = vision_tower(model)
    kwargs = {} if family(model) == "image" else {"interpolate_pos_encoding": _interpolate(model, pixel_values)}
    return tower(pixel_values=pixel_values, output_hidden_states=True, **kwargs).hidden_states[1:]


def pool_block(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A block's output pooled as the tower pools its last block, in the embedding space: CLIP's
    class token through post_layernorm and the projection; SigLIP's tokens through post_layernorm
    and the attention-pooling head; an image-only encoder's class token through its final norm.
    The last block gives exactly `image_embeds`."""
    fam = family(model)
    if fam == "clip":
        return model.visual_projection(model.vision_model.post_layernorm(hidden[:, 0, :]))
    if fam == "siglip":
        tower = model.vision_model
        normed = tower.post_layernorm(hidden)
        return tower.head(normed) if getattr(tower, "use_head", True) and hasattr(tower, "head") else normed[:, 0]
    return model.layernorm(hidden)[:, 0, :]


def has_class_token(model: nn.Module) -> bool:
    """Whether the vision tower carries a class token (attention rollout reads its row)."""
    return family(model) != "siglip"


# ---------------------------------------------------------------------------
# LoRA: which linear layers are the attention projections
# ---------------------------------------------------------------------------

_ATTENTION = {
    "clip": (r"self_attn\.(?:q_proj|k_proj|v_proj|out_proj)", {"vision": "vision_model", "text": "text_model"}),
    "siglip": (r"self_attn\.(?:q_proj|k_proj|v_proj|out_proj)", {"vision": "vision_model", "text": "text_model"}),
    # DINOv2: q/k/v/o_proj in transformers 5.2x; attention.query/key/value and output.dense before
    "image": (r"attention\.(?:[qkvo]_proj|attention\.(?:query|key|value)|output\.dense)", {"vision": "encoder"}),
}


def lora_target_regex(model: nn.Module, towers: str) -> str:
    """peft's target_modules as a full-match regex: the attention projections of every block of the
    chosen towers ("vision", "text" or "both"; an image-only encoder has only "vision")."""
    fam = family(model)
    pattern, roots = _ATTENTION[fam]
    wanted = ("vision", "text") if towers == "both" else (towers,)
    if fam == "image" and towers != "vision":
        if towers == "both":
            wanted = ("vision",)  # an image-only encoder: its one tower
        else:
            raise ValueError("lora_towers text: an image-only encoder has no text tower")
    if any(w not in roots for w in wanted):
        raise ValueError(f"lora_towers must be one of vision, text, both; got {towers!r}")
    # only the blocks' attention: SigLIP's pooling head holds an nn.MultiheadAttention whose out_proj
    # is read as a weight, never called, so an adapter there would train nothing
    return rf"(?:{'|'.join(roots[w] for w in wanted)})\.(?:.*\.)?(?:layers|layer)\.\d+\.{pattern}"


__all__ = [
    "pretraining_only_parameters",
    "text_length",
    "FAMILIES",
    "TEXT_FAMILIES",
    "embed_dim",
    "family",
    "family_of_type",
    "has_class_token",
    "has_text",
    "image_embeds",
    "image_modules",
    "logit_bias",
    "logit_scale",
    "lora_target_regex",
    "n_blocks",
    "native_size",
    "parameters_of",
    "pool_block",
    "require_text",
    "text_embeds",
    "text_modules",
    "tokenize",
    "token_embedding",
    "trims_padding",
    "vision_blocks",
    "vision_hidden_states",
    "vision_tower",
]
