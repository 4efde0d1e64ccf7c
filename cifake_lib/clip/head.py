"""The zero-shot head: a dual encoder as a two-label classifier (REAL, FAKE) built from text prompts.

One head, in torch, for every CLIP or SigLIP detector of the package: zero-shot (`ClipDetector`),
fine-tuning (the loss and its validation scores), explanations (gradients flow through it) and
prompt tuning. It follows open_clip's `zero_shot_classifier`: every template of a label is
encoded, L2-normalised, averaged and normalised again. An image's score for a label is

- CLIP: `z = logit_scale * cos(image, label embedding)`, exactly CLIPModel's `logits_per_image`
  for one prompt per label; p_fake is the FAKE column of the softmax over the two labels;
- SigLIP: `z = logit_scale * cos + logit_bias`, exactly SiglipModel's `logits_per_image`, and
  `sigmoid(z)` is the model's own probability that the label's text matches the image, for each
  label on its own. The rule for p_fake: the two labels' probabilities renormalised over the pair,
  `p_fake = sigmoid(z_FAKE) / (sigmoid(z_REAL) + sigmoid(z_FAKE))`, so that p_fake is 0.5 when the
  model finds both texts equally likely, whatever their absolute level (SigLIP's zero-shot
  probabilities are often far below 0.5 for every label).

`logits` returns scores whose softmax is p_fake in both cases: CLIP's z, and SigLIP's log
sigmoid(z) (the softmax of log-probabilities is their renormalisation). `scores` returns z itself.

Class-aware prompt sets (`{class}` templates) have one embedding per (label, CIFAR class)
besides the label's embedding over every class. An image whose class is known is scored with
its own class's pair; otherwise with the marginal: "logsumexp" (log-mean-exp over the classes,
the label marginal of the joint (label, class) softmax) or "mean" (the label embedding
averaged over every class's templates).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifake_lib.clip.backbone import logit_bias, logit_scale, require_text, text_embeds
from cifake_lib.clip.prompts import MARGINALS, PromptSet, get_prompt_set


def prompt_rows(prompts: PromptSet | str) -> list[list[str]]:
    """The head's rows as prompt lists: REAL, FAKE, then (class-aware sets) REAL per class, FAKE per class."""
    prompts = get_prompt_set(prompts)
    rows: list[list[str]] = [list(prompts.texts(0)), list(prompts.texts(1))]
    if prompts.class_aware:
        for label in (0, 1):
            rows += [list(prompts.texts(label, c)) for c in range(len(prompts.class_names))]
    return rows


def head_texts(prompts: PromptSet | str) -> list[str]:
    """Every unique prompt a prompt set's head needs encoded, in first-use order."""
    return list(dict.fromkeys(t for row in prompt_rows(prompts) for t in row))


def prompt_index(prompts: PromptSet | str) -> tuple[list[str], list[list[int]], int]:
    """(unique texts, each row's indices into them, number of CIFAR classes or 0)."""
    prompts = get_prompt_set(prompts)
    texts = head_texts(prompts)
    index = {t: i for i, t in enumerate(texts)}
    n_classes = len(prompts.class_names) if prompts.class_aware else 0
    return texts, [[index[t] for t in row] for row in prompt_rows(prompts)], n_classes


def normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last axis (zero rows stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def ensemble(text_emb: torch.Tensor, rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """(R, D) unit rows from (T, D) text embeddings: normalise, average each row's texts, normalise.

    Differentiable (an averaging matrix), so fine-tuning and prompt tuning get gradients.
    """
    averaging = torch.zeros(len(rows), text_emb.shape[0], dtype=torch.float32, device=text_emb.device)
    for r, idx in enumerate(rows):
        averaging[r, list(idx)] = 1.0 / len(idx)
    return normalize(averaging @ normalize(text_emb.float()))


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))


