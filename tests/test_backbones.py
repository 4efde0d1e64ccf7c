"""Backbones: CLIP, SigLIP and an image-only encoder (DINOv2) through one loader, one zero-shot head,
one preprocessing, the input size as a setting. Tiny random models of each family, written by the
library; transformers' own SiglipModel and processors as oracles; real CIFAKE images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cifake_lib.clip import backbone
from cifake_lib.clip.models import load_backbone
from cifake_lib.clip.tiny import write_tiny_model
from cifake_lib.core.backbones import family_of_reference
from cifake_lib.data.preprocess import ImagePreprocessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = {"clip": ("CLIPModel", "CLIPProcessor"), "siglip": ("SiglipModel", "SiglipProcessor"),
           "dinov2": ("Dinov2Model", "BitImageProcessor")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{family: folder} of the three tiny models."""
    root = tmp_path_factory.mktemp("backbones")
    return {fam: write_tiny_model(root / fam, fam) for fam in CLASSES}


@pytest.fixture(scope="module")
def real_images(sample_dir):
    from cifake_lib.data.load import load_cifake

    data = load_cifake(str(sample_dir), subset=(40, 24), val_fraction=0, progress=False)
    return data.test.images


@pytest.mark.parametrize("fam", list(CLASSES))
def test_one_loader_gives_each_familys_real_classes(tiny, fam):
    model, processor = load_backbone(tiny[fam], device="cpu")
    assert type(model).__name__ == CLASSES[fam][0]
    assert type(processor).__name__.removesuffix("Pil") == CLASSES[fam][1]
    expected = {"dinov2": "image"}.get(fam, fam)
    assert backbone.family(model) == family_of_reference(str(tiny[fam])) == expected
    assert backbone.has_text(model) == (fam != "dinov2")
    assert family_of_reference("google/siglip2-base-patch16-224") == "siglip"
    assert family_of_reference("facebook/dinov2-base") == "image"
    assert family_of_reference("facebook/metaclip-b32-400m") == "clip"


def test_siglip_head_is_siglipmodels_own_logits_and_the_renormalised_sigmoid(tiny):
    """Oracle: one prompt per label gives SiglipModel's logits_per_image (scale * cos + bias);
    p_fake is sigmoid(z_FAKE) / (sigmoid(z_REAL) + sigmoid(z_FAKE))."""
    from cifake_lib.clip.head import build_head, p_fake
    from cifake_lib.clip.prompts import PromptSet

    model, processor = load_backbone(tiny["siglip"], device="cpu")
    prompts = PromptSet("oracle", real=("a real photo.",), fake=("an ai-generated image.",))
    enc = backbone.tokenize(model, processor.tokenizer, ["a real photo.", "an ai-generated image."])
    assert enc["input_ids"].shape[1] == backbone.SIGLIP_TEXT_LENGTH  # padded as SigLIP was trained
    pixel_values = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], pixel_values=pixel_values).logits_per_image  # (6, 2)
        feats = backbone.image_embeds(model, pixel_values)
    head = build_head(model, processor, prompts)
    assert head.sigmoid
    torch.testing.assert_close(head.scores(feats), ref, rtol=1e-5, atol=1e-5)
    sig = torch.sigmoid(ref.double())
    np.testing.assert_allclose(head.p_fake(feats), (sig[:, 1] / sig.sum(dim=1)).numpy(), rtol=1e-6, atol=1e-9)
    # the same rule from the scores the rest of the package reads (softmax of log-sigmoids)
    np.testing.assert_allclose(p_fake(head.logits(feats).detach().numpy()), head.p_fake(feats), atol=1e-12)


