"""Benchmark: fine-tuning speed per variant (eager / compiled towers, AdamW kind, loss) with FLOPs and MFU.

For each variant:
- model-only img/s: the same `ClipClassifier`, loss and optimizer on ready `pixel_values` already on the
  device (forward of both towers, backward, gradient clipping, AdamW step);
- end-to-end img/s: `cifake_lib.methods.finetune.train` itself (uint8 batch gathered by index,
  augmented, moved, preprocessed on the device, the loop's own checks); run for the variants the
  training code can express (its `compile` setting and its optimizer, `speed.make_adamw`);
- FLOPs per image: one training step counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls,
  convolutions, attention, both towers; the text tower's share is per step, divided by the batch);
- achieved TFLOP/s = img/s x FLOPs/image, and MFU against the device's dense bf16/fp16 peak
  (`speed.PEAK_TFLOPS`; n/a on the CPU unless --peak-tflops is given).

    python bench/bench_finetune.py                                   # ViT-B/32-shaped random CLIP, CPU
    python bench/bench_finetune.py --shape tiny --variants compile   # eager vs compiled, tiny model
    python bench/bench_finetune.py --model STANDIN --device cuda --batch-size 128 --steps 20 --variants all

Steady state only: the first `--warmup` steps (compilation included) are not timed; img/s is the
batch over the median step time. The default model is a randomly initialised CLIP written by
`models.write_tiny_clip`; `--model` takes any CLIP folder (the ViT-B/32 stand-in).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import prepare

TARGET_RATIO = 0.9
OPTIMIZERS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


# What a variant trains: a loss of both encoders, or CoOp's context ("prompt"); every one with the
# class-aware prompt set (80 distinct prompts), so that CE's per-step text cost is the whole set's
# and FLYP's the batch's distinct captions (about 15 at batch 16, 64 at batch 128).
METHODS = {
    "flyp": {"loss": "flyp"},
    "ce": {"loss": "ce"},
    "clip-label-aware": {"loss": "clip-label-aware"},
    "prompt": {"train": "prompt"},
    "lora": {"train": "lora"},  # FLYP's loss on LoRA adapters (methods.lora)
    "adapter": {"train": "adapter"},  # CLIP-Adapter, CE over the class prompts (methods.adapter)
    "image": {"train": "image"},  # the image tower only (an image-only encoder: with its linear head)
    "text": {"train": "text"},  # the text tower only
}
PROMPTS = "class_aware"


@dataclass(frozen=True)
class Variant:
    compile: str  # "off" | "on"
    optimizer: str  # "fused" | "foreach" | "for-loop"
    loss: str  # a METHODS key: finetune.LOSSES, or "prompt" (CoOp)

    @property
    def name(self) -> str:
        return f"{'compiled' if self.compile == 'on' else 'eager'}, {self.optimizer} AdamW, {self.loss}"


def default_optimizer(device: str) -> str:
    """The AdamW kind `speed.make_adamw` (the training code's optimizer) uses on `device`."""
    return "fused" if device.startswith("cuda") else "foreach"


def variants(spec: str, device: str) -> list[Variant]:
    """eager: make_adamw's optimizer, FLYP; compile: that, eager and compiled; methods: eager FLYP, CE and
    CoOp; all: every combination."""
    from cifake_lib.methods.finetune import LOSSES

    best = default_optimizer(device)
    if spec == "compile":
        return [Variant("off", best, "flyp"), Variant("on", best, "flyp")]
    if spec == "eager":
        return [Variant("off", best, "flyp")]
    if spec == "methods":
        return [Variant("off", best, m) for m in ("flyp", "ce", "prompt")]
    if spec == "all":
        opts = ("fused", "foreach") if device.startswith("cuda") else ("foreach", "for-loop")
        # CoOp's towers stay eager (finetune.tower_compile_mode): no compiled prompt variants
        return [Variant(c, o, loss) for c, o, loss in itertools.product(("off", "on"), opts, (*LOSSES, "prompt"))
                if not (c == "on" and loss == "prompt")]
    raise SystemExit(f"--variants: expected eager, compile, methods or all, got {spec!r}")


def _synthetic_data(n: int, seed: int = 0):
    import numpy as np

    from cifake_lib.data.load import CifakeData, Split

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    split = Split(images, labels, rng.integers(0, 10, n), np.array([f"train/{i}.jpg" for i in range(n)]))
    return CifakeData(train=split, test=split.take(slice(0, 2)), val=None, source="synthetic", cache_path=None)


def _setup(model_dir: str, v: Variant, batch_size: int, device: str, prompts: str = PROMPTS):
    """A fresh classifier (compiled per the variant), its optimizer and one ready batch on the device."""
    import numpy as np
    import torch

    from cifake_lib.clip.coop import PromptContext
    from cifake_lib.clip.models import load_backbone
    from cifake_lib.data.preprocess import ImagePreprocessor
    from cifake_lib.methods import finetune as ft
    from cifake_lib.methods import speed

    cfg = ft.FinetuneConfig(model=model_dir, prompts=prompts, compile=v.compile, **METHODS[v.loss])
    torch.manual_seed(0)
    clip, processor = load_backbone(model_dir, device="cpu", dtype=torch.float32)  # CLIP, SigLIP or image-only
    tokenizer = getattr(processor, "tokenizer", None)
    if cfg.train == "lora":  # as finetune.build: adapters injected before the classifier is built
        from cifake_lib.methods.lora import attach_lora

        attach_lora(clip, cfg)
    context = PromptContext.create(clip, tokenizer, cfg.n_ctx) if cfg.train == "prompt" else None
    prompts = ft.resolve_prompts(cfg.prompts)
    model = ft.ClipClassifier(clip, tokenizer, prompts, context)
    if cfg.train == "adapter":
        from cifake_lib.methods.adapter import attach_adapter

        attach_adapter(model, cfg)
    ft.set_trainable(model, cfg)
    model.to(device).train()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(batch_size, 32, 32, 3), dtype=np.uint8)).to(device)
    labels, classes = np.arange(batch_size) % 2, rng.integers(0, 10, batch_size)
    captions = None  # FLYP: each image's caption drawn as the loop draws them
    if cfg.loss == "flyp" and model.linear is None:
        captions = torch.from_numpy(ft.draw_captions(ft.caption_choices(prompts), labels, classes, 0, 0)).to(device)
    batch = (ImagePreprocessor.from_processor(processor)(x),  # ready tensors, made once
             torch.from_numpy(labels).to(device), torch.from_numpy(classes).to(device), captions)
    opt = torch.optim.AdamW(ft.param_groups(model, cfg.weight_decay), lr=1e-5, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.eps, **OPTIMIZERS[v.optimizer])
    return cfg, model, opt, batch, speed


