"""The tiny offline CLIP: loads through the Hub code path, is seeded, and its tokenizer works."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from cifake_lib.clip.models import load_clip, pick_device
from cifake_lib.clip.tiny import write_tiny_clip


def test_tiny_model_loads_with_from_pretrained_offline(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = CLIPModel.from_pretrained(tiny_model_dir)
    processor = CLIPProcessor.from_pretrained(tiny_model_dir)
    assert model.config.vision_config.image_size == 32
    assert model.config.vision_config.patch_size == 4
    assert processor.image_processor.crop_size["height"] == 32
    assert processor.tokenizer.model_max_length == 77
    assert (tiny_model_dir / "model.safetensors").is_file()


def test_different_prompts_give_different_ids_and_embeddings(tiny_model_dir):
    model, processor = load_clip(tiny_model_dir, device="cpu")
    tok = processor.tokenizer
    a, b = "a real photo.", "an AI-generated image."
    ids_a, ids_b = tok(a).input_ids, tok(b).input_ids
    assert ids_a != ids_b
    # Real words, not bytes: the BPE merges were learned and are in use.
    assert tok.convert_ids_to_tokens(ids_a)[1:-1] == ["a</w>", "real</w>", "photo</w>", ".</w>"]
    assert ids_a[0] == model.config.text_config.bos_token_id
    assert ids_a[-1] == model.config.text_config.eos_token_id != 2
    # Any text tokenises (byte fallback), with no unknown tokens.
    assert tok.unk_token_id not in tok("zebra Ω 🙂").input_ids[1:-1]
    enc = tok([a, b], padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = model.get_text_features(**enc).pooler_output
    assert emb.shape == (2, model.config.projection_dim)
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = CLIPModel.from_pretrained(write_tiny_clip(tmp_path / "a", seed=1)).state_dict()
    b = CLIPModel.from_pretrained(write_tiny_clip(tmp_path / "b", seed=1)).state_dict()
    c = CLIPModel.from_pretrained(write_tiny_clip(tmp_path / "c", seed=2)).state_dict()
    key = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[key], c[key])
    assert json.loads((tmp_path / "a" / "TINY_MODEL.json").read_text())["seed"] == 1


def test_vit_b_32_shape_config(tmp_path):
    from transformers import CLIPConfig

    write_tiny_clip(tmp_path / "b32", shape="vit-b-32")
    cfg = CLIPConfig.from_pretrained(tmp_path / "b32")
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (224, 32)
    assert cfg.vision_config.hidden_size == 768 and cfg.vision_config.num_hidden_layers == 12


def test_load_clip_errors_name_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="no-such-org/no-such-clip"):
        load_clip("no-such-org/no-such-clip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_clip(tmp_path / "empty")
    with pytest.raises(ValueError, match="shape"):
        write_tiny_clip(tmp_path / "x", shape="huge")


def test_pick_device_defaults_and_rejects_missing_cuda():
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")