def test_siglip_loss_is_siglipmodels_own():
    """Oracle: `siglip_loss` equals SiglipModel(return_loss=True).loss on the same embeddings."""
    from transformers import SiglipConfig, SiglipModel

    from cifake_lib.methods.finetune import siglip_loss

    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(
        text_config={"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2})).eval()
    ids = torch.randint(0, 50, (5, 16))
    pixels = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
    ours = siglip_loss(out.image_embeds, out.text_embeds, model.logit_scale.exp(), model.logit_bias)
    torch.testing.assert_close(ours, out.loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fam", ["siglip", "dinov2"])
def test_preprocessing_reads_each_familys_processor(tiny, real_images, fam):
    """Our tensor preprocessing against the family's own image processor on real CIFAKE images:
    SigLIP's square bilinear resize (tiny: 32, and its published 224), DINOv2's shortest-edge
    bicubic resize then centre crop (tiny: 36 -> 32, and the published 256 -> 224)."""
    from cifake_lib.clip.models import image_processor_class

    _, processor = load_backbone(tiny[fam], device="cpu")
    own = getattr(processor, "image_processor", processor)
    published = image_processor_class("siglip")() if fam == "siglip" else image_processor_class("dinov2")(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    one_level = 1 / 255 / min(own.image_std) + 1e-5
    for reference, side in ((own, 32), (published, 224)):
        expected = reference(images=[Image.fromarray(i) for i in real_images], return_tensors="pt").pixel_values
        got = ImagePreprocessor.from_processor(reference)(torch.from_numpy(real_images))
        assert got.shape == expected.shape == (len(real_images), 3, side, side)
        levels = (got - expected).abs() / one_level
        # PIL resizes in fixed point, we in float: a pixel may land a level away, rarely two (a 32 -> 36
        # bicubic upsampling overshoots most)
        assert levels.max().item() <= 2.0 and (levels > 1.0).float().mean().item() < 0.01
        assert (got - expected).abs().mean().item() < 1e-3


@pytest.mark.parametrize("fam", list(CLASSES))
def test_the_last_block_pooled_is_the_image_embedding(tiny, fam):
    """The layer-wise probe's last block is exactly the ordinary probe's feature, in every family."""
    model, _ = load_backbone(tiny[fam], device="cpu")
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = backbone.vision_hidden_states(model, pixel_values)
        assert len(hidden) == backbone.n_blocks(model) == 2
        torch.testing.assert_close(backbone.pool_block(model, hidden[-1]), backbone.image_embeds(model, pixel_values))


@pytest.mark.parametrize("fam", list(CLASSES))
def test_image_size_scales_the_processor_and_interpolates(tiny, real_images, fam):
    """image_size=64: the processor makes 64 px inputs (DINOv2 keeps its resize/crop ratio) and the
    model embeds them through interpolated position embeddings."""
    model, processor = load_backbone(tiny[fam], device="cpu", image_size=64)
    pre = ImagePreprocessor.from_processor(processor)
    pixel_values = pre(torch.from_numpy(real_images[:4]))
    assert tuple(pixel_values.shape) == (4, 3, 64, 64)
    if fam == "dinov2":
        assert pre.size == {"shortest_edge": 72} and pre.crop_size == {"height": 64, "width": 64}  # 36/32 kept
    with torch.no_grad():
        assert backbone.image_embeds(model, pixel_values).shape == (4, backbone.embed_dim(model))
    with pytest.raises(ValueError, match="at least 8"):
        load_backbone(tiny[fam], device="cpu", image_size=4)


@pytest.mark.parametrize("fam, towers, modules", [("clip", "both", 16), ("siglip", "both", 16), ("siglip", "vision", 8),
                                                  ("dinov2", "both", 8), ("dinov2", "vision", 8)])
def test_lora_targets_every_blocks_attention_projections(tiny, fam, towers, modules):
    """q, k, v, out of every block of the chosen towers (2 blocks a tower here), nothing else: not
    SigLIP's pooling head, whose attention reads its out_proj as a weight."""
    import re

    model, _ = load_backbone(tiny[fam], device="cpu")
    pattern = backbone.lora_target_regex(model, towers)
    matched = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)]
    assert len(matched) == modules and not any(".head." in n for n in matched)
    if fam == "dinov2":
        with pytest.raises(ValueError, match="no text tower"):
            backbone.lora_target_regex(model, "text")


def test_flops_counted_on_the_meta_copy_equal_a_real_forward(tiny):
    """The meta-device count equals FlopCounterMode on the real model's forward with eager attention
    (the CPU's fused attention kernel is not counted by FlopCounterMode; on the meta device it
    decomposes into counted matrix products); a smaller input costs fewer FLOPs (ViT-B/32's
    published shape is counted in bench/bench_flops.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cifake_lib.clip.flops import flops_per_image

    model, _ = load_backbone(tiny["clip"], device="cpu")
    counted = flops_per_image(model)
    model.set_attn_implementation("eager")
    with FlopCounterMode(display=False) as real, torch.no_grad():
        backbone.image_embeds(model, torch.zeros(1, 3, 32, 32))
    assert counted["image_size"] == 32 and counted["vision_forward"] == real.get_total_flops() > 0
    assert counted["vision_forward_backward"] > 2 * counted["vision_forward"]
    assert counted["text_length"] == 77 and counted["text_forward"] > 0
    assert flops_per_image(model, 16)["vision_forward"] < counted["vision_forward"]


def test_image_only_encoder_refuses_what_needs_text(tiny, sample_dir, tmp_path):
    from cifake_lib.methods.finetune import FinetuneConfig, checked
    from cifake_lib.methods.zeroshot import ClipDetector

    for train in ("both", "text", "prompt"):
        with pytest.raises(ValueError, match=f"no text tower: train={train}"):
            checked(FinetuneConfig(model=str(tiny["dinov2"]), train=train))
    with pytest.raises(ValueError, match="needs a text tower"):
        ClipDetector.from_pretrained(tiny["dinov2"], device="cpu")


@pytest.fixture(scope="module")
def small_real(sample_dir):
    from cifake_lib.data.load import load_cifake

    return load_cifake(str(sample_dir), subset=(640, 200), val_fraction=0.2, seed=0, progress=False)


@pytest.mark.parametrize("fam, train", [("dinov2", "image"), ("siglip", "both")])
def test_fine_tuning_learns_and_reloads(tiny, small_real, tmp_path, fam, train):
    """DINOv2 with its linear head (exported as a probe) and SigLIP with FLYP's pairing and its sigmoid
    loss learn on real images: test AUC above the untrained start (a zero head: 0.5; SigLIP: its own
    zero-shot AUC); the saved detector scores the test images as the run did."""
    from sklearn.metrics import roc_auc_score

    import cifake_lib as cl

    cfg = cl.FinetuneConfig(model=str(tiny[fam]), train=train, prompts="plain", lr=1e-3 if fam == "siglip" else 5e-4,
                            batch_size=32, max_steps=48, eval_every=16, progress=False, cpu=True, log_with="csv")
    result = cl.run_finetune(small_real, cfg, tmp_path / "run")
    metrics = next(iter(result.metrics.values()))
    if fam == "siglip":
        start = roc_auc_score(small_real.test.labels, cl.ClipDetector.from_pretrained(
            tiny[fam], "plain", device="cpu").predict_proba(small_real.test.images))
        assert metrics["roc_auc"] > start + 0.02
        assert "sigmoid" in cl.read_json(tmp_path / "run" / "detector.json")["loss_name"]
    else:
        assert metrics["roc_auc"] > 0.55
        assert cl.read_json(tmp_path / "run" / "detector.json")["kind"] == "probe"
    detector = cl.load_detector(tmp_path / "run", device="cpu")
    saved = cl.read_predictions(tmp_path / "run" / "predictions.csv")
    np.testing.assert_allclose(detector.predict_proba(small_real.test.images[:16]), saved["p_fake"][:16], atol=1e-5)
    flops = cl.read_json(tmp_path / "run" / "run.json")["cost"]["flops_per_image"]
    assert flops["vision_forward_backward"] > 0 and ("text_forward" in flops) == (fam != "dinov2")
    scalars = (tmp_path / "run" / "logs" / "scalars.csv").read_text().splitlines()
    assert scalars[0] == "step,tag,value" and any(",train/loss," in line for line in scalars) \
        and any(",val/auc," in line for line in scalars)


def test_an_image_only_encoder_trains_what_its_forward_uses_its_head_at_head_lr(tiny):
    """DINOv2's mask_token (masked-image pretraining only) stays frozen, so no trainable parameter
    lacks a gradient (multi-GPU DDP would hang on it); the zero-initialised linear head is its own
    AdamW group at head_lr / lr."""
    from cifake_lib.clip.prompts import get_prompt_set
    from cifake_lib.methods.finetune import (
        ClipClassifier,
        FinetuneConfig,
        param_groups,
        set_trainable,
    )

    clip, _ = load_backbone(tiny["dinov2"], device="cpu")
    model = ClipClassifier(clip, None, get_prompt_set("plain"))
    cfg = FinetuneConfig(model=str(tiny["dinov2"]), train="image", lr=1e-5, head_lr=1e-2)
    set_trainable(model, cfg)
    logits = model(torch.randn(4, 3, 32, 32)).logits
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not clip.embeddings.mask_token.requires_grad
    groups = param_groups(model, 0.1, head_lr_scale=cfg.head_lr / cfg.base_lr)
    head = [g for g in groups if "lr_scale" in g]
    assert len(head) == 1 and head[0]["lr_scale"] == pytest.approx(1000)
    assert {id(p) for p in head[0]["params"]} == {id(p) for p in model.linear.parameters()}


def test_flops_are_counted_at_the_side_the_processor_makes():
    """DINOv2's position grid is for 518 px but its processor crops to 224: the cost is at 224."""
    from transformers import BitImageProcessor

    from cifake_lib.clip.tiny import meta_model
    from cifake_lib.methods.cost import with_flops

    meta = meta_model("dinov2", "dinov2-base")
    processor = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    assert with_flops({}, meta, None, processor)["flops_per_image"]["image_size"] == 224
    assert with_flops({}, meta, 112, processor)["flops_per_image"]["image_size"] == 112


def test_unsupported_architectures_and_sizes_are_named(tiny, tmp_path):
    """A model type the library does not read (SigLIP 2 NaFlex, MetaCLIP 2) is refused by name, not
    read as image-only; an input smaller than one patch names image_size; SigLIP's prompt length is
    its text tower's."""
    import json
    import shutil

    from cifake_lib.core.backbones import UnsupportedBackbone

    assert family_of_reference("google/siglip2-base-patch16-naflex") is None
    assert family_of_reference("facebook/metaclip-2-worldwide-huge-quickgelu") is None
    other = tmp_path / "naflex"
    shutil.copytree(tiny["siglip"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "siglip2"}))
    with pytest.raises(UnsupportedBackbone, match="model_type 'siglip2'"):
        load_backbone(other, device="cpu")
    with pytest.raises(ValueError, match="image_size 2 is smaller than one 4-pixel patch"):
        load_backbone(tiny["clip"], device="cpu", image_size=2)
    from cifake_lib.clip.coop import PromptContext

    siglip, processor = load_backbone(tiny["siglip"], device="cpu")
    assert backbone.text_length(siglip) == siglip.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match="n_ctx 80: the prompts would be 84 tokens, more than the 64"):
        PromptContext.create(siglip, processor.tokenizer, 80)