@dataclass(eq=False)
class ZeroShotHead:
    """Label embeddings, a logit scale and (SigLIP) a bias: image features -> (REAL, FAKE) logits.

    weights: (2, D) unit vectors; class_weights: (2, C, D), class-aware sets only; logit_scale:
    the multiplier exp(the model's logit_scale parameter), a float or a 0-d tensor (which keeps
    its gradient in fine-tuning); logit_bias: SigLIP's bias (a sigmoid head), None for CLIP (a
    softmax head). Arrays are accepted and held as float32 tensors.
    """

    weights: torch.Tensor
    logit_scale: torch.Tensor | float
    class_weights: torch.Tensor | None = None
    marginal: str = "logsumexp"
    logit_bias: torch.Tensor | float | None = None

    def __post_init__(self) -> None:
        self.weights = _as_tensor(self.weights).float()
        if self.weights.ndim != 2 or self.weights.shape[0] != 2:
            raise ValueError(f"ZeroShotHead: weights must be (2, D), got {tuple(self.weights.shape)}")
        if self.class_weights is not None:
            self.class_weights = _as_tensor(self.class_weights).float()
            cw = self.class_weights
            if cw.ndim != 3 or cw.shape[0] != 2 or cw.shape[2] != self.dim:
                raise ValueError(f"ZeroShotHead: class_weights must be (2, C, {self.dim}), got {tuple(cw.shape)}")
        if self.marginal not in MARGINALS:
            raise ValueError(f"marginal must be one of {MARGINALS}, got {self.marginal!r}")

    @classmethod
    def from_rows(cls, rows: torch.Tensor, n_classes: int, logit_scale: torch.Tensor | float,
                  marginal: str = "logsumexp", logit_bias: torch.Tensor | float | None = None) -> ZeroShotHead:
        """A head from `ensemble`'s (R, D) rows in `prompt_rows` order."""
        class_weights = rows[2:].reshape(2, n_classes, -1) if n_classes else None
        return cls(weights=rows[:2], logit_scale=logit_scale, class_weights=class_weights, marginal=marginal,
                   logit_bias=logit_bias)

    @property
    def sigmoid(self) -> bool:
        """A SigLIP head: each label's probability is sigmoid(z) on its own."""
        return self.logit_bias is not None

    def _z(self, similarities: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """scale * cos (+ bias), then, for a sigmoid head, log sigmoid: scores whose softmax is p."""
        z = scale * similarities
        if self.logit_bias is None:
            return z
        return torch.nn.functional.logsigmoid(z + torch.as_tensor(self.logit_bias, dtype=z.dtype, device=z.device))

    def scores(self, features: Any, *, normalized: bool = False) -> torch.Tensor:
        """(N, 2) z = logit_scale * cos (+ logit_bias): the model's own logits_per_image for the label
        embeddings (the class-free rows)."""
        x = _as_tensor(features).float()
        x = x if normalized else normalize(x)
        z = torch.as_tensor(self.logit_scale, dtype=torch.float32, device=x.device) * x @ self.weights.to(x.device).T
        return z if self.logit_bias is None else z + torch.as_tensor(self.logit_bias, dtype=z.dtype, device=z.device)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_classes(self) -> int:
        return 0 if self.class_weights is None else int(self.class_weights.shape[1])

    def logits(self, features: Any, classes: Any = None, *, normalized: bool = False) -> torch.Tensor:
        """(N, 2) float32 logits (REAL, FAKE) on the features' device, differentiable.

        features: (N, D) image embeddings (tensor or array), L2-normalised here unless
        `normalized`. classes: CIFAR class per image (-1 unknown); class-aware heads only.
        """
        x = _as_tensor(features).float()
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(x.shape)}")
        x = x if normalized else normalize(x)
        scale = torch.as_tensor(self.logit_scale, dtype=torch.float32, device=x.device)
        weights = self.weights.to(x.device)
        if self.class_weights is None:
            return self._z(x @ weights.T, scale)
        cw = self.class_weights.to(x.device)
        per_class = self._z(torch.einsum("nd,lcd->nlc", x, cw), scale)  # (N, 2, C)
        if self.marginal == "logsumexp":
            out = torch.logsumexp(per_class, dim=2) - math.log(cw.shape[1])
        else:
            out = self._z(x @ weights.T, scale)
        if classes is None:
            return out
        c = torch.as_tensor(np.asarray(classes) if not isinstance(classes, torch.Tensor) else classes,
                            dtype=torch.long, device=x.device).reshape(-1)
        if len(c) != len(x):
            raise ValueError(f"classes has {len(c)} entries but there are {len(x)} images")
        known = (c >= 0) & (c < cw.shape[1])
        own = per_class.gather(2, c.clamp(0, cw.shape[1] - 1).view(-1, 1, 1).expand(-1, 2, 1))[..., 0]
        return torch.where(known[:, None], own, out)

    def p_fake(self, features: Any, classes: Any = None, *, normalized: bool = False) -> np.ndarray:
        """p_fake (N,) float64 of image features (see `logits`)."""
        with torch.no_grad():
            return p_fake(self.logits(features, classes, normalized=normalized).cpu().numpy())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head to safetensors (weights, class_weights, logit_scale; marginal in metadata)."""
        from safetensors.torch import save_file

        from cifake_lib.core.files import atomic_write

        tensors = {"weights": self.weights.detach().cpu().contiguous(),
                   "logit_scale": torch.tensor([float(self.logit_scale)], dtype=torch.float64)}
        if self.logit_bias is not None:
            tensors["logit_bias"] = torch.tensor([float(self.logit_bias)], dtype=torch.float64)
        if self.class_weights is not None:
            tensors["class_weights"] = self.class_weights.detach().cpu().contiguous()
        return atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"marginal": self.marginal}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ZeroShotHead:
        from safetensors import safe_open

        from cifake_lib.core.weights import check_safetensors

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text embeddings file not found")
        check_safetensors(path)  # a cut or pickled file: one line naming it
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if not {"weights", "logit_scale"} <= keys:
                raise ValueError(f"{path}: needs 'weights' and 'logit_scale' tensors, has {sorted(keys)}")
            marginal = (f.metadata() or {}).get("marginal", "logsumexp")
            return cls(weights=f.get_tensor("weights"), logit_scale=float(f.get_tensor("logit_scale")[0]),
                       class_weights=f.get_tensor("class_weights") if "class_weights" in keys else None,
                       marginal=marginal,
                       logit_bias=float(f.get_tensor("logit_bias")[0]) if "logit_bias" in keys else None)


def p_fake(logits: Any) -> Any:
    """The FAKE column of the softmax over (REAL, FAKE) logits: sigmoid(z_FAKE - z_REAL).

    A tensor gives a tensor (differentiable); anything else a float64 array.
    """
    if isinstance(logits, torch.Tensor):
        return torch.sigmoid(logits[..., 1] - logits[..., 0])
    z = np.asarray(logits, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * (z[..., 1] - z[..., 0])))  # the sigmoid, without overflow


def encode_texts(model, processor, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{text: embedding} for unique `texts`, in one batched pass (share it between prompt sets)."""
    from cifake_lib.clip.features import text_features

    unique = list(dict.fromkeys(texts))
    with torch.no_grad():
        return dict(zip(unique, text_features(model, processor, unique), strict=True))


