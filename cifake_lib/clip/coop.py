"""CoOp prompt tuning: learned context vectors in a dual encoder's token-embedding space.

Zhou, Yang, Loy and Liu, "Learning to Prompt for Vision-Language Models", IJCV 2022. The
prompt of each label is `[SOS] v_1 ... v_n <label word> . [EOS]`: n context vectors, shared by
both labels ("unified context", CoOp's default), take the place of the template words before
the label word. Both encoders stay frozen; only the vectors learn. The label embeddings are
then the text tower's output for these prompts, and the zero-shot head (`clip.head`) scores
images with them exactly as it does with written prompts.

The vectors enter the text tower through a forward hook on the token embedding, which
replaces the embeddings of n placeholder tokens after SOS; everything else (position
embeddings, attention masks, pooling at EOS, projection) is CLIP's own code. CoOp initialises
the vectors from N(0, 0.02) (its generic, class-free initialisation); so do we, seeded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cifake_lib.clip.backbone import text_length, token_embedding, trims_padding
from cifake_lib.clip.head import ZeroShotHead, encode_rows, head_scale

LABEL_WORDS = ("real", "fake")  # the word after the context, for REAL (0) and FAKE (1)
CONTEXT_FILE = "prompt_context.safetensors"


def prompt_tokens(tokenizer, n_ctx: int, label_words: Sequence[str],
                  length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, start) of `<prefix> X*n_ctx <word> . <suffix>` per label, where
    prefix and suffix are the special tokens the tokenizer adds (CLIP: SOS ... EOS) and `start` is
    where the n_ctx placeholders begin; padded to one length, or to `length` (SigLIP: 64, the
    length its text tower pools the last position of).

    The placeholders are the prefix's first token (CLIP's SOS: never EOS, where CLIP pools), or the
    word's first token when there is no prefix; their embeddings are replaced anyway.
    """
    rows, starts = [], set()
    for word in label_words:
        text = f"{word}."
        full = list(tokenizer(text, truncation=True)["input_ids"])
        bare = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), None)
        if at is None:
            raise ValueError(f"prompt tuning: cannot find the tokens of {text!r} in the tokenised prompt")
        placeholder = full[0] if at > 0 else bare[0]
        rows.append(full[:at] + [placeholder] * n_ctx + full[at:])
        starts.add(at)
    if len(starts) != 1:
        raise ValueError("prompt tuning: the label prompts begin with different special tokens")
    length = max(max(len(r) for r in rows), length or 0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else rows[0][-1]
    input_ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
    return input_ids, mask, starts.pop()


def _prompt_length(model) -> int | None:
    """The length a family's prompts are padded to (SigLIP's fixed one), or None (the longest)."""
    return None if model is None or trims_padding(model) else text_length(model)


class PromptContext(nn.Module):
    """n_ctx learned context vectors (n_ctx, width) and the tokenised label prompts around them."""

    def __init__(self, ctx: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int = 1,
                 label_words: Sequence[str] = LABEL_WORDS):
        super().__init__()
        self.ctx = nn.Parameter(ctx.detach().clone().float())
        self.start = int(start)  # position of the first context vector (after the tokenizer's prefix)
        self.label_words = tuple(label_words)
        self.register_buffer("input_ids", input_ids, persistent=False)
        self.register_buffer("attention_mask", attention_mask, persistent=False)

    @classmethod
    def create(cls, clip, tokenizer, n_ctx: int = 16, *, label_words: Sequence[str] = LABEL_WORDS,
               seed: int = 0) -> PromptContext:
        """Fresh context vectors from N(0, 0.02) (CoOp's generic initialisation), seeded."""
        width = token_embedding(clip).embedding_dim
        ctx = torch.empty(n_ctx, width).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
        tokens = prompt_tokens(tokenizer, n_ctx, label_words, _prompt_length(clip))
        if tokens[0].shape[1] > text_length(clip):  # found here, not at the first training step
            raise ValueError(f"n_ctx {n_ctx}: the prompts would be {tokens[0].shape[1]} tokens, more than the "
                             f"{text_length(clip)} the text tower reads; lower n_ctx")
        return cls(ctx, *tokens, label_words)

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[0])

    @contextlib.contextmanager
    def _inserted(self, clip):
        """While active, the text tower's token embedding puts the context vectors after the prefix."""
        n, start = self.n_ctx, self.start

        def hook(_module, _inputs, out):
            ctx = self.ctx.to(device=out.device, dtype=out.dtype).expand(out.shape[0], -1, -1)
            return torch.cat([out[:, :start], ctx, out[:, start + n:]], dim=1)

        handle = token_embedding(clip).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def rows(self, clip) -> torch.Tensor:
        """(2, D) unit label embeddings (REAL, FAKE) through the frozen text tower."""
        ids, mask = self.input_ids.to(clip.device), self.attention_mask.to(clip.device)
        with self._inserted(clip):
            return encode_rows(clip, ids, mask, [[0], [1]])

    def head(self, clip, marginal: str = "logsumexp") -> ZeroShotHead:
        """The zero-shot head of the learned prompts (gradients reach the context where enabled)."""
        scale, bias = head_scale(clip)
        return ZeroShotHead.from_rows(self.rows(clip), 0, scale, marginal, bias)

    def save(self, path: str | os.PathLike) -> Path:
        """The context vectors as safetensors; n_ctx and the label words in its metadata."""
        from safetensors.torch import save_file

        from cifake_lib.core.files import atomic_write

        meta = {"label_words": ",".join(self.label_words), "n_ctx": str(self.n_ctx)}
        tensors = {"ctx": self.ctx.detach().cpu().contiguous()}
        return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, tokenizer, model=None) -> PromptContext:
        from safetensors import safe_open

        from cifake_lib.core.weights import check_safetensors

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prompt context file not found")
        check_safetensors(path)  # a cut or pickled file: one line naming it
        with safe_open(str(path), framework="pt") as f:
            if "ctx" not in set(f.keys()):
                raise ValueError(f"{path}: needs a 'ctx' tensor (n_ctx, width), has {sorted(f.keys())}")
            ctx = f.get_tensor("ctx")
            words = tuple((f.metadata() or {}).get("label_words", ",".join(LABEL_WORDS)).split(","))
        if ctx.ndim != 2 or len(words) != 2:
            raise ValueError(f"{path}: ctx must be (n_ctx, width) and there must be two label words")
        return cls(ctx, *prompt_tokens(tokenizer, ctx.shape[0], words, _prompt_length(model)), words)


__all__ = ["CONTEXT_FILE", "LABEL_WORDS", "PromptContext", "prompt_tokens"]
