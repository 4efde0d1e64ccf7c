"""Speed helpers (cifake_lib.methods.speed) and the memory estimate (cifake_lib.methods.memory).

Oracles: the FLOP count against the tiny ViT's arithmetic worked out by hand, SDPA's count against
eager attention's, make_adamw's update against torch's for-loop AdamW, the compiled towers'
loss and gradients against the eager ones, saved-activation bytes against a hand count.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cifake_lib.methods import finetune as ft
from cifake_lib.methods import memory, speed


def _classifier(model_dir, attn: str = "sdpa") -> ft.ClipClassifier:
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(model_dir)
    clip = CLIPModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    return ft.ClipClassifier(clip, processor.tokenizer, ft.resolve_prompts("plain")).train()


def _loss(model, batch):
    """Cross-entropy of the (REAL, FAKE) logits (the first field of the classifier's output)."""
    return F.cross_entropy(model(batch[0])[0], batch[1])


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 2


def _vision_flops_per_image(v, projection_dim: int) -> int:
    """Forward + backward FLOPs of the tiny ViT per image, by hand (2 FLOPs per multiply-add).

    Per layer and token: q, k, v, out (4 h^2) and the MLP (2 h * 4h) MACs, attention 2 s h MACs.
    Backward costs twice the forward, except the patch convolution (no gradient for the pixels)
    and the logits' (2, D) class weights come from the text tower once per batch.
    """
    h, s = v.hidden_size, (v.image_size // v.patch_size) ** 2 + 1
    layers = v.num_hidden_layers * s * (4 * h * h + 2 * h * v.intermediate_size + 2 * s * h)
    patches = (s - 1) * 3 * v.patch_size ** 2 * h
    head = h * projection_dim + projection_dim * 2  # visual projection, then the (REAL, FAKE) logits
    return 2 * (3 * (layers + head) + 2 * patches)


def test_flop_count_matches_hand_count_and_scales_with_batch(tiny_model_dir):
    model = _classifier(tiny_model_dir)
    counts = {n: speed.train_step_flops(model, _batch(n), _loss)["total"] for n in (2, 4, 8)}
    assert 0 < counts[2] < counts[4] < counts[8]
    per_image = (counts[8] - counts[4]) / 4
    assert counts[4] - counts[2] == 2 * per_image  # linear in the batch: the text part is fixed
    expected = _vision_flops_per_image(model.clip.config.vision_config, model.clip.config.projection_dim)
    assert per_image == pytest.approx(expected, rel=1e-9)
    # The per-image figure includes the text tower's share of the step, which shrinks with the batch.
    assert speed.flops_per_image(model, _batch(4), _loss) == counts[4] / 4 > per_image
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradients behind


def test_sdpa_is_used_and_counted_like_eager_attention(tiny_model_dir):
    from cifake_lib.clip.models import load_clip

    model = _classifier(tiny_model_dir)
    x, _ = _batch(2)
    layers = model.clip.config.vision_config.num_hidden_layers + model.clip.config.text_config.num_hidden_layers
    assert speed.attention_implementation(model) == {"vision": "sdpa", "text": "sdpa"}
    assert speed.check_sdpa(model, lambda: model(x)) == layers  # training mode
    clip, _ = load_clip(tiny_model_dir, device="cpu")  # the inference path
    with torch.no_grad():
        assert speed.check_sdpa(clip, lambda: clip.get_image_features(pixel_values=x)) == \
            clip.config.vision_config.num_hidden_layers

    eager = _classifier(tiny_model_dir, attn="eager")
    assert speed.count_sdpa_calls(lambda: eager(x)) == 0
    with pytest.raises(RuntimeError, match="not SDPA"):
        speed.check_sdpa(eager, lambda: eager(x))
    # Same arithmetic whichever attention runs: the CPU SDPA kernel's FLOPs are counted right.
    assert speed.train_step_flops(model, _batch(4), _loss)["total"] == \
        speed.train_step_flops(eager, _batch(4), _loss)["total"]


def test_make_adamw_is_foreach_on_cpu_and_updates_like_the_for_loop(tiny_model_dir):
    updated = []
    for kind in ("make_adamw", "for-loop"):
        torch.manual_seed(0)
        model = _classifier(tiny_model_dir)
        groups = ft.param_groups(model, 0.1)
        if kind == "make_adamw":
            opt = speed.make_adamw(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, device="cpu")
            assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
            assert speed.adamw_kind(opt) == "foreach"
        else:
            opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, foreach=False)
            assert speed.adamw_kind(opt) == "for-loop"
        for step in range(2):
            _loss(model, _batch(4, seed=step)).backward()
            opt.step()
            opt.zero_grad()
        updated.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(updated[0], updated[1], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fused AdamW is CUDA-only here)")
def test_make_adamw_is_fused_on_cuda():
    p = nn.Parameter(torch.zeros(3, device="cuda"))
    opt = speed.make_adamw([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, device="cuda")
    assert speed.adamw_kind(opt) == "fused"


def test_peak_table_lookup_and_mfu():
    assert speed.peak_tflops("Tesla T4", "fp16") == 65.0
    assert speed.peak_tflops("Tesla T4", "bf16") is None  # no bf16 tensor cores
    assert speed.peak_tflops("NVIDIA L4", "bf16") == 121.0
    assert speed.peak_tflops("NVIDIA L40S", "bf16") is None  # not an L4
    assert speed.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert speed.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.5
    assert speed.peak_tflops("NVIDIA H100 PCIe", "fp16") == 756.5
    assert speed.peak_tflops("NVIDIA H200", "bf16") == 989.5
    assert speed.peak_tflops("NVIDIA H200 NVL", "bf16") == 835.5
    assert speed.peak_tflops("NVIDIA H200", "no") is None
    assert speed.device_peak_tflops("cpu", "bf16") is None
    # The figure: 2,252 img/s x 26 GFLOP on an H200 is about 6% of its bf16 peak.
    assert speed.mfu(2252, 26e9, 989.5) == pytest.approx(0.0592, abs=1e-4)
    assert speed.mfu(2252, 26e9, None) is None


def test_resolve_compile(monkeypatch):
    assert speed.resolve_compile("off", "cpu")[0] is False
    on, why = speed.resolve_compile("auto", "cpu")
    assert on is False and "auto" in why
    with pytest.raises(ValueError, match="compile must be one of"):
        speed.resolve_compile("yes", "cpu")
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    on, why = speed.resolve_compile("on", "cpu")
    assert on is False and "C++ compiler" in why


def test_compile_towers_noop_logs_why(tiny_model_dir, monkeypatch):
    model = _classifier(tiny_model_dir)
    lines = []
    assert speed.compile_towers(model, "off", log=lines.append) is model
    assert speed.compile_towers(model, "auto", log=lines.append) is model  # auto: off on the CPU, quietly
    assert lines == [] and not any(speed.is_compiled(t) for t in speed.towers(model))
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    speed.compile_towers(model, "on", log=lines.append)  # asked for, cannot: says why
    assert len(lines) == 1 and "C++ compiler" in lines[0]
    assert not any(speed.is_compiled(t) for t in speed.towers(model))
    with pytest.raises(TypeError, match="not a CLIP model"):
        speed.compile_towers(nn.Linear(2, 2), "on")


@pytest.mark.skipif(speed.compile_support("cpu") is not None, reason=f"{speed.compile_support('cpu')}")
def test_compiled_towers_give_the_eager_loss_and_gradients(tiny_model_dir):
    results = []
    for mode in ("off", "on"):
        model = _classifier(tiny_model_dir)
        speed.compile_towers(model, mode, log=lambda _: None)
        loss = _loss(model, _batch(8))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, model))
    (loss0, grads0, _), (loss1, grads1, compiled) = results
    assert all(speed.is_compiled(t) for t in speed.towers(compiled))
    assert list(compiled.clip.state_dict()) == list(results[0][2].clip.state_dict())  # same checkpoint keys
    torch.testing.assert_close(loss1, loss0, rtol=1e-4, atol=1e-5)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=1e-3, atol=1e-5, msg=name)


