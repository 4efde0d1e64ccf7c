"""Benchmark: fine-tuning throughput end to end vs the model's own forward + backward + step.

End to end is `cifake_lib.methods.finetune.train` itself: a uint8 batch gathered from the array by index,
augmented on uint8 (random flips), moved to the device, preprocessed there (resize, crop,
normalise), then the forward (text and image towers), loss, backward, gradient clipping and the
AdamW step, with the loop's own checks (NaN, logit-scale clamp, logging). One row per method:
flyp (the text tower encodes the batch's distinct captions: with the class-aware set about 15 at
batch 16 and 64 at batch 128), ce (it encodes every prompt of the set, 80 texts, at every step) and
prompt (CoOp: two label prompts through the frozen text tower, gradients to the context only). The reference runs the
same `ClipClassifier`, loss and optimizer on ready `pixel_values` already on the device. The ratio
(target >= 0.9) says how much the data path and the loop cost on top of the model.

    python bench/bench_finetune.py                      # ViT-B/32-shaped random CLIP, CPU, batch 16
    python bench/bench_finetune.py --device cuda --batch-size 128 --steps 20
    python bench/bench_finetune.py --shape tiny --json  # the tiny test model

Steady state only: the first `--warmup` steps of each side are not timed. The model is a
randomly initialised CLIP written by `models.write_tiny_clip` (ViT-B/32's sizes by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 0.9
# The rows: FLYP (captions through the text tower), its CE ablation (the whole prompt set through
# the text tower every step) and CoOp (context vectors only, CLIP frozen), all with the class-aware
# set (80 distinct prompts), so that CE's per-step text cost is the set's, FLYP's the batch's captions.
METHODS = {
    "flyp": {"loss": "flyp", "prompts": "class_aware"},
    "ce": {"loss": "ce", "prompts": "class_aware"},
    "prompt": {"train": "prompt", "prompts": "class_aware"},
}


def _synthetic_data(n: int, seed: int = 0):
    import numpy as np

    from cifake_lib.data.load import CifakeData, Split

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    split = Split(images, labels, rng.integers(0, 10, n), np.array([f"train/{i}.jpg" for i in range(n)]))
    return CifakeData(train=split, test=split.take(slice(0, 2)), val=None, source="synthetic", cache_path=None)


def reference(model_dir: str, batch_size: int, steps: int, warmup: int, device: str, mp: str = "no",
              method: str = "flyp") -> float:
    """Images/s of forward + loss + backward + clip + AdamW step on ready pixel_values (the loop's model,
    loss and optimizer; FLYP's captions drawn as the loop draws them)."""
    import numpy as np
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from cifake_lib.clip.coop import PromptContext
    from cifake_lib.data.preprocess import ImagePreprocessor
    from cifake_lib.methods import finetune as ft

    cfg = ft.FinetuneConfig(model=model_dir, mixed_precision="no", **METHODS[method])
    torch.manual_seed(0)
    processor = CLIPProcessor.from_pretrained(model_dir)
    clip = CLIPModel.from_pretrained(model_dir, dtype=torch.float32)
    context = PromptContext.create(clip, processor.tokenizer, cfg.n_ctx) if cfg.train == "prompt" else None
    prompts = ft.resolve_prompts(cfg.prompts)
    model = ft.ClipClassifier(clip, processor.tokenizer, prompts, context)
    ft.set_trainable(model, cfg)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(ft.param_groups(model, cfg.weight_decay), lr=1e-5, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.eps)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(batch_size, 32, 32, 3), dtype=np.uint8)).to(device)
    pixel_values = ImagePreprocessor.from_processor(processor)(x)  # ready tensors, made once
    labels = torch.arange(batch_size, device=device) % 2
    classes = torch.from_numpy(rng.integers(0, 10, batch_size)).to(device)
    captions = None
    if cfg.loss == "flyp":
        drawn = ft.draw_captions(ft.caption_choices(prompts), labels.cpu().numpy(), classes.cpu().numpy(), 0, 0)
        captions = torch.from_numpy(drawn).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
    dev_type = torch.device(device).type
    scaler = torch.amp.GradScaler(dev_type) if mp == "fp16" else None
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
            loss = ft.compute_loss(cfg, model(pixel_values, classes, captions), labels, classes)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch_size * len(times) / sum(times)


def end_to_end(model_dir: str, batch_size: int, steps: int, warmup: int, device: str, out: str,
               mp: str = "no", method: str = "flyp") -> float:
    """Images/s of `finetune.train` in steady state (per-step log records after the warm-up)."""
    from cifake_lib.methods import finetune as ft

    data = _synthetic_data(batch_size * (warmup + steps) + batch_size)  # one epoch covers the run
    cfg = ft.FinetuneConfig(model=model_dir, out=out, **METHODS[method], batch_size=batch_size,
                            max_steps=warmup + steps, lr=1e-5, log_every=1, save_every=10**9, patience=None,
                            mixed_precision=mp, cpu=device == "cpu", progress=False)
    outcome = ft.train(data, cfg)
    records = [r for r in outcome.history if r["kind"] == "train"][warmup:]
    seconds = sum(batch_size / r["images_per_second"] for r in records)
    return batch_size * len(records) / seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("vit-b-32", "tiny"), default="vit-b-32")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                    help="auto: bf16/fp16 on a GPU as finetune chooses, none on the CPU (both sides alike)")
    ap.add_argument("--methods", default="flyp,ce,prompt",
                    help="comma-separated rows: flyp (FLYP loss), ce (its CE ablation), prompt (CoOp); default all")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from cifake_lib.clip.models import write_tiny_clip
    from cifake_lib.methods.finetune import resolve_mixed_precision

    mp = resolve_mixed_precision(a.mixed_precision, torch.device(a.device))
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        model_dir = str(write_tiny_clip(Path(tmp) / "model", shape=a.shape))
        for method in methods:
            ref = reference(model_dir, a.batch_size, a.steps, a.warmup, a.device, mp, method)
            e2e = end_to_end(model_dir, a.batch_size, a.steps, a.warmup, a.device, str(Path(tmp) / method), mp,
                             method)
            rows.append({"method": method, "reference_images_per_second": round(ref, 2),
                         "end_to_end_images_per_second": round(e2e, 2), "ratio": round(e2e / ref, 3)})
    first = rows[0]
    result = {
        "shape": a.shape, "device": a.device, "mixed_precision": mp, "batch_size": a.batch_size, "steps": a.steps,
        "warmup": a.warmup, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        # the first method's figures at the top level (bench/run.py reads these)
        **{k: v for k, v in first.items() if k != "method"}, "method": first["method"],
        "target_ratio": TARGET_RATIO, "meets_target": first["ratio"] >= TARGET_RATIO, "rows": rows,
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"fine-tuning throughput: CLIP {a.shape}, {a.device} ({mp}), batch {a.batch_size}, "
              f"{a.steps} timed steps after {a.warmup} ({result['threads']} threads)")
        print(f"{'method':10}{'model step img/s':>18}{'end to end img/s':>18}{'ratio':>8}")
        for r in rows:
            print(f"{r['method']:10}{r['reference_images_per_second']:>18.2f}{r['end_to_end_images_per_second']:>18.2f}"
                  f"{r['ratio']:>8.3f}")
        print(f"(target end to end / model step >= {TARGET_RATIO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