def _loss_fn(cfg):
    from cifake_lib.methods import finetune as ft

    def loss_fn(model, batch):
        pixel_values, labels, classes, captions = batch
        return ft.compute_loss(cfg, model(pixel_values, classes, captions), labels, classes)

    return loss_fn


def model_only(model_dir: str, v: Variant, batch_size: int, steps: int, warmup: int, device: str, mp: str) -> dict:
    """Img/s of forward + backward + clip + AdamW step on ready pixel_values; FLOPs/image; attention calls."""
    import torch

    from cifake_lib.methods import finetune as ft

    cfg, model, opt, batch, speed = _setup(model_dir, v, batch_size, device)
    loss_fn = _loss_fn(cfg)
    sdpa_calls = speed.check_sdpa(model, lambda: model(batch[0], batch[2]))
    flops = speed.flops_per_image(model, batch, loss_fn)  # eager: the compiled model does the same arithmetic
    speed.compile_towers(model, ft.tower_compile_mode(cfg))  # the training code's rule: CoOp stays eager
    trainable = [p for p in model.parameters() if p.requires_grad]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
    dev_type = torch.device(device).type
    scaler = torch.amp.GradScaler(dev_type) if mp == "fp16" else None
    times = []
    with speed.peak_gpu_memory() as mem:
        for i in range(warmup + steps):
            if dev_type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model, batch)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            if dev_type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return {"images_per_second": batch_size / statistics.median(times), "flops_per_image": flops,
            "sdpa_calls_per_forward": sdpa_calls, "peak_gpu_mb": mem.peak_mb}


def end_to_end(model_dir: str, v: Variant, batch_size: int, steps: int, warmup: int, device: str, out: str,
               mp: str) -> float | None:
    """Img/s of `finetune.train` in steady state (median of the per-step log records after the warm-up).

    None when the training code cannot run this variant: it uses `speed.make_adamw`'s optimizer only.
    """
    import torch

    from cifake_lib.methods import finetune as ft

    if v.optimizer != default_optimizer(device):
        return None
    data = _synthetic_data(batch_size * (warmup + steps) + batch_size)  # one epoch covers the run
    cfg = ft.FinetuneConfig(model=model_dir, out=out, prompts=PROMPTS, **METHODS[v.loss], batch_size=batch_size,
                            max_steps=warmup + steps, lr=1e-5, log_every=1, save_every=10**9, patience=None,
                            mixed_precision=mp, cpu=torch.device(device).type == "cpu", progress=False,
                            compile=v.compile)
    outcome = ft.train(data, cfg)
    rates = [r["images_per_second"] for r in outcome.history if r["kind"] == "train"][warmup:]
    return statistics.median(rates)


