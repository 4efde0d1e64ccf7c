"""The losses of fine-tuning, named for what they are, and FLYP's caption pairing.

- `flyp_loss`: FLYP (Goyal et al., "Finetune like you pretrain", CVPR 2023; locuslab/FLYP
  `src/models/flyp_loss.py`, open_clip's ClipLoss): CLIP's own symmetric in-batch contrastive loss
  between the batch's images and a caption of each image's label.
- `siglip_loss`: FLYP's principle for SigLIP (fine-tune as it was pre-trained): SigLIP's pairwise
  sigmoid loss (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023;
  big_vision's siglip trainer, as `SiglipModel(return_loss=True)` computes it) on the same pairs.
- `ce_loss`: the cross-entropy of the (REAL, FAKE) logits over the averaged class prompts (FLYP's
  CE ablation draws one template per class at each step instead); for an image-only encoder, the
  cross-entropy of its linear head.
- `label_aware_clip_loss`: the in-batch CLIP loss with targets spread over same-label pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from cifake_lib.clip.head import ZeroShotHead, prompt_index
from cifake_lib.clip.prompts import CLASS_FIELD, PromptSet

if TYPE_CHECKING:
    from cifake_lib.methods.finetune.model import ClassifierOutput
    from cifake_lib.methods.finetune_config import FinetuneConfig


def flyp_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """FLYP's loss (Goyal et al. 2023; open_clip's ClipLoss): the symmetric in-batch contrastive loss.

    image_emb, text_emb: (B, D) unit vectors, text_emb[i] the caption of image i. Image i's
    target is caption i (arange targets) and caption i's is image i; every other caption in the
    batch is a negative, also one of the same label (as FLYP does on its binary tasks).
    """
    logits = logit_scale * image_emb @ text_emb.T  # (B, B)
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, caption) pair of the batch is a binary
    problem, positive on the diagonal (caption i of image i), negative elsewhere:

        z_ij = logit_scale * cos(text_i, image_j) + logit_bias
        loss = -mean_i sum_j log sigmoid(sign_ij * z_ij),   sign_ij = +1 if i == j else -1

    exactly `SiglipModel(..., return_loss=True).loss` for the same embeddings. Same-label
    captions are negatives, as in FLYP's pairing.
    """
    logits = logit_scale * text_emb @ image_emb.T + logit_bias  # (B, B): logits_per_text
    signs = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum(dim=-1).mean()


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the (REAL, FAKE) logits over the averaged class prompts (see the module notes)."""
    return F.cross_entropy(logits.float(), labels)

def label_aware_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric in-batch CLIP loss with targets spread over every same-label pair.

    image_emb, text_emb: (B, D) unit vectors, text_emb[i] the class embedding of image i's
    label. Row i's target is uniform over the captions j with labels[j] == labels[i] (the
    plain CLIP loss would put it all on j == i and push same-class captions away).
    """
    logits = logit_scale * image_emb @ text_emb.T  # (B, B)
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric: same-label rows have equal counts
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))

def label_text_embeddings(head: ZeroShotHead, labels: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """(B, D): each image's label embedding, its own class's where the set is class-aware and the class known."""
    text = head.weights[labels]
    if head.class_weights is not None and classes is not None:
        known = (classes >= 0) & (classes < head.n_classes)
        own = head.class_weights[labels, classes.clamp(0, head.n_classes - 1)]
        text = torch.where(known[:, None], own, text)
    return text

def caption_choices(prompts: PromptSet) -> tuple[np.ndarray, np.ndarray]:
    """FLYP's captions of a prompt set: (options (K, M) indices into `prompt_index` texts, counts (K,)).

    Row key = label * (C + 1) + (class + 1), class -1 for unknown (C = 0 for sets without
    `{class}`): a known class fills `{class}` with it; an unknown one takes the label's templates
    without a class slot when there are any, else every class's.
    """
    texts, rows, n_classes = prompt_index(prompts)
    index = {t: i for i, t in enumerate(texts)}
    lists = []
    for label in (0, 1):
        slotless = [index[t] for t in prompts.templates(label) if CLASS_FIELD not in t]
        lists.append(slotless if n_classes and slotless else rows[label])
        lists += [rows[2 + label * n_classes + c] for c in range(n_classes)]
    width = max(len(x) for x in lists)
    options = np.array([x + [x[0]] * (width - len(x)) for x in lists], dtype=np.int64)
    return options, np.array([len(x) for x in lists], dtype=np.int64)

def draw_captions(choices: tuple[np.ndarray, np.ndarray], labels: np.ndarray, classes: np.ndarray,
                  seed: int, epoch: int) -> np.ndarray:
    """One caption per image for an epoch: a template of its label chosen uniformly, seeded by
    (seed, epoch), so over the epochs an image meets its label's templates as in FLYP's data."""
    options, counts = choices
    n_classes = len(options) // 2 - 1
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    known = (classes >= 0) & (classes < n_classes)
    key = labels * (n_classes + 1) + np.where(known, classes + 1, 0)
    u = np.random.default_rng([seed, epoch, 0xF1F9]).random(len(labels))
    return options[key, (u * counts[key]).astype(np.int64)]


def compute_loss(cfg: FinetuneConfig, out: ClassifierOutput, labels: torch.Tensor,
                 classes: torch.Tensor | None) -> torch.Tensor:
    """The training objective of `cfg.loss` for one batch's `ClipClassifier` output: FLYP's pairing
    with the backbone's own pre-training loss (CLIP's contrastive, SigLIP's sigmoid), the CE of
    the head's logits (always, for an image-only encoder's linear head), or the label-aware loss."""
    if not isinstance(out.head, ZeroShotHead) and out.logits is not None:
        return ce_loss(out.logits, labels)  # a linear head (image-only encoder)
    if cfg.loss == "flyp":
        if out.logit_bias is not None:
            return siglip_loss(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias)
        return flyp_loss(out.image_embeds, out.text_embeds, out.logit_scale)
    if cfg.loss == "ce":
        return ce_loss(out.logits, labels)
    text = label_text_embeddings(out.head, labels, classes)
    return label_aware_clip_loss(out.image_embeds, text, labels, out.logit_scale)


def loss_name(cfg: FinetuneConfig, family: str) -> str:
    """What the run's loss is, for run.json and the methods text."""
    from cifake_lib.methods.finetune_config import LOSS_NAMES

    if family == "image":
        return "cross-entropy of a linear head on the L2-normalised image embedding (no text tower)"
    if cfg.loss == "flyp" and family == "siglip":
        return ("FLYP's pairing with SigLIP's pairwise sigmoid loss: each image paired with a caption of its "
                "label, every other pair of the batch a negative")
    if cfg.loss == "ce" and family == "siglip":
        return LOSS_NAMES["ce"] + ", on SigLIP's per-label log-sigmoid scores"
    return LOSS_NAMES[cfg.loss]


__all__ = ["caption_choices", "ce_loss", "compute_loss", "draw_captions", "flyp_loss", "label_aware_clip_loss",
           "label_text_embeddings", "loss_name", "siglip_loss"]
