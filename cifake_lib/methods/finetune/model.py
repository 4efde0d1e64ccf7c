"""The model fine-tuning trains: a backbone as a two-class (REAL, FAKE) classifier.

A dual encoder (CLIP, SigLIP) classifies with the zero-shot head of its prompts
(`clip.head.ZeroShotHead`), recomputed through the text tower at every call so that the text
encoder learns; with `context` (CoOp) the label prompts are learned context vectors before a label
word. An image-only encoder (DINOv2) has no text tower: a linear head on its L2-normalised
embedding takes the head's place (`LinearHead`), and exports as a linear probe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifake_lib.clip import backbone
from cifake_lib.clip.coop import PromptContext
from cifake_lib.clip.head import (
    ZeroShotHead,
    encode_rows,
    head_scale,
    normalize,
    p_fake,
    prompt_index,
)
from cifake_lib.clip.prompts import PromptSet, get_prompt_set
from cifake_lib.core.files import read_json
from cifake_lib.methods.training import val_scores

if TYPE_CHECKING:
    from cifake_lib.methods.finetune_config import FinetuneConfig


def resolve_prompts(spec: str | os.PathLike | PromptSet | Mapping[str, Any]) -> PromptSet:
    """A prompt set by name, file, mapping, or the "prompts" of a run folder's detector.json."""
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        meta_path = path / "detector.json" if path.is_dir() else path if path.name == "detector.json" else None
        if meta_path is not None:
            if not meta_path.is_file():
                raise FileNotFoundError(f"{meta_path}: not found; --prompts wants a prompt set name, a "
                                        ".json/.toml file or a zero-shot run folder")
            meta = read_json(meta_path)
            if not isinstance(meta, dict) or not isinstance(meta.get("prompts"), (dict, str)):
                raise ValueError(f"{meta_path}: no \"prompts\" entry")
            p = meta["prompts"]
            return get_prompt_set(p) if isinstance(p, str) else PromptSet.from_dict(p, source=str(meta_path))
    return get_prompt_set(spec)


class ClassifierOutput(NamedTuple):
    """What `ClipClassifier.forward` returns (float32, with gradients where enabled)."""

    logits: torch.Tensor | None  # (B, 2): REAL, FAKE; None when captions were given
    image_embeds: torch.Tensor  # (B, D) unit vectors
    head: Any  # ZeroShotHead (the label embeddings of this step) or LinearHead; None with captions
    text_embeds: torch.Tensor | None  # (B, D) unit embeddings of the batch's captions (FLYP)
    logit_scale: torch.Tensor  # exp(the logit_scale parameter); 1 for an image-only encoder
    logit_bias: torch.Tensor | None = None  # SigLIP's bias; None otherwise