def test_saved_activation_bytes_by_hand():
    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))

    def loss_fn(m, batch):
        return m(batch[0]).sum()

    def measure(b: int) -> int:
        return memory.saved_activation_bytes(mlp, (torch.randn(b, 10),), loss_fn)

    # Saved for backward: the input (b x 10, for the first weight's gradient) and ReLU's output
    # (b x 20, shared by ReLU and the second layer); the weights are not activations.
    assert measure(3) == 3 * (10 + 20) * 4
    assert memory.activation_fit(measure, (2, 6)) == (120.0, 0.0)
    # Under bf16 autocast the same tensors in 2 bytes, plus the second weight's bf16 copy (saved
    # for the gradient of its input; the first layer's input needs none, so neither does its weight).
    half = memory.saved_activation_bytes(mlp, (torch.randn(4, 10),), loss_fn, dtype=torch.bfloat16)
    assert half == 4 * (10 + 20) * 2 + 20 * 5 * 2


def test_training_memory_counts_adamw_states():
    est = memory.training_memory("finetune", n_params=100 * 2**20, n_trainable=50 * 2**20, per_image=2**20,
                                 fixed=0, batch_size=1024, precision="fp16")
    assert est.weights_gib == pytest.approx(0.390625) and est.grads_gib == pytest.approx(0.1953125)
    assert est.optimizer_gib == pytest.approx(2 * est.grads_gib)
    assert est.activations_gib == pytest.approx(memory.TRANSIENT_MARGIN)
    assert est.fits() and not est.fits(budget_gib=1.0)
    assert "estimate" in est.to_dict()["how"]


def test_peak_gpu_memory_is_none_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    with speed.peak_gpu_memory() as mem:
        torch.ones(10)
    assert mem.peak_bytes is None and mem.peak_mb is None


def _synthetic(n: int = 16):
    """CIFAKE-shaped uint8 data, FAKE brighter; no validation split (no evaluation pass to compile)."""
    import numpy as np

    from cifake_lib.data.load import CifakeData, Split

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = rng.integers(0, 150, size=(n, 32, 32, 3)).astype(np.uint8)
    images[labels == 1] += 100
    split = Split(images, labels, rng.integers(0, 10, n), np.array([f"train/{i}.jpg" for i in range(n)]))
    return CifakeData(train=split, test=split.take(slice(0, 2)), val=None, source="synthetic", cache_path=None)


@pytest.mark.skipif(speed.compile_support("cpu") is not None, reason=f"{speed.compile_support('cpu')}")
def test_finetune_compile_on_trains_like_eager(tiny_model_dir, tmp_path, capsys):
    """`--compile on` on the CPU: two optimizer steps of finetune.train give the eager run's losses."""
    from cifake_lib.methods.finetune import FinetuneConfig, train

    losses = {}
    for mode in ("off", "on"):
        cfg = FinetuneConfig(model=str(tiny_model_dir), out=str(tmp_path / mode), lr=5e-4, batch_size=8,
                             max_steps=2, prompts="plain", progress=False, save_every=1000, patience=None,
                             log_every=1, cpu=True, compile=mode)
        outcome = train(_synthetic(), cfg)
        losses[mode] = [r["loss"] for r in outcome.history if r["kind"] == "train"]
        assert (tmp_path / mode / "model" / "config.json").is_file()
    assert "speed: compile on" in capsys.readouterr().err
    assert len(losses["on"]) == 2
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-3)