def build_head(model, processor, prompts: PromptSet | str, *, marginal: str = "logsumexp",
               embeddings: Mapping[str, np.ndarray] | None = None) -> ZeroShotHead:
    """The zero-shot head of a prompt set: every unique prompt encoded once (no gradients).

    embeddings: precomputed {text: embedding} (from `encode_texts`); missing texts are encoded.
    """
    texts, rows, n_classes = prompt_index(prompts)
    emb = dict(embeddings or {})
    missing = [t for t in texts if t not in emb]
    if missing:
        emb.update(encode_texts(model, processor, missing))
    text_emb = torch.from_numpy(np.stack([np.asarray(emb[t], dtype=np.float32) for t in texts]))
    scale, bias = head_scale(model)
    return ZeroShotHead.from_rows(ensemble(text_emb, rows), n_classes, float(scale.detach()), marginal,
                                  None if bias is None else float(bias.detach()))


def head_scale(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(exp(logit_scale), logit_bias or None) of a dual encoder, as float32 0-d tensors that keep
    their gradients (fine-tuning learns them)."""
    require_text(model, "a zero-shot head")
    bias = logit_bias(model)
    return logit_scale(model).float().exp().reshape(()), None if bias is None else bias.float().reshape(())


def encode_rows(clip, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """(R, D) head rows through the text tower from tokenised prompts, with gradients where
    enabled (fine-tuning): `ZeroShotHead.from_rows` makes the head."""
    return ensemble(text_embeds(clip, input_ids, attention_mask), rows)


__all__ = [
    "ZeroShotHead",
    "build_head",
    "encode_texts",
    "ensemble",
    "encode_rows",
    "head_scale",
    "head_texts",
    "normalize",
    "p_fake",
    "prompt_index",
    "prompt_rows",
]
