"""The one zero-shot head (cifake_lib.clip.head): oracle against CLIPModel, the differentiable
path through the text tower, p_fake, and the safetensors round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifake_lib.clip.head import (
    ZeroShotHead,
    build_head,
    encode_rows,
    ensemble,
    normalize,
    p_fake,
    prompt_index,
)
from cifake_lib.clip.models import load_clip
from cifake_lib.clip.prompts import PromptSet, get_prompt_set


@pytest.fixture(scope="module")
def clip(tiny_model_dir):
    return load_clip(tiny_model_dir, device="cpu")


def test_text_tower_head_equals_clipmodel_logits_per_image(clip):
    """Oracle: through the text tower (as fine-tuning and prompt tuning build it), one template per
    label gives CLIPModel's own logits_per_image, and gradients reach the text encoder."""
    model, processor = clip
    prompts = PromptSet("oracle", real=("a real photo.",), fake=("an AI-generated image.",))
    texts, rows, n_classes = prompt_index(prompts)
    enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
    pixel_values = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=pixel_values).logits_per_image
        feats = model.get_image_features(pixel_values=pixel_values).pooler_output
    head = ZeroShotHead.from_rows(encode_rows(model, enc["input_ids"], enc["attention_mask"], rows), n_classes,
                                  model.logit_scale.exp())
    logits = head.logits(feats)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(p_fake(logits), torch.softmax(ref, dim=1)[:, 1], rtol=1e-5, atol=1e-6)
    logits.sum().backward()
    assert model.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    # The no-gradient builder of the zero-shot detector is the same head.
    built = build_head(model, processor, prompts)
    torch.testing.assert_close(built.logits(feats), logits.detach(), rtol=1e-5, atol=1e-5)


def test_ensemble_and_p_fake_by_hand():
    emb = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    rows = ensemble(emb, [[0, 1], [2]])
    by_hand = torch.tensor([[0.6 / 2, (0.8 + 1.0) / 2], [1.0, 0.0]])
    torch.testing.assert_close(rows, by_hand / by_hand.norm(dim=1, keepdim=True))
    z = np.array([[0.0, 0.0], [1.0, 3.0], [800.0, -800.0]])
    expected = np.array([0.5, 1 / (1 + np.exp(-2.0)), 0.0])
    np.testing.assert_allclose(p_fake(z), expected, atol=1e-12)
    torch.testing.assert_close(p_fake(torch.from_numpy(z)), torch.from_numpy(expected))
    assert p_fake(z).dtype == np.float64


def test_class_aware_head_round_trip_and_devices(clip, tmp_path):
    model, processor = clip
    head = build_head(model, processor, get_prompt_set("class_aware"), marginal="mean")
    assert head.n_classes == 10 and head.class_weights.shape == (2, 10, head.dim)
    feats = torch.randn(4, head.dim, generator=torch.Generator().manual_seed(1))
    classes = np.array([2, -1, 11, 0])
    z = head.logits(feats, classes)
    x = normalize(feats)
    scale = float(head.logit_scale)
    torch.testing.assert_close(z[0], scale * head.class_weights[:, 2] @ x[0])
    torch.testing.assert_close(z[1], scale * head.weights @ x[1])  # unknown class: the "mean" marginal
    torch.testing.assert_close(z[2], scale * head.weights @ x[2])  # out of range counts as unknown
    loaded = ZeroShotHead.load(head.save(tmp_path / "head.safetensors"))
    assert loaded.marginal == "mean"
    torch.testing.assert_close(loaded.logits(feats, classes), z)
    with pytest.raises(ValueError, match="features must be"):
        head.logits(torch.zeros(2, head.dim + 1))
    with pytest.raises(ValueError, match="classes has 3 entries"):
        head.logits(feats, [0, 1, 2])