def run_variant(model_dir: str, v: Variant, a, mp: str, peak: float | None, tmp: str) -> dict:
    from cifake_lib.methods.speed import mfu

    ref = model_only(model_dir, v, a.batch_size, a.steps, a.warmup, a.device, mp)
    e2e = None if a.no_end_to_end else end_to_end(model_dir, v, a.batch_size, a.steps, a.warmup, a.device,
                                                    tempfile.mkdtemp(dir=tmp), mp)
    fpi, ips = ref["flops_per_image"], ref["images_per_second"]
    return {
        "variant": v.name, "compile": v.compile, "optimizer": v.optimizer, "loss": v.loss,
        "model_only_images_per_second": round(ips, 2),
        "end_to_end_images_per_second": None if e2e is None else round(e2e, 2),
        "ratio": None if e2e is None else round(e2e / ips, 3),
        "gflops_per_image": round(fpi / 1e9, 4),
        "model_only_tflops": round(ips * fpi / 1e12, 4),
        "end_to_end_tflops": None if e2e is None else round(e2e * fpi / 1e12, 4),
        "model_only_mfu": None if peak is None else round(mfu(ips, fpi, peak), 4),
        "end_to_end_mfu": None if peak is None or e2e is None else round(mfu(e2e, fpi, peak), 4),
        "sdpa_calls_per_forward": ref["sdpa_calls_per_forward"], "peak_gpu_mb": ref["peak_gpu_mb"],
    }


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def print_table(r: dict) -> None:
    print(f"fine-tuning speed: CLIP {r['model']}, {r['device']} ({r['mixed_precision']}), batch {r['batch_size']}, "
          f"median of {r['steps']} steps after {r['warmup']} ({r['threads']} threads); peak "
          f"{_fmt(r['peak_tflops'], 'g')} TFLOP/s ({r['peak_source']})")
    print(f"{'variant':<40}{'model img/s':>12}{'e2e img/s':>10}{'e2e/model':>10}{'GFLOP/img':>10}"
          f"{'TFLOP/s':>9}{'MFU':>8}{'e2e MFU':>8}")
    for v in r["variants"]:
        print(f"{v['variant']:<40}{v['model_only_images_per_second']:>12.2f}"
              f"{_fmt(v['end_to_end_images_per_second'], '.2f'):>10}{_fmt(v['ratio'], '.3f'):>10}"
              f"{v['gflops_per_image']:>10.3f}{v['model_only_tflops']:>9.4g}"
              f"{_fmt(v['model_only_mfu'], '.1%'):>8}{_fmt(v['end_to_end_mfu'], '.1%'):>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("vit-b-32", "tiny"), default="vit-b-32")
    ap.add_argument("--model", help="a CLIP folder to use instead of --shape (e.g. the ViT-B/32 stand-in)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; compilation is in them)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                    help="auto: bf16/fp16 on a GPU as finetune chooses, none on the CPU (both sides alike)")
    ap.add_argument("--variants", default="eager",
                    help="eager (default), compile (eager vs compiled), methods (flyp, ce, prompt), all")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: the GPU table)")
    ap.add_argument("--no-end-to-end", action="store_true", help="model-only figures only")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    a = ap.parse_args(argv)
    prepare()  # HF_HUB_OFFLINE before transformers is imported

    import torch

    from cifake_lib.clip.tiny import write_tiny_clip
    from cifake_lib.methods.finetune import resolve_mixed_precision
    from cifake_lib.methods.speed import device_peak_tflops

    mp = resolve_mixed_precision(a.mixed_precision, torch.device(a.device))
    peak = a.peak_tflops or device_peak_tflops(a.device, mp)
    name = torch.cuda.get_device_name(torch.device(a.device)) if a.device.startswith("cuda") else "cpu"
    source = "--peak-tflops" if a.peak_tflops else ("speed.PEAK_TFLOPS" if peak else f"none known for {name}, {mp}")
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        model_dir = a.model or str(write_tiny_clip(Path(tmp) / "model", shape=a.shape))
        rows = [run_variant(model_dir, v, a, mp, peak, tmp) for v in variants(a.variants, a.device)]
    result = {"model": a.model or a.shape, "device": a.device, "device_name": name, "mixed_precision": mp,
              "batch_size": a.batch_size, "steps": a.steps, "warmup": a.warmup, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "peak_tflops": peak, "peak_source": source, "variants": rows}
    first = rows[0]  # the eager default: bench/run.py's table reads its own fields
    result.update({"target_ratio": TARGET_RATIO,
                   "meets_target": None if first["ratio"] is None else first["ratio"] >= TARGET_RATIO})
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