class LinearHead(nn.Module):
    """(REAL, FAKE) logits = W x + b on the L2-normalised image embedding x: an image-only
    encoder's classifier. Starts at zero (p_fake 0.5 for every image), so training begins from
    the encoder alone; exports as a logistic-regression probe (`as_probe`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def logits(self, features: torch.Tensor, classes: Any = None, *, normalized: bool = False) -> torch.Tensor:
        x = features.float() if normalized else normalize(features.float())
        return self.linear(x.to(self.linear.weight.dtype)).float()

    def as_probe(self):
        """The same decision as a `probe_fit.ProbeModel`: p_fake = sigmoid((w_FAKE - w_REAL) x + b_FAKE - b_REAL)."""
        from cifake_lib.methods.probe_fit import ProbeModel

        w = self.linear.weight.detach().double().cpu().numpy()
        b = self.linear.bias.detach().double().cpu().numpy()
        dim = w.shape[1]
        return ProbeModel(mean=np.zeros(dim), scale=np.ones(dim), weights=[(w[1] - w[0])[None, :]],
                          biases=[np.array([b[1] - b[0]])], kind="logreg",
                          hyper={"head": "linear, fine-tuned with the encoder"})


class ClipClassifier(nn.Module):
    """A backbone + tokenised prompts (or a linear head) -> (REAL, FAKE) logits; both towers differentiable.

    `forward(..., captions=idx)` encodes the captions `idx` (indices into the prompt set's texts,
    as FLYP pairs each image with one) instead of the head and returns their embeddings.
    `image_grad` / `text_grad` False run that tower without gradients (the phases of LP-FT).
    With an `adapter` attribute (CLIP-Adapter), the image embedding passes through it.
    """

    def __init__(self, clip: nn.Module, tokenizer, prompts: PromptSet, context: PromptContext | None = None):
        super().__init__()
        self.clip = clip
        self.prompts = prompts
        self.context = context
        self.image_grad = True
        self.text_grad = True
        self.texts, self.rows, self.n_classes = prompt_index(prompts)
        self.linear = None if backbone.has_text(clip) else LinearHead(backbone.embed_dim(clip))
        ids = torch.zeros((len(self.texts), 1), dtype=torch.long)
        mask = torch.ones_like(ids)
        if self.linear is None:  # the prompts as the model was trained to read them
            enc = backbone.tokenize(clip, tokenizer, self.texts)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        self.register_buffer("input_ids", ids, persistent=False)
        self.register_buffer("attention_mask", mask, persistent=False)

    # Which parameters belong to which side. An image-only encoder's "text side" is its linear head:
    # what LP-FT's first phase fits on frozen image features.
    def text_parameters(self) -> list[nn.Parameter]:
        if self.linear is not None:
            return list(self.linear.parameters())
        return backbone.parameters_of(backbone.text_modules(self.clip))

    def image_parameters(self) -> list[nn.Parameter]:
        adapter = getattr(self, "adapter", None)  # --train adapter: methods.adapter, on the image features
        return backbone.parameters_of(backbone.image_modules(self.clip)) + (
            list(adapter.parameters()) if adapter is not None else [])

    def temperature_parameters(self) -> list[nn.Parameter]:
        """The logit scale and (SigLIP) bias."""
        return [p for p in (backbone.logit_scale(self.clip), backbone.logit_bias(self.clip)) if p is not None]

    def _text_grad(self) -> bool:
        params = self.text_parameters() + ([self.context.ctx] if self.context is not None else [])
        return torch.is_grad_enabled() and self.text_grad and any(p.requires_grad for p in params)

    def head(self) -> ZeroShotHead | LinearHead:
        """The zero-shot head of the prompts (or of the learned context) through the current text
        tower; an image-only encoder's linear head."""
        if self.linear is not None:
            return self.linear
        with torch.set_grad_enabled(self._text_grad()):
            if self.context is not None:  # CoOp: the logit scale is frozen, so its grad mode changes nothing
                return self.context.head(self.clip)
            rows = encode_rows(self.clip, self.input_ids, self.attention_mask, self.rows)
        scale, bias = head_scale(self.clip)
        return ZeroShotHead.from_rows(rows, self.n_classes, scale, logit_bias=bias)

    def caption_embeddings(self, captions: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings of texts[captions]: each distinct caption encoded once."""
        unique, inverse = torch.unique(captions, return_inverse=True)
        ids, mask = self.input_ids[unique], self.attention_mask[unique]
        if backbone.trims_padding(self.clip):  # drop the padding no caption of this batch needs
            length = int(mask.sum(dim=1).max())
            ids, mask = ids[:, :length], mask[:, :length]
        with torch.set_grad_enabled(self._text_grad()):
            return normalize(backbone.text_embeds(self.clip, ids, mask).float())[inverse]

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and self.image_grad and any(
            p.requires_grad for p in self.image_parameters())
        adapter = getattr(self, "adapter", None)
        with torch.set_grad_enabled(grad):
            x = backbone.image_embeds(self.clip, pixel_values)
            return normalize((x if adapter is None else adapter(x)).float())

    def logit_scale(self) -> torch.Tensor:
        scale = backbone.logit_scale(self.clip)
        return scale.float().exp().reshape(()) if scale is not None else torch.ones((), device=self.input_ids.device)

    def logit_bias(self) -> torch.Tensor | None:
        bias = backbone.logit_bias(self.clip)
        return None if bias is None else bias.float().reshape(())

    def forward(self, pixel_values: torch.Tensor, classes: torch.Tensor | None = None,
                captions: torch.Tensor | None = None) -> ClassifierOutput:
        image_embeds = self.image_embeddings(pixel_values)
        if captions is not None:
            return ClassifierOutput(None, image_embeds, None, self.caption_embeddings(captions), self.logit_scale(),
                                    self.logit_bias())
        head = self.head()
        logits = head.logits(image_embeds, classes, normalized=True)
        return ClassifierOutput(logits, image_embeds, head, None, self.logit_scale(), self.logit_bias())


def param_groups(model: ClipClassifier, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only; none on biases, norms, embeddings (CoOp's context
    vectors are token embeddings), the logit scale and bias. An image-only encoder's linear head is
    a group of its own, at `head_lr_scale` x the schedule's learning rate ("lr_scale")."""
    head = {id(p) for p in model.linear.parameters()} if model.linear is not None else set()
    decay, no_decay, linear = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head:
            linear.append(p)
        elif p.ndim < 2 or "embedding" in name or "logit_" in name or "norm" in name or name.startswith("context."):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    if linear:
        groups.append({"params": linear, "weight_decay": 0.0, "name": "linear_head", "lr_scale": head_lr_scale})
    return groups


def set_trainable(model: ClipClassifier, cfg: FinetuneConfig) -> None:
    """requires_grad per --train / --freeze-logit-scale (LP-FT switches sides at run time).

    --train prompt (CoOp) freezes the whole backbone, logit scale included: only the context learns.
    --train lora / adapter: likewise, only the adapters (methods.lora) or the CLIP-Adapter learn.
    An image-only encoder's linear head always learns; DINOv2's mask_token (pretraining only) never does.
    """
    from cifake_lib.methods.lora import set_lora_trainable

    if cfg.train in ("lora", "adapter"):  # hook: methods.lora / methods.adapter
        for p in model.clip.parameters():
            p.requires_grad_(False)
        if cfg.train == "lora":
            set_lora_trainable(model.clip)
    else:
        for p in model.text_parameters():
            p.requires_grad_(cfg.train in ("both", "text") or cfg.lp_ft)
        for p in model.image_parameters():
            p.requires_grad_(cfg.train in ("both", "image"))
        for p in model.temperature_parameters():
            p.requires_grad_(not cfg.freeze_logit_scale and cfg.train != "prompt")
    if model.linear is not None:
        model.linear.requires_grad_(True)
    for p in backbone.pretraining_only_parameters(model.clip):
        p.requires_grad_(False)


@torch.no_grad()
def predict_logits(model: ClipClassifier, preprocess, images: np.ndarray, classes: np.ndarray | None,
                   batch_size: int, device: torch.device, autocast=contextlib.nullcontext) -> np.ndarray:
    """(N, 2) float32 logits of uint8 images with the in-memory model (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        out = []
        with autocast():
            head = model.head()
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
                c = None if classes is None else torch.as_tensor(classes[start:start + batch_size],
                                                                 dtype=torch.long, device=device)
                out.append(head.logits(model.image_embeddings(preprocess(x)), c, normalized=True).float())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 2), dtype=np.float32)
    return torch.cat(out).cpu().numpy()


def validation_scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """val_loss (cross-entropy), val_accuracy (argmax) and val_auc (of p_fake) of (N, 2) logits."""
    labels = np.asarray(labels, dtype=np.int64)
    loss = float(F.cross_entropy(torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(labels)))
    return {"val_loss": loss, **val_scores(labels, p_fake(logits), logits.argmax(axis=1) == 1)}


__all__ = ["ClassifierOutput", "ClipClassifier", "LinearHead", "param_groups", "predict_logits", "resolve_prompts",
           "set_trainable", "validation_scores"]
