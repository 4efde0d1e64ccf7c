"""Tensor preprocessing matches CLIPImageProcessor; the PIL path reads any image as RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPProcessor

from cifake_lib.data.preprocess import ImagePreprocessor, fit_to_square, load_image_rgb

# One 8-bit level after normalisation by CLIP's smallest std: our resize rounds like PIL's
# but with float rather than fixed-point weights, so a pixel may land one level away.
ONE_LEVEL = 1 / 255 / 0.26130258 + 1e-5


@pytest.mark.parametrize("shape", [(32, 32), (32, 48), (300, 250), (224, 224)])
def test_matches_clip_image_processor_vit_b_32_settings(shape):
    reference = CLIPImageProcessor()  # ViT-B/32's settings: shortest edge 224, bicubic, crop 224
    ours = ImagePreprocessor.from_processor(reference)
    images = np.random.default_rng(0).integers(0, 256, (3, *shape, 3), dtype=np.uint8)
    expected = reference(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
    got = ours(torch.from_numpy(images))
    assert got.shape == expected.shape == (3, 3, 224, 224)
    assert (got - expected).abs().max().item() <= ONE_LEVEL
    assert (got - expected).abs().mean().item() < 1e-3


def test_matches_on_real_cifake_with_tiny_model(sample_dir, tiny_model_dir):
    from cifake_lib.data.load import load_cifake

    data = load_cifake(str(sample_dir), subset=(100, 50), val_fraction=0, progress=False)
    processor = CLIPProcessor.from_pretrained(tiny_model_dir)
    images = data.test.images[:16]
    expected = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
    got = ImagePreprocessor.from_processor(processor)(torch.from_numpy(images))
    assert got.shape == expected.shape == (16, 3, 32, 32)
    assert (got - expected).abs().max().item() <= ONE_LEVEL
    # Upsampled to ViT-B/32's 224 as well.
    big = CLIPImageProcessor()
    expected = big(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
    got = ImagePreprocessor.from_processor(big)(torch.from_numpy(images))
    assert (got - expected).abs().max().item() <= ONE_LEVEL


def test_reads_settings_from_processor_not_constants():
    ip = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 48},
                            image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    pre = ImagePreprocessor.from_processor(ip)
    out = pre(torch.full((1, 32, 32, 3), 255, dtype=torch.uint8))
    assert out.shape == (1, 3, 48, 48)
    assert torch.allclose(out, torch.full_like(out, 2.0))  # (1 - 0.5) / 0.25
    assert pre.output_size == (48, 48)


def test_rejects_wrong_layout():
    pre = ImagePreprocessor.from_processor(CLIPImageProcessor())
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        pre(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize(
    "mode,make",
    [
        ("L", lambda: Image.fromarray(np.full((20, 30), 128, np.uint8), "L")),
        ("RGBA", lambda: Image.new("RGBA", (30, 20), (255, 0, 0, 0))),
        ("P", lambda: Image.new("RGB", (30, 20), (0, 255, 0)).convert("P")),
        ("I;16", lambda: Image.fromarray(np.full((20, 30), 65535, np.uint16))),
        ("CMYK", lambda: Image.new("CMYK", (30, 20), (0, 0, 0, 0))),
    ],
)
def test_load_image_rgb_any_mode(tmp_path, mode, make):
    img = make()
    path = tmp_path / f"img_{mode.replace(';', '')}.{'tiff' if mode in ('I;16', 'CMYK') else 'png'}"
    img.save(path)
    arr = load_image_rgb(path)
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8
    if mode == "RGBA":  # fully transparent -> white background
        assert (arr == 255).all()
    if mode == "I;16":
        assert (arr == 255).all()
    if mode == "P":
        assert (arr[..., 1] == 255).all() and (arr[..., 0] == 0).all()


def test_load_image_rgb_bad_files_name_the_path(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="empty.jpg.*0 bytes"):
        load_image_rgb(empty)
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image_rgb(text)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image_rgb(tmp_path / "missing.png")


def test_fit_to_square_matches_pil_bicubic():
    image = np.random.default_rng(1).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BICUBIC))
    got = fit_to_square(image, 32)
    assert got.shape == (32, 32, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
